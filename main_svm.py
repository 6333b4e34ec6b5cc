"""VOC07 linear SVM of a frozen trunk (the Revisiting tables' "VOC SVM", CLSA's VOC07 transfer).

    python main_svm.py --ckpt CKPT --data_folder VOCdevkit/VOC2007

Features of PASCAL VOC 2007 trainval and test (Resize 256 -> CenterCrop 224, ImageNet normalisation,
global average pool, L2-normalised); one linear SVM per class (scikit-learn's LinearSVC: squared
hinge, --cost 0.5, positive class weight 2) trained on trainval, scored on test by the all-point
average precision; the mean over the 20 classes is reported. An image whose objects of a class are
all 'difficult' is a negative for that class. Features are cached in --features_dir.
"""
import json
import os

import numpy as np
import torchvision.transforms as T

import checkpoints
import datasets
import distributed
import options
import util
from evaluation import cached_features, checkpoint_file_key, extract_features, folder_fingerprint



def parse_option():
    parser = options.parser('VOC07 linear SVM of a frozen trunk')
    options.add_extraction_options(parser, 'svm_<ckpt name>/', num_workers=8)
    g = parser.add_argument_group('data and SVM')
    g.add_argument('--data_folder', required=True, help='VOCdevkit/VOC2007 (or the folder holding VOCdevkit)')
    g.add_argument('--size', type=int, default=224, help='centre crop; images are first resized to size * 8/7')
    g.add_argument('--cost', type=float, default=0.5, help='SVM cost C')
    g.add_argument('--positive_weight', type=float, default=2.0, help='class weight of the positives')
    args, given = options.parse(parser)
    if min(args.size, args.cost, args.positive_weight) <= 0:
        raise util.UserError('--size, --cost and --positive_weight must be positive')
    options.finish_extraction_options(args, 'svm_{name}')
    return args


def set_loader(args):
    transform = T.Compose([T.Resize(round(args.size * 256 / 224)), T.CenterCrop(args.size), T.ToTensor(),
                           T.Normalize(*datasets.MEAN_STD['imagenet'])])
    return {s: datasets.eval_loader(datasets.VOC2007(args.data_folder, s, transform), args) for s in ('trainval', 'test')}


def features(args):
    """{split: (L2-normalised features, labels [N, 20])} as numpy, cached per checkpoint file and data."""
    key = {**checkpoint_file_key(args.ckpt), 'data': os.path.abspath(args.data_folder), 'size': args.size,
           'files': folder_fingerprint(args.data_folder, exclude=args.features_dir)}

    def extract():
        trunk = checkpoints.pretrained_trunk(args.pretrained, f'--ckpt {args.ckpt}').to(args.device)
        out = {}
        for split, loader in set_loader(args).items():
            f, y = extract_features(trunk, loader, args, normalize=True)
            out[split] = (f.cpu().numpy(), y.cpu().numpy())
        return out
    return cached_features(os.path.join(args.features_dir, f'voc2007_{args.size}.pth'), key, extract)


def svm_ap(train, test, cost=0.5, positive_weight=2.0):
    """Per-class AP (%) of one LinearSVC per class; a class absent from trainval or test is NaN."""
    from sklearn.metrics import average_precision_score
    from sklearn.svm import LinearSVC
    aps = []
    for c in range(train[1].shape[1]):
        y, y_test = train[1][:, c], test[1][:, c]
        if y.min() == y.max() or y_test.max() == 0:
            aps.append(float('nan'))
            continue
        svm = LinearSVC(C=cost, loss='squared_hinge', class_weight={1: positive_weight, 0: 1}, max_iter=10000)
        svm.fit(train[0], y)
        aps.append(100 * float(average_precision_score(y_test, svm.decision_function(test[0]))))
    return aps


def main():
    args = parse_option()
    args.pretrained = checkpoints.load_checkpoint(args.ckpt)  # here, not in parse_option: the scripts' dry runs parse
    distributed.init_distributed(args)
    f = features(args)
    if not util.is_main():  # features are gathered on every rank; rank 0 fits and reports
        return
    aps = svm_ap(f['trainval'], f['test'], args.cost, args.positive_weight)
    for name, ap in zip(datasets.VOC_CLASSES, aps):
        print(f'{name:>12} {ap:6.2f}')
    scored = [a for a in aps if a == a]
    if not scored:
        raise util.UserError('no class has both positives and negatives in trainval and positives in test')
    mean = float(np.mean(scored))
    print(f'VOC07 SVM mAP {mean:.2f} % over {len(scored)} classes ({len(f["trainval"][1])} trainval, '
          f'{len(f["test"][1])} test images)')
    path = os.path.join(args.features_dir, 'svm.json')
    with open(path, 'w') as fh:
        json.dump({'mAP': mean, 'ap': dict(zip(datasets.VOC_CLASSES, aps)), 'cost': args.cost}, fh, indent=1)
    print(f'results written to {path}')


if __name__ == '__main__':
    util.run(main)
