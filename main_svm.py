"""VOC07 linear SVM of a frozen trunk (the Revisiting tables' "VOC SVM", CLSA's VOC07 transfer).

    python main_svm.py --ckpt CKPT --data_folder VOCdevkit/VOC2007

Features of PASCAL VOC 2007 trainval and test (Resize 256 -> CenterCrop 224, ImageNet normalisation,
global average pool, L2-normalised); one linear SVM per class (scikit-learn's LinearSVC: squared
hinge, --cost 0.5, positive class weight 2) trained on trainval, scored on test by the all-point
average precision; the mean over the 20 classes is reported. An image whose objects of a class are
all 'difficult' is a negative for that class. Features are cached in --features_dir.
"""
import argparse
import json
import os

import numpy as np
import torch
import torchvision.transforms as T

import checkpoints
import datasets
import distributed
import util
from evaluation import extract_features

IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


def parse_option():
    parser = argparse.ArgumentParser(description='VOC07 linear SVM of a frozen trunk')
    parser.add_argument('--ckpt', required=True, help='checkpoint of this project or a published one')
    parser.add_argument('--data_folder', required=True, help='VOCdevkit/VOC2007 (or the folder holding VOCdevkit)')
    parser.add_argument('--size', type=int, default=224, help='centre crop; images are first resized to size * 8/7')
    parser.add_argument('--cost', type=float, default=0.5, help='SVM cost C')
    parser.add_argument('--positive_weight', type=float, default=2.0, help='class weight of the positives')
    parser.add_argument('--batch_size', type=int, default=256)
    parser.add_argument('--num_workers', type=int, default=8)
    parser.add_argument('--amp', choices=['none', 'bf16', 'fp16'], default='none')
    parser.add_argument('--features_dir', default=None, help='default: svm_<ckpt name>/ next to the checkpoint')
    args = parser.parse_args()
    if min(args.size, args.batch_size, args.cost, args.positive_weight) <= 0 or args.num_workers < 0:
        raise util.UserError('--size, --batch_size, --cost and --positive_weight must be positive')
    if args.features_dir is None:
        name = os.path.splitext(os.path.basename(args.ckpt))[0]
        args.features_dir = os.path.join(os.path.dirname(os.path.abspath(args.ckpt)), f'svm_{name}')
    args.syncBN, args.batch_size_val = False, args.batch_size
    return args


def set_loader(args):
    transform = T.Compose([T.Resize(round(args.size * 256 / 224)), T.CenterCrop(args.size), T.ToTensor(),
                           T.Normalize(*IMAGENET)])
    return {s: datasets.eval_loader(datasets.VOC2007(args.data_folder, s, transform), args) for s in ('trainval', 'test')}


def features(args):
    """{split: (L2-normalised features, labels [N, 20])} as numpy, cached per checkpoint file and data."""
    stat = os.stat(args.ckpt)
    key = {'ckpt': os.path.abspath(args.ckpt), 'bytes': stat.st_size, 'mtime_ns': stat.st_mtime_ns,
           'data': os.path.abspath(args.data_folder), 'size': args.size}
    path = os.path.join(args.features_dir, f'voc2007_{args.size}.pth')
    if os.path.isfile(path):
        try:
            cached = torch.load(path, weights_only=False)
            if cached['key'] == key:
                print(f'features read from {path}')
                return cached['features']
        except Exception:
            print(f'note: the feature cache {path} is unreadable: extracting again')
    loaders = set_loader(args)
    trunk = checkpoints.pretrained_trunk(args.pretrained, f'--ckpt {args.ckpt}').to(args.device)
    out = {}
    for split, loader in loaders.items():
        f, y = extract_features(trunk, loader, args, normalize=True)
        out[split] = (f.cpu().numpy(), y.cpu().numpy())
    if not util.is_main():
        return out
    os.makedirs(args.features_dir, exist_ok=True)
    tmp = f'{path}.tmp{os.getpid()}'
    torch.save({'key': key, 'features': out}, tmp)
    os.replace(tmp, path)
    return out


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
