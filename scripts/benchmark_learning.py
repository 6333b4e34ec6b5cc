"""Does each method learn here? Every method on the same real CIFAR-10 subset, one small CPU budget.

    python scripts/benchmark_learning.py                          # every method (about 100 minutes on 2 cores)
    python scripts/benchmark_learning.py --methods simclr moco --epochs 4

Each method runs its own training script as a user runs it (a subprocess, its output in
OUT/logs/METHOD.log): a ResNet-18 of --width channels, 32 px, CIFAR stem, --epochs epochs over
the same subset, the kNN monitor after every epoch (weighted kNN, k 200, t 0.1: the test split
against the training split, epoch 0 = the random trunk), then one linear probe of the last
checkpoint, the same for every method (main_linear.py, SupContrast's protocol with a cosine over
--linear_epochs). Each method keeps its own loss and augmentations; its learning rate,
temperature and batch are tuned for this budget (RECIPES: the options it is given).

Data: --train_per_class / --test_per_class images of each class from ../shared/data/cifar10_jpeg.npz,
or from torchvision's CIFAR-10 (downloaded into OUT/) where that file is absent, written once as an
ImageFolder tree under OUT/data and handed to every script as --dataset path.

Writes OUT/results.md (the table: random-trunk kNN, kNN after training, linear top-1, minutes,
images/s) and OUT/knn_curves.png, and prints the table.
"""
import argparse
import glob
import io
import os
import re
import resource
import shutil
import statistics
import subprocess
import sys
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NPZ = os.path.join(REPO, '..', 'shared', 'data', 'cifar10_jpeg.npz')
CIFAR10_STATS = ['--mean', '(0.4914, 0.4822, 0.4465)', '--std', '(0.2470, 0.2435, 0.2616)']

# method -> (script, its options for this budget). Tuned on this subset at 12 epochs (see the
# README's table for what they reach); what is not given is the script's default.
RECIPES = {
    # SupCon/SimCLR: SupContrast's CIFAR recipes at batch 128 (more steps in the budget), a cosine;
    # SimCLR at lr 0.1, not 0.3: SupConLoss scales by temp / 0.07 (x 2.9 at t 0.2), and at 0.3 its
    # kNN stalled after 7 epochs (+7.5 at 12 against +13.7 at 0.1)
    'supcon': ('main_supcon.py', ['--method', 'SupCon', '--batch_size', '128', '--learning_rate', '0.1',
                                  '--temp', '0.1', '--cosine']),
    'simclr': ('main_supcon.py', ['--method', 'SimCLR', '--batch_size', '128', '--learning_rate', '0.1',
                                  '--temp', '0.2', '--cosine']),
    'ce': ('main_ce.py', ['--batch_size', '128', '--learning_rate', '0.1', '--cosine']),
    # MoCo v2 as MoCo's CIFAR kNN-monitor demo runs it: queue 4096, m 0.99, t 0.1; BatchNorm in 4
    # groups emulates the shuffle across GPUs of one process
    'moco': ('main_moco.py', ['--mlp', '--aug_plus', '--cos', '--batch_size', '128', '--lr', '0.06',
                              '--moco_k', '4096', '--moco_m', '0.99', '--moco_t', '0.1', '--bn_splits', '4']),
    # + Revisiting's options: multi-scale constrained crops (2 x 32 px, 4 x 16 px) and its kNN loss
    'moco_revisiting': ('main_moco.py', [
        '--mlp', '--aug_plus', '--cos', '--batch_size', '128', '--lr', '0.06', '--moco_k', '4096',
        '--moco_m', '0.99', '--moco_t', '0.1', '--bn_splits', '4', '--nmb_crops', '2', '4',
        '--size_crops', '32', '16', '--min_scale_crops', '0.2', '0.08', '--max_scale_crops', '1.0', '0.4',
        '--constrained_cropping', '--aux_topk', '5', '--aux_weight', '0.4']),
    # SCE's CIFAR recipe (--recipe cifar) at batch 128 with one warm-up epoch
    'sce': ('main_sce.py', ['--recipe', 'cifar', '--batch_size', '128', '--warmup_epochs', '1']),
    # CLSA single-crop as released (a weak 32 px crop, a strong one at 3/7 of it: 224/96 px there),
    # MoCo's CIFAR settings as above; CLSA's own per-epoch half cosine
    'clsa': ('main_clsa.py', ['--batch_size', '128', '--lr', '0.06', '--moco_k', '4096', '--moco_m', '0.99',
                              '--moco_t', '0.1', '--bn_splits', '4', '--nmb_crops', '1', '1', '--size_crops', '32', '14',
                              '--min_scale_crops', '0.2', '0.086', '--max_scale_crops', '1.0', '0.429',
                              '--pick_weak', '0', '--pick_strong', '1', '--sym', '0']),
}


def parse_option():
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--methods', nargs='+', default=list(RECIPES), choices=list(RECIPES))
    p.add_argument('--epochs', type=int, default=12, help='pretraining epochs of every method')
    p.add_argument('--width', type=int, default=16, help='channels of the first ResNet-18 stage')
    p.add_argument('--train_per_class', type=int, default=1000, help='training images per class')
    p.add_argument('--test_per_class', type=int, default=200, help='test images per class (kNN, probe)')
    p.add_argument('--linear_epochs', type=int, default=10)
    p.add_argument('--linear_lr', type=float, default=1.0, help='learning rate of the linear probe (batch 256)')
    p.add_argument('--workers', type=int, default=2, help='data-loading workers of each run')
    p.add_argument('--amp', choices=['auto', 'none', 'bf16'], default='auto',
                   help="mixed precision of every run (auto: bf16 where this CPU has bf16 kernels)")
    p.add_argument('--out', default=os.path.join(REPO, 'save', 'benchmark_learning'))
    p.add_argument('--seed', type=int, default=0)
    p.add_argument('--npz', default=NPZ, help='CIFAR-10 as JPEG bytes (../shared/data of this project\'s '
                   'developers); torchvision\'s download where absent')
    o = p.parse_args()
    if o.amp == 'auto':
        import torch
        o.amp = 'bf16' if torch.cuda.is_available() or torch.ops.mkldnn._is_mkldnn_bf16_supported() else 'none'
    return o


# ----------------------------------------------------------------------------- data

def cifar10_images(npz):
    """{split: (encoded image bytes, labels)}, classes, extension: from the npz, else torchvision's."""
    if os.path.exists(npz):
        z = np.load(npz)

        def jpegs(data, offsets):
            return (data[offsets[i]:offsets[i + 1]].tobytes() for i in range(len(offsets) - 1))
        splits = {split: (jpegs(z[f'{split}_bytes'], z[f'{split}_offsets']), z[f'{split}_labels'].tolist())
                  for split in ('train', 'test')}
        return splits, [str(c) for c in z['classes']], 'jpg'
    from torchvision.datasets import CIFAR10
    root = os.path.join(REPO, 'datasets')

    def png(dataset):
        for image, _ in dataset:
            buffer = io.BytesIO()
            image.save(buffer, 'PNG')
            yield buffer.getvalue()
    splits = {split: (png(d := CIFAR10(root, train=split == 'train', download=True)), d.targets)
              for split in ('train', 'test')}
    return splits, CIFAR10(root, train=True).classes, 'png'


def make_subset(o):
    """OUT/data/{train,test}/<class>/*.{jpg,png}: the first images of each class; written once."""
    root = os.path.join(o.out, 'data')
    stamp = os.path.join(root, 'subset.txt')
    wanted = f'train {o.train_per_class} test {o.test_per_class} per class from {os.path.abspath(o.npz)}\n'
    if os.path.exists(stamp) and open(stamp).read() == wanted:
        return root
    shutil.rmtree(root, ignore_errors=True)
    splits, classes, ext = cifar10_images(o.npz)
    for split, per_class in (('train', o.train_per_class), ('test', o.test_per_class)):
        images, labels = splits[split]
        taken = [0] * len(classes)
        for c in classes:
            os.makedirs(os.path.join(root, split, c))
        for i, (encoded, y) in enumerate(zip(images, labels)):
            if taken[y] < per_class:
                taken[y] += 1
                with open(os.path.join(root, split, classes[y], f'{i:05d}.{ext}'), 'wb') as f:
                    f.write(encoded)
            if min(taken) >= per_class:
                break
    with open(stamp, 'w') as f:
        f.write(wanted)
    return root


# ----------------------------------------------------------------------------- runs

def run(argv, log):
    """Runs `python argv` in the repository, its output into `log`; (wall s, CPU s, output lines).
    The CPU time counts the script's data-loading workers too."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    with open(log, 'w') as f:
        done = subprocess.run([sys.executable, *argv], cwd=REPO, stdout=f, stderr=subprocess.STDOUT)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    lines = open(log).read().splitlines()
    if done.returncode != 0:
        raise RuntimeError(f'{argv[0]} failed (exit {done.returncode}), see {log}:\n  ' + '\n  '.join(lines[-5:]))
    return wall, after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime, lines


def data_options(o, data):
    return ['--dataset', 'path', '--data_folder', os.path.join(data, 'train'),
            '--test_folder', os.path.join(data, 'test'), *CIFAR10_STATS, '--size', '32']


def pretrain(o, method, data):
    """Trains one method; its kNN curve, speed and last checkpoint."""
    script, recipe = RECIPES[method]
    save_root = os.path.join(o.out, 'runs', method, 'pretraining')
    argv = [script, *data_options(o, data), '--model', 'resnet18', '--stem', 'cifar', '--width', str(o.width),
            '--epochs', str(o.epochs), '--knn_freq', '1', '--num_workers', str(o.workers), '--seed', str(o.seed),
            '--amp', o.amp, '--channels_last', '--print_freq', '20', '--save_root', save_root, '--overwrite',
            *recipe]
    wall, cpu, lines = run(argv, os.path.join(o.out, 'logs', f'{method}.log'))
    knn = {int(m[1]): float(m[2]) for m in (re.match(r'epoch (\d+), kNN accuracy ([\d.]+)', line) for line in lines) if m}
    speeds = [float(m[1]) for m in (re.search(r'^epoch \d+, total time .*?([\d.]+) images/s', line) for line in lines) if m]
    ckpt, = glob.glob(os.path.join(save_root, '**', 'last.pth'), recursive=True)
    return dict(knn=knn, images_per_s=statistics.median(speeds), minutes=wall / 60, cpu_minutes=cpu / 60,
                ckpt=ckpt, command=' '.join(['python', *argv]))


def linear_probe(o, method, ckpt, data):
    """Best test top-1 (SupContrast's report) of the same linear probe on every method's trunk."""
    argv = ['main_linear.py', '--ckpt', ckpt, '--protocol', 'supcon', *data_options(o, data),
            '--batch_size', '256', '--learning_rate', str(o.linear_lr), '--cosine', '--epochs', str(o.linear_epochs),
            '--num_workers', str(o.workers), '--seed', str(o.seed), '--amp', o.amp, '--channels_last',
            '--print_freq', '1000', '--save_root', os.path.join(o.out, 'runs', method, 'linear'), '--overwrite']
    _, _, lines = run(argv, os.path.join(o.out, 'logs', f'{method}_linear.log'))
    return float(next(m[1] for m in (re.match(r'best accuracy: ([\d.]+)', line) for line in lines) if m))


# ----------------------------------------------------------------------------- report

def table(o, results):
    rows = ['| method | kNN random trunk | kNN after | gain | linear top-1 | minutes | CPU minutes | images/s |',
            '|---|---:|---:|---:|---:|---:|---:|---:|']
    for method, r in results.items():
        knn = r['knn']
        rows.append(f'| {method} | {knn[0]:.2f} | {knn[o.epochs]:.2f} | {knn[o.epochs] - knn[0]:+.2f} | '
                    f'{r["linear"]:.2f} | {r["minutes"]:.1f} | {r["cpu_minutes"]:.1f} | {r["images_per_s"]:.0f} |')
    return '\n'.join(rows)


def plot(o, results, path):
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for method, r in results.items():
        epochs = sorted(r['knn'])
        ax.plot(epochs, [r['knn'][e] for e in epochs], marker='o', markersize=3, label=method)
    ax.set(xlabel='epoch (0: random trunk)', ylabel='kNN top-1 (%)',
           title=f'CIFAR-10, {10 * o.train_per_class} images, ResNet-18 width {o.width}, 32 px')
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main():
    o = parse_option()
    os.makedirs(os.path.join(o.out, 'logs'), exist_ok=True)
    data = make_subset(o)
    commit = subprocess.run(['git', 'rev-parse', '--short', 'HEAD'], cwd=REPO, capture_output=True, text=True).stdout.strip()
    import torch
    header = (f'CIFAR-10 subset: {o.train_per_class} training and {o.test_per_class} test images per class; '
              f'ResNet-18 width {o.width}, 32 px, {o.epochs} epochs, amp {o.amp}, {o.workers} workers, '
              f'{os.cpu_count()} cores, {torch.get_num_threads()} torch threads; commit {commit or "?"}')
    print(header, flush=True)
    results, start = {}, time.perf_counter()
    for method in o.methods:
        r = pretrain(o, method, data)
        r['linear'] = linear_probe(o, method, r['ckpt'], data)
        results[method] = r
        print(f'{method}: kNN {r["knn"][0]:.2f} -> {r["knn"][o.epochs]:.2f}, linear {r["linear"]:.2f}, '
              f'{r["minutes"]:.1f} min, {r["images_per_s"]:.0f} images/s', flush=True)
    report = (f'{header}\n\n{table(o, results)}\n\nwall time of the benchmark: '
              f'{(time.perf_counter() - start) / 60:.1f} min\n\nCommands:\n\n' +
              '\n'.join(f'    {r["command"]}' for r in results.values()) + '\n')
    with open(os.path.join(o.out, 'results.md'), 'w') as f:
        f.write(report)
    plot(o, results, os.path.join(o.out, 'knn_curves.png'))
    print('\n' + report + f'\nwrote {os.path.join(o.out, "results.md")} and knn_curves.png')


if __name__ == '__main__':
    main()
