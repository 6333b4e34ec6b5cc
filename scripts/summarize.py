#!/usr/bin/env python3
"""Summarise the runs under save/ folders: a markdown table and one PNG of training curves per run.

    python scripts/summarize.py                        # ./save
    python scripts/summarize.py save/ ../other/save --curves curves/

A row per pretraining or cross-entropy run (a folder holding last.pth): method, model, dataset,
epochs done/planned, global batch, the last training loss and kNN accuracy it logged to
TensorBoard (the monitor's k 200, T 0.1), R@1 from main_retrieval.py's retrieval.json, the best
top-1 of the main_linear.py runs on its checkpoint (for SupCE: its own classifier), and the top-1
the methods' READMEs publish for the same configuration. Linear runs are found by the checkpoint they
evaluated; when several evaluated different epochs, the latest epoch is shown (with @epoch when it
is not the run's last, and the probe's epochs when it stopped early).
"""
import argparse
import glob
import json
import os
import re
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from options import check_output_folder  # noqa: E402
from util import UserError, run  # noqa: E402

SUPCONTRAST = 'SupContrast README'
# (method, model, dataset, epochs, crops or None for any, published top-1, source). Every row is
# width 64. SupContrast's table gives no epochs: its commands run its defaults (1000, CE 500).
PUBLISHED = [
    ('SupCE', 'resnet50', 'cifar10', 500, None, 95.0, SUPCONTRAST),
    ('SupCon', 'resnet50', 'cifar10', 1000, None, 96.0, SUPCONTRAST),
    ('SimCLR', 'resnet50', 'cifar10', 1000, None, 93.6, SUPCONTRAST),
    ('SupCE', 'resnet50', 'cifar100', 500, None, 75.3, SUPCONTRAST),
    ('SupCon', 'resnet50', 'cifar100', 1000, None, 76.5, SUPCONTRAST),
    ('SimCLR', 'resnet50', 'cifar100', 1000, None, 70.7, SUPCONTRAST),
    ('SCE', 'resnet50', 'imagenet', 100, 'single', 72.1, 'SCE README (WACV 2023)'),
    ('SCE', 'resnet50', 'imagenet', 200, 'single', 72.7, 'SCE README (WACV 2023)'),
    ('SCE', 'resnet50', 'imagenet', 300, 'single', 73.3, 'SCE README (WACV 2023)'),
    ('SCE', 'resnet50', 'imagenet', 1000, 'single', 74.1, 'SCE README (WACV 2023)'),
    ('SCE', 'resnet50', 'imagenet', 200, 'multi', 75.4, 'SCE README (WACV 2023)'),
    ('CLSA', 'resnet50', 'imagenet', 200, 'single', 69.4, 'CLSA README'),
    ('CLSA', 'resnet50', 'imagenet', 200, 'multi', 73.3, 'CLSA README'),
    ('CLSA', 'resnet50', 'imagenet', 800, 'single', 72.2, 'CLSA README'),
    ('CLSA', 'resnet50', 'imagenet', 800, 'multi', 76.2, 'CLSA README'),
]
CURVE_TAGS = ('loss', 'learning_rate', 'knn_accuracy', 'val_acc')
MISSING = '—'


def crops(args):
    """'multi' for the multi-crop recipes (more than two crop sizes), else 'single'."""
    return 'multi' if len(args.get('size_crops') or []) > 2 else 'single'


def published(method, args):
    """(top-1, source) the methods' READMEs publish for this configuration, or None."""
    for m, model, dataset, epochs, crop, top1, source in PUBLISHED:
        if ((m, model, dataset, epochs) == (method, args.get('model'), args.get('dataset'), args.get('epochs'))
                and args.get('width') == 64 and crop in (None, crops(args))):
            return top1, source
    return None


def read_checkpoint(path):
    try:  # mmap: only the small entries used here are read from disk
        return torch.load(path, map_location='cpu', weights_only=True, mmap=True)
    except Exception as e:
        print(f'note: skipped {path}: not readable ({type(e).__name__})', file=sys.stderr)
        return None


def tensorboard_folder(folder):
    """save/<Method>/<dataset>_tensorboard/<run> beside save/<Method>/<dataset>_models/<run>, or the
    tensorboard/ inside an --output_dir run folder."""
    parent, name = os.path.split(folder)
    candidates = [os.path.join(folder, 'tensorboard')]
    if os.path.basename(parent).endswith('_models'):
        candidates.append(os.path.join(os.path.dirname(parent), os.path.basename(parent)[:-7] + '_tensorboard', name))
    return next((c for c in candidates if glob.glob(os.path.join(c, 'events.out.tfevents.*'))), None)


def read_scalars(folder):
    """{tag: [(step, value), ...]} of every event file in folder; a resumed run's repeated
    steps keep their last value."""
    if folder is None:
        return {}
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    acc = EventAccumulator(folder, size_guidance={'scalars': 0})  # 0: keep every point
    acc.Reload()
    return {tag: sorted({s.step: s.value for s in acc.Scalars(tag)}.items()) for tag in acc.Tags()['scalars']}


def find_runs(roots):
    runs = []
    for root in roots:
        for folder, _, files in sorted(os.walk(root)):
            if 'last.pth' not in files:
                continue
            ckpt = read_checkpoint(os.path.join(folder, 'last.pth'))
            if ckpt is None or not {'method', 'args', 'epoch'} <= ckpt.keys():
                continue
            runs.append({'folder': folder, 'name': os.path.basename(folder), 'method': ckpt['method'],
                         'args': ckpt['args'], 'epoch': ckpt['epoch'], 'best_acc': ckpt.get('best_acc'),
                         'scalars': read_scalars(tensorboard_folder(folder))})
    return runs


def evaluated_run(path):
    """The run folder name of an evaluated checkpoint path."""
    return os.path.basename(os.path.dirname(os.path.abspath(path)))


def latest(results):
    """(value, epoch, note) of the latest evaluated epoch (best value among its evaluations), or None."""
    return max(results, key=lambda r: (r[1], r[0])) if results else None


def summarize(roots):
    """(markdown table lines, runs)."""
    runs = find_runs(roots)
    linear, recall = {}, {}
    for r in runs:
        if r['method'] == 'Linear':
            m = re.search(r'_epoch_(\d+)_linear_', r['args'].get('run_name', ''))
            epoch = int(m.group(1)) if m else -1
            planned = r['args'].get('epochs')
            unfinished = f' (probe {r["epoch"]}/{planned} ep)' if planned and r['epoch'] < planned else ''
            linear.setdefault(evaluated_run(r['args']['ckpt']), []).append((r['best_acc'], epoch, unfinished))
    for root in roots:
        for path in glob.glob(os.path.join(root, '**', 'retrieval.json'), recursive=True):
            try:
                with open(path) as f:
                    res = json.load(f)
                r1, ckpt, epoch = res['recall'].get('R@1'), res['ckpt'], res['epoch']
            except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:  # garbage, a list, keys missing
                print(f'note: skipped {path}: not a retrieval.json of main_retrieval.py ({type(e).__name__})')
                continue
            if r1 is not None:
                recall.setdefault(evaluated_run(ckpt), []).append((r1, epoch, ''))

    def cell(value):
        return MISSING if value is None else f'{value:.2f}'

    def at_epoch(result, final):
        """'72.30', or '72.30 @100' when measured on an epoch other than the run's last, then any note."""
        if result is None:
            return MISSING
        value, epoch, note = result
        return cell(value) + ('' if epoch == final else f' @{epoch}') + note

    lines = ['| run | method | model | dataset | epochs | batch | final loss | kNN top-1 | R@1 | linear top-1 | published top-1 |',
             '|---|---|---|---|---|---|---|---|---|---|---|']
    for r in runs:
        if r['method'] == 'Linear':
            continue
        a, s = r['args'], r['scalars']
        loss = (s.get('loss') or [(None, None)])[-1][1]
        knn = (s.get('knn_accuracy') or [(None, None)])[-1][1]
        top1 = (r['best_acc'], r['epoch'], '') if r['method'] == 'SupCE' else latest(linear.get(r['name']))
        r1 = latest(recall.get(r['name']))
        pub = published(r['method'], a)
        lines.append(f"| {r['name']} | {r['method']} | {a.get('model')} | {a.get('dataset')} | "
                     f"{r['epoch']}/{a.get('epochs')} | {a.get('batch_size')} | {cell(loss)} | {cell(knn)} | "
                     f"{at_epoch(r1, r['epoch'])} | {at_epoch(top1, r['epoch'])} | "
                     f"{f'{pub[0]:.1f} ({pub[1]})' if pub else MISSING} |")
    return lines, runs


def plot_curves(run, path):
    """One panel per logged curve among CURVE_TAGS, against the logged step (the epoch)."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    tags = [t for t in CURVE_TAGS if run['scalars'].get(t)]
    if not tags:
        return False
    fig, axes = plt.subplots(1, len(tags), figsize=(4 * len(tags), 3.2), squeeze=False)
    for ax, tag in zip(axes[0], tags):
        steps, values = zip(*run['scalars'][tag])
        ax.plot(steps, values, marker='o' if len(steps) < 30 else None, markersize=3)
        ax.set_title(tag.replace('_', ' '))
        ax.set_xlabel('epoch')
        ax.grid(alpha=0.3)
    fig.suptitle(f"{run['method']}: {run['name']}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def main():
    parser = argparse.ArgumentParser(description='markdown table and training curves of the runs under save/ folders')
    parser.add_argument('roots', nargs='*', default=['./save'], help='save/ folders (default ./save)')
    parser.add_argument('--curves', default=None, help='folder of the curve PNGs (default <first root>/curves)')
    args = parser.parse_args()
    for root in args.roots:
        if not os.path.isdir(root):
            raise UserError(f'{root} is not a folder; name the save/ folders of your runs')
    if args.curves:
        check_output_folder(args.curves, '--curves')
    lines, runs = summarize(args.roots)
    if not runs:
        raise UserError(f'no runs (folders with last.pth) under {", ".join(args.roots)}')
    print('\n'.join(lines))
    curves = args.curves or os.path.join(args.roots[0], 'curves')
    os.makedirs(curves, exist_ok=True)
    written = [r for r in runs if plot_curves(r, os.path.join(curves, f"{r['name']}.png"))]
    print(f'\ntraining curves of {len(written)} runs written to {curves}/')


if __name__ == '__main__':
    run(main)
