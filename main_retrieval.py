"""Evaluate the trunk of any checkpoint without training: weighted kNN classification, retrieval
recall@k and a t-SNE figure.

    python main_retrieval.py --ckpt save/SupCon/cifar10_models/<run>/last.pth
    python main_retrieval.py --ckpt CKPT --dataset path --data_folder DIR/train --test_folder DIR/test --tsne tsne.png

The trunk (not the projection head) is rebuilt from the checkpoint alone; the data default to the
checkpoint's. Trunk features of the training split (the bank) and of the evaluation split (the
queries) are extracted once, sharded over the processes, and kept as the SCE video code's
train_features.pth / train_labels.pth / val_features.pth / val_labels.pth in --features_dir (default:
a folder next to the checkpoint). A later run on the same checkpoint file and data reads them back.

Videos (SCE's video retrieval, MVAP 2023): each video's feature is the trunk's averaged over --test_clips x
--test_crops views; the clips have the checkpoint's --num_frames unless given:

    python main_retrieval.py --ckpt save/SCE/r3d50_kinetics400/last.pth --dataset ucf101 --data_folder DIR --split_id 1
"""
import json
import math
import os
import time

import torch
import torch.distributed as dist
import torch.nn.functional as F

import checkpoints
import datasets
import distributed
import options
import util
import video_options
from evaluation import checkpoint_file_key, extract_features, folder_fingerprint, knn_accuracies, recall_at_k
from video_datasets import VIDEO_DATASETS

FEATURE_FILES = ('train_features', 'train_labels', 'val_features', 'val_labels')
FIGURE_TYPES = ('.png', '.pdf', '.svg', '.jpg')


def parse_option():
    parser = options.parser("kNN classification, retrieval and t-SNE of a checkpoint's trunk")
    options.add_extraction_options(parser, 'features_<ckpt name>_<dataset>_<size>/')
    options.add_data_options(parser)
    parser.set_defaults(dataset=None, size=None)  # None: the checkpoint's dataset, folders, statistics, size
    video_options.add_video_options(parser, num_frames=None)

    g = parser.add_argument_group('evaluation')
    g.add_argument('--knn_k', type=int, nargs='+', default=[10, 20, 100, 200], help='neighbours of the kNN vote')
    g.add_argument('--knn_t', type=float, nargs='+', default=[0.07, 0.1], help='temperatures of the kNN vote')
    g.add_argument('--recall_k', type=int, nargs='+', default=[1, 5, 10, 20, 50], help='k of retrieval R@k')
    g.add_argument('--tsne', type=str, default=None, metavar='FIGURE',
                   help='write a t-SNE figure of the query features')
    g.add_argument('--tsne_samples', type=int, default=2000, help='query features drawn for the t-SNE')
    args, given = options.parse(parser)

    for name in ('size', 'knn_k', 'knn_t', 'recall_k', 'tsne_samples'):
        values = getattr(args, name)
        if values is not None and min(values if isinstance(values, list) else [values]) <= 0:
            raise util.UserError(f'--{name} must be positive, got {values}')
    if not args.tsne:
        options.refuse(given, ('tsne_samples',), 'it sizes the t-SNE figure: give --tsne FIGURE too')
    if args.tsne:
        options.check_output_file(args.tsne, '--tsne')
    if args.tsne and os.path.splitext(args.tsne)[1].lower() not in FIGURE_TYPES:
        raise util.UserError(f'--tsne {args.tsne}: name a figure file ending in {", ".join(FIGURE_TYPES)}')
    options.parse_mean_std(args)

    args.pretrained = checkpoints.load_checkpoint(args.ckpt)
    saved = args.pretrained['args']
    for name in ('dataset', 'size'):
        if getattr(args, name) is None and saved.get(name) is None:
            raise util.UserError(f'--ckpt {args.ckpt} does not record its {name}: give --{name}')
    if args.dataset is None:
        args.dataset = saved['dataset']
        for key in ('data_folder', 'test_folder'):
            if key not in given:
                setattr(args, key, saved.get(key) or getattr(args, key))
        if args.mean is None and saved.get('mean') is not None:
            args.mean, args.std = tuple(saved['mean']), tuple(saved['std'])
    options.check_data_options(args, given)
    args.model = saved['model']
    video_options.check_model_fits_data(args)
    video_options.frames_of_checkpoint(args, saved)
    if args.dataset in VIDEO_DATASETS:
        options.check_video_options(args)
    if args.size is None:
        args.size = saved['size']
    options.finish_extraction_options(args, f'features_{{name}}_{args.dataset}_{args.size}')
    return args


def feature_key(args):
    """What the features depend on: the checkpoint file and the data. Cached features are reused
    only when all of it is unchanged (last.pth is rewritten every epoch: size and time tell)."""
    folder = lambda path: os.path.abspath(path) if path else None
    key = {**checkpoint_file_key(args.ckpt), 'epoch': args.pretrained['epoch'], 'dataset': args.dataset, 'data_folder': folder(args.data_folder),
           'test_folder': folder(args.test_folder), 'size': args.size, 'mean': args.mean, 'std': args.std}
    if args.dataset in ('path', 'imagenet') or args.dataset in VIDEO_DATASETS:  # folders the user may change
        key['files'] = {name: folder_fingerprint(getattr(args, name), exclude=args.features_dir)
                        for name in ('data_folder', 'test_folder')
                        if getattr(args, name) and os.path.isdir(getattr(args, name))}
    if args.dataset in VIDEO_DATASETS:
        key.update({name: getattr(args, name) for name in ('num_frames', 'clip_duration', 'test_clips', 'test_crops',
                                                           'split_id', 'frame_rate')},
                   **{name: folder(getattr(args, name)) for name in ('split_dir', 'train_list', 'val_list')})
    return json.loads(json.dumps(key))  # tuples as lists, as read back from the file


def read_cache(folder, key):
    """(features, class names) cached in folder for this key, else None."""
    meta_path = os.path.join(folder, 'features.json')
    paths = [os.path.join(folder, f'{name}.pth') for name in FEATURE_FILES]
    if not all(os.path.isfile(p) for p in [meta_path, *paths]):
        return None
    try:
        with open(meta_path) as f:
            meta = json.load(f)
        if not isinstance(meta, dict) or meta.get('key') != key:
            print(f'note: the features in {folder} come from another checkpoint file or other data: extracting again')
            return None
        features = {name: torch.load(path, map_location='cpu', weights_only=True)
                    for name, path in zip(FEATURE_FILES, paths)}
        classes = list(meta['classes'])
    except Exception as e:  # truncated or garbage cache files: extracting again is always right
        print(f'note: the feature cache in {folder} is unreadable ({type(e).__name__}): extracting again')
        return None
    print(f'features read from {folder} (extracted earlier from the same checkpoint and data)')
    return features, classes


def write_cache(folder, key, features, classes):
    """Each file atomically; features.json, which makes the folder a valid cache, goes last."""
    os.makedirs(folder, exist_ok=True)
    meta_path = os.path.join(folder, 'features.json')
    if os.path.exists(meta_path):
        os.remove(meta_path)  # stale until every new file is in place
    for name in FEATURE_FILES:
        atomic_write(os.path.join(folder, f'{name}.pth'), lambda tmp: torch.save(features[name], tmp))
    meta = {'key': key, 'classes': classes, 'bank': len(features['train_labels']),
            'queries': len(features['val_labels']), 'feature_dim': features['train_features'].shape[1]}
    atomic_write(meta_path, lambda tmp: open(tmp, 'w').write(json.dumps(meta, indent=1)))


def atomic_write(path, write):
    tmp = f'{path}.tmp{os.getpid()}'
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def set_loader(args):
    """(bank, query) loaders of the training and evaluation splits through the evaluation views
    (videos: every test view), and the class names."""
    bank, queries = (datasets.eval_dataset(args, train, test_views=True) for train in (True, False))
    datasets.require_labels(bank, 'kNN classification and retrieval')
    classes = [str(c) for c in getattr(bank, 'classes', [])]
    return datasets.eval_loader(bank, args), datasets.eval_loader(queries, args), classes


def extract(args):
    """Trunk features (not L2-normalised) and labels of both splits, on the CPU of rank 0."""
    bank_loader, query_loader, classes = set_loader(args)
    trunk = checkpoints.pretrained_trunk(args.pretrained, f'--ckpt {args.ckpt}').to(args.device)
    if args.device.type == 'cuda':
        distributed.channels_last(trunk)
    start = time.time()
    bank, bank_labels = extract_features(trunk, bank_loader, args, normalize=False)
    queries, query_labels = extract_features(trunk, query_loader, args, normalize=False)
    if util.is_main():
        print(f'extracted {len(bank_labels)} bank and {len(query_labels)} query features of dimension '
              f'{bank.shape[1]} in {time.time() - start:.1f} s')
    features = {'train_features': bank, 'train_labels': bank_labels, 'val_features': queries,
                'val_labels': query_labels}
    return {name: t.cpu() for name, t in features.items()}, classes


def evaluate(features, args):
    f = {name: t.to(args.device) for name, t in features.items()}
    knn = knn_accuracies(f['val_features'], f['val_labels'], f['train_features'], f['train_labels'],
                         args.knn_k, args.knn_t)
    recall = recall_at_k(f['val_features'], f['val_labels'], f['train_features'], f['train_labels'], args.recall_k)
    return knn, recall


def report(knn, recall, features, args):
    """Print the tables and write them, with what was evaluated, to retrieval.json."""
    bank, queries = len(features['train_labels']), len(features['val_labels'])
    print(f'\nweighted kNN top-1 accuracy (%), cosine, {queries} queries against a bank of {bank}')
    print('         ' + ''.join(f'{f"k={k}":>9}' for k in args.knn_k))
    for t in args.knn_t:
        print(f'{f"T={t}":>9}' + ''.join(f'{knn[k, t]:9.2f}' for k in args.knn_k))
    print('\nretrieval recall (%), each set centred, cosine')
    print(''.join(f'{f"R@{k}":>9}' for k in args.recall_k))
    print(''.join(f'{recall[k]:9.2f}' for k in args.recall_k))

    ckpt = args.pretrained
    results = {'ckpt': os.path.abspath(args.ckpt), 'method': ckpt['method'], 'epoch': ckpt['epoch'],
               'run_name': ckpt['args'].get('run_name'), 'model': ckpt['args']['model'],
               'dataset': args.dataset, 'size': args.size, 'bank': bank, 'queries': queries,
               'feature_dim': features['train_features'].shape[1],
               'knn': [{'k': k, 't': t, 'accuracy': knn[k, t]} for k in args.knn_k for t in args.knn_t],
               'recall': {f'R@{k}': recall[k] for k in args.recall_k}}
    path = os.path.join(args.features_dir, 'retrieval.json')
    atomic_write(path, lambda tmp: open(tmp, 'w').write(json.dumps(results, indent=1)))
    print(f'\nresults written to {path}')


def plot_tsne(features, labels, classes, path, samples, title):
    """t-SNE (scikit-learn) of at most `samples` L2-normalised features drawn at random (seed 0),
    one colour per class, with a legend."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    from sklearn.manifold import TSNE

    keep = torch.randperm(len(labels), generator=torch.Generator().manual_seed(0))[:samples]
    x = F.normalize(features[keep].float(), dim=1).numpy()
    y = labels[keep].numpy()
    start = time.time()
    xy = TSNE(n_components=2, perplexity=min(30.0, (len(x) - 1) / 3), init='pca', random_state=0).fit_transform(x)

    present = sorted(set(y.tolist()))
    n_colours = int(max(present)) + 1
    cmap = plt.get_cmap('tab10' if n_colours <= 10 else 'tab20' if n_colours <= 20 else 'turbo')
    colour = (lambda c: cmap(c)) if n_colours <= 20 else (lambda c: cmap(c / max(n_colours - 1, 1)))
    fig, ax = plt.subplots(figsize=(8, 7))
    for c in present:
        name = classes[c] if c < len(classes) else str(c)
        ax.scatter(xy[y == c, 0], xy[y == c, 1], s=5, color=colour(c), label=name)
    ax.legend(loc='center left', bbox_to_anchor=(1, 0.5), markerscale=3, frameon=False,
              ncol=math.ceil(len(present) / 25))
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(title, fontsize=9)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=150, bbox_inches='tight')
    plt.close(fig)
    print(f't-SNE of {len(x)} query features ({time.time() - start:.1f} s) written to {path}')


def main():
    args = parse_option()
    distributed.init_distributed(args)
    key = feature_key(args)
    cached = read_cache(args.features_dir, key) if util.is_main() else None
    reuse = [cached is not None]
    if util.world_size() > 1:
        dist.broadcast_object_list(reuse, 0)  # rank 0 decides: every rank extracts, or none
    if not reuse[0]:
        cached = extract(args)
        if util.is_main():
            write_cache(args.features_dir, key, *cached)
    if not util.is_main():
        return
    features, classes = cached
    knn, recall = evaluate(features, args)
    report(knn, recall, features, args)
    if args.tsne:
        run = args.pretrained['args'].get('run_name') or os.path.basename(os.path.dirname(args.ckpt))
        plot_tsne(features['val_features'], features['val_labels'], classes, args.tsne, args.tsne_samples,
                  f'{run}\nepoch {args.pretrained["epoch"]}, {args.dataset} test split, trunk features')


if __name__ == '__main__':
    util.run(main)
