"""Transfer by logistic regression on frozen features (SCE's transfer table, the ssl-transfer protocol).

    python main_transfer.py --ckpt CKPT --data_root DATA --datasets food101 cifar10 cifar100 sun397 cars \
        aircraft voc2007 dtd pets caltech101 flowers
    python main_transfer.py --ckpt CKPT --datasets folder --data_folder DIR   # DIR/train, DIR/val (optional), DIR/test

Each dataset's images go through bicubic Resize --size, CenterCrop --size, ImageNet normalisation
and the frozen trunk (global average pool). A multinomial L-BFGS logistic regression (scikit-learn)
is fitted on train for each of 45 values of 1/C in logspace(-6, 5); the value best on the
validation split (the dataset's own for aircraft, dtd, flowers, voc2007 and a folder with val/,
else a seeded 20 % of train) is refitted on train + val and scored on test: top-1, mean per-class
accuracy (aircraft, caltech101, flowers, pets) or 11-point mAP (voc2007, one binary regression per
class). Features are cached per checkpoint file and dataset in --features_dir.
"""
import json
import os

import numpy as np
import torch
import torchvision.datasets as tvd
import torchvision.transforms as T

import checkpoints
import datasets
import distributed
import options
import util
from evaluation import cached_features, checkpoint_file_key, extract_features, folder_fingerprint

MEAN_PER_CLASS = {'aircraft', 'caltech101', 'flowers', 'pets'}
# The SCE README's transfer row (ResNet-50, multi-crop checkpoint), and its columns' order.
COLUMNS = ['food101', 'cifar10', 'cifar100', 'sun397', 'cars', 'aircraft', 'voc2007', 'dtd', 'pets', 'caltech101',
           'flowers']
TITLES = dict(zip(COLUMNS, ['Food101', 'CIFAR10', 'CIFAR100', 'SUN397', 'Cars', 'Aircraft', 'VOC2007', 'DTD', 'Pets',
                            'Caltech101', 'Flowers']))
SCE_PUBLISHED = dict(zip(COLUMNS, [77.7, 94.8, 80.4, 65.3, 65.7, 59.6, 84.0, 77.1, 90.9, 92.7, 96.1]))

def parse_option():
    parser = options.parser('logistic-regression transfer of a frozen trunk')
    options.add_extraction_options(parser, 'transfer_<ckpt name>/', num_workers=8)
    g = parser.add_argument_group('data and regression')
    g.add_argument('--datasets', nargs='+', required=True, choices=COLUMNS + ['folder'], help='datasets to transfer to')
    g.add_argument('--data_root', default='./datasets', help='folder holding the torchvision datasets')
    g.add_argument('--data_folder', default=None, help='--datasets folder: DIR with train/ (val/) test/')
    g.add_argument('--size', type=int, default=224, help='resize (bicubic) and centre crop')
    g.add_argument('--seed', type=int, default=0, help='seed of the 20 %% validation split and of the SUN397 and '
                                                       'Caltech-101 splits')
    args, given = options.parse(parser)
    if args.size <= 0:
        raise util.UserError(f'--size must be positive, got {args.size}')
    if 'folder' in args.datasets and not args.data_folder:
        raise util.UserError('--datasets folder needs --data_folder DIR holding train/ and test/')
    if 'folder' not in args.datasets:
        options.refuse(given, ('data_folder',), 'it is the folder of --datasets folder')
    if args.datasets == ['folder']:
        options.refuse(given, ('data_root',), 'it holds the torchvision datasets; --datasets folder reads --data_folder')
    options.finish_extraction_options(args, 'transfer_{name}')
    return args


# ----------------------------------------------------------------------------- data

def rgb(transform):
    return T.Compose([T.Lambda(lambda img: img.convert('RGB')), transform])


def splits(name, args, transform):
    """{'train', 'val' (None: carve 20 % of train), 'test'} datasets of one name."""
    root = None if name == 'folder' else args.data_root
    tv = lambda cls, **kw: cls(root, transform=rgb(transform), download=False, **kw)
    try:
        if name == 'folder':
            f = lambda s: os.path.join(args.data_folder, s)
            if not all(os.path.isdir(f(s)) for s in ('train', 'test')):
                raise util.UserError(f'--data_folder {args.data_folder} must hold train/ and test/ (and optionally val/) '
                                     f'class folders')
            return {s: tvd.ImageFolder(f(s), rgb(transform)) if os.path.isdir(f(s)) else None
                    for s in ('train', 'val', 'test')}
        if name == 'voc2007':
            return {s: datasets.VOC2007(root, s, transform) for s in ('train', 'val', 'test')}
        if name in ('cifar10', 'cifar100'):
            cls = tvd.CIFAR10 if name == 'cifar10' else tvd.CIFAR100
            return {'train': tv(cls, train=True), 'val': None, 'test': tv(cls, train=False)}
        if name in ('aircraft', 'dtd', 'flowers'):
            cls = {'aircraft': tvd.FGVCAircraft, 'dtd': tvd.DTD, 'flowers': tvd.Flowers102}[name]
            return {s: tv(cls, split=s) for s in ('train', 'val', 'test')}
        if name in ('food101', 'cars', 'pets'):
            cls = {'food101': tvd.Food101, 'cars': tvd.StanfordCars, 'pets': tvd.OxfordIIITPet}[name]
            train = 'trainval' if name == 'pets' else 'train'
            return {'train': tv(cls, split=train), 'val': None, 'test': tv(cls, split='test')}
        # SUN397 and Caltech-101 come without splits: a seeded one (Caltech: 30 per class for training)
        full = tv(tvd.SUN397) if name == 'sun397' else tv(tvd.Caltech101)
        labels = np.array(full._labels if name == 'sun397' else full.y)
        rng = np.random.RandomState(args.seed)
        train_idx = []
        for c in np.unique(labels):
            idx = rng.permutation(np.flatnonzero(labels == c))
            train_idx += list(idx[:30] if name == 'caltech101' else idx[:len(idx) // 2])
        test_idx = sorted(set(range(len(labels))) - set(train_idx))
        sub = lambda idx: Labelled(torch.utils.data.Subset(full, sorted(idx)), labels[sorted(idx)])
        return {'train': sub(train_idx), 'val': None, 'test': sub(test_idx)}
    except (RuntimeError, FileNotFoundError) as e:
        raise util.UserError(f'dataset {name} not found under --data_root {root} ({str(e).splitlines()[0]}); '
                             f'download it there first (no download is attempted)')


class Labelled(torch.utils.data.Dataset):
    def __init__(self, subset, labels):
        self.subset, self.targets = subset, list(labels)

    def __len__(self):
        return len(self.subset)

    def __getitem__(self, i):
        return self.subset[i]


def features_of(name, trunk, args):
    """{split: (features [N, D], labels)} as numpy; cached per checkpoint file, dataset and size."""
    key = {**checkpoint_file_key(args.ckpt), 'size': args.size, 'seed': args.seed,
           'folder': os.path.abspath(args.data_folder) if name == 'folder' else os.path.abspath(args.data_root),
           'files': folder_fingerprint(args.data_folder, exclude=args.features_dir) if name == 'folder' else None}
    transform = T.Compose([T.Resize(args.size, interpolation=T.InterpolationMode.BICUBIC), T.CenterCrop(args.size),
                           T.ToTensor(), T.Normalize(*datasets.MEAN_STD['imagenet'])])

    def extract():
        out = {}
        for split, ds in splits(name, args, transform).items():
            if ds is not None and len(ds) == 0:
                raise util.UserError(f'{name}: the {split} split is empty')
            if ds is not None:
                f, y = extract_features(trunk, datasets.eval_loader(ds, args), args, normalize=False)
            out[split] = None if ds is None else (f.cpu().numpy(), y.cpu().numpy())
        return out
    return cached_features(os.path.join(args.features_dir, f'{name}_{args.size}.pth'), key, extract)


# ----------------------------------------------------------------------------- metrics, regression

def voc11_ap(scores, labels):
    """PASCAL VOC 2007's 11-point AP: mean over recall r in 0, 0.1, ..., 1 of the best precision at
    recall >= r (0 where none). scikit-learn computes only the all-point AP."""
    from sklearn.metrics import precision_recall_curve
    precision, recall, _ = precision_recall_curve(labels, scores)
    return float(np.mean([precision[recall >= r].max() if (recall >= r).any() else 0.0
                          for r in np.linspace(0, 1, 11)]))


def score(name, model, x, y):
    from sklearn.metrics import balanced_accuracy_score
    if name == 'voc2007':
        s = np.stack([m.decision_function(x) for m in model], 1)
        return 100 * float(np.mean([voc11_ap(s[:, c], y[:, c]) for c in range(y.shape[1])]))
    pred = model.predict(x)
    if name in MEAN_PER_CLASS:
        return 100 * float(balanced_accuracy_score(y, pred))  # the mean over classes of per-class recall
    return 100 * float((pred == y).mean())


def fit(name, x, y, inverse_c):
    from sklearn.linear_model import LogisticRegression
    make = lambda: LogisticRegression(C=1 / inverse_c, solver='lbfgs', max_iter=1000)
    if name == 'voc2007':  # multi-label: one binary regression per class
        return [make().fit(x, y[:, c]) for c in range(y.shape[1])]
    return make().fit(x, y)


def transfer(name, feats, args):
    """(test metric, chosen 1/C, which split validated)."""
    from sklearn.preprocessing import StandardScaler
    train, val, test = feats['train'], feats['val'], feats['test']
    source = 'own val split'
    if val is None:  # a seeded 20 % of train validates
        n = len(train[1])
        perm = np.random.RandomState(args.seed).permutation(n)
        cut = max(1, n // 5)
        val, train = (train[0][perm[:cut]], train[1][perm[:cut]]), (train[0][perm[cut:]], train[1][perm[cut:]])
        source = f'seeded 20 % of train ({cut})'
    scaler = StandardScaler().fit(train[0])
    best = max(((score(name, fit(name, scaler.transform(train[0]), train[1], c), scaler.transform(val[0]), val[1]), -c)
                for c in np.logspace(-6, 5, 45)))
    inverse_c = -best[1]
    x = np.concatenate([train[0], val[0]])
    y = np.concatenate([train[1], val[1]])
    scaler = StandardScaler().fit(x)
    return score(name, fit(name, scaler.transform(x), y, inverse_c), scaler.transform(test[0]), test[1]), inverse_c, source


def main():
    import warnings
    warnings.filterwarnings('ignore', module='sklearn')  # lbfgs convergence at the weakest 1/C values
    args = parse_option()
    args.pretrained = checkpoints.load_checkpoint(args.ckpt)  # here, not in parse_option: the scripts' dry runs parse
    distributed.init_distributed(args)
    trunk = checkpoints.pretrained_trunk(args.pretrained, f'--ckpt {args.ckpt}').to(args.device)
    results = {}
    for name in args.datasets:
        feats = features_of(name, trunk, args)
        if not util.is_main():  # features are gathered on every rank; rank 0 fits and reports
            continue
        results[name] = transfer(name, feats, args)
        m, c, source = results[name]
        print(f'{name}: {m:.1f} (1/C {c:.3g}, validated on {source})', flush=True)
    if not util.is_main():
        return
    run = args.pretrained['args'].get('run_name') or os.path.basename(args.ckpt)
    names = [n for n in COLUMNS if n in results] + [n for n in results if n not in COLUMNS]
    title = lambda n: TITLES.get(n, n)
    print('\n| Method | ' + ' | '.join(title(n) for n in names) + ' |')
    print('|---' * (len(names) + 1) + '|')
    print(f'| {run} | ' + ' | '.join(f'{results[n][0]:.1f}' for n in names) + ' |')
    print('| SCE (published) | ' + ' | '.join(str(SCE_PUBLISHED.get(n, '-')) for n in names) + ' |')
    path = os.path.join(args.features_dir, 'transfer.json')
    with open(path, 'w') as f:
        json.dump({n: {'metric': m, 'inverse_c': c, 'validation': s} for n, (m, c, s) in results.items()}, f, indent=1)
    print(f'\nresults written to {path}')


if __name__ == '__main__':
    util.run(main)
