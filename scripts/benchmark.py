"""Speed of each method's training step, and of its input pipeline, on this machine.

    python scripts/benchmark.py                                        # every method, ResNet-18, 32 px, batch 128
    python scripts/benchmark.py --methods supcon --compare --repeats 3 # plain vs ours, alternating in one process
    python scripts/benchmark.py --data_only                            # images/s of one data worker, per pipeline
    python scripts/benchmark.py --views                                # device views of SCE, folders, clips vs CPU
    python scripts/benchmark.py --methods supcon --model resnet50 --size 224 --batch_size 256 --compare

Every figure comes from the real script: main_*.py runs in this process with --max_steps, so its
own training step is timed (datasets.TimedSteps: 2 warm-up steps, then each step split into the
wait for data and the rest, the device synchronised at both ends). --data_only builds the
script's own training loader (its set_loader) with --num_workers 0, i.e. what one worker does,
and times batches from it, with the PIL pipeline and, where the script has it, with --gpu_aug on
this machine's device (CPU tensors when there is no GPU).

Data: the real CIFAR-10 of ../shared/data/cifar10_jpeg.npz (JPEG-decoded once), handed to the
scripts as --dataset cifar10; without it, random images, and the table says so. Video methods
read ../shared/data/videos/actions2.

Configurations (--compare times both, alternating, --repeats times, and prints their ratio):
    plain  fp32, NCHW, torch's default optimiser step, PIL augmentation per sample in --workers
           worker processes: how the released code of these methods runs
    ours   --amp bf16 --channels_last with the fused optimiser step (a default), and --gpu_aug
           where the script has it (else PIL in workers); --ours adds options (e.g. --compile)
"""
import argparse
import gc
import glob
import importlib
import io
import os
import shutil
import statistics
import sys
import tempfile
import time

import numpy as np
import torch
from PIL import Image

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
import datasets  # noqa: E402  (after the path: the repository's modules)
import distributed  # noqa: E402
import util  # noqa: E402

SHARED = os.path.join(REPO, '..', 'shared', 'data')
PLAIN = ['--amp', 'none', '--no-channels_last', '--no-fused_optimizer', '--no-gpu_aug']
OURS = ['--amp', 'bf16', '--channels_last']


def queue(o):
    """A queue of about 4096 keys that holds whole batches."""
    return str(o.batch_size * max(1, 4096 // o.batch_size))


# name -> (script, options of the method given the benchmark's options, script has --gpu_aug).
# A method lands here with its script: one line.
METHODS = {
    'supcon': ('main_supcon.py', lambda o: ['--method', 'SupCon', '--knn_freq', '0'], True),
    'simclr': ('main_supcon.py', lambda o: ['--method', 'SimCLR', '--knn_freq', '0'], True),
    'ce': ('main_ce.py', lambda o: [], False),
    'moco': ('main_moco.py', lambda o: ['--mlp', '--aug_plus', '--moco_t', '0.2', '--moco_k', queue(o),
                                        '--knn_freq', '0'], True),
    'moco_multicrop': ('main_moco.py', lambda o: [
        '--mlp', '--aug_plus', '--moco_t', '0.2', '--moco_k', queue(o), '--knn_freq', '0', '--nmb_crops', '2', '4',
        '--size_crops', str(o.size), str(o.size // 2), '--min_scale_crops', '0.2', '0.05',
        '--max_scale_crops', '1.0', '0.14'], True),
    'moco_revisiting': ('main_moco.py', lambda o: [
        '--mlp', '--aug_plus', '--moco_t', '0.2', '--moco_k', queue(o), '--knn_freq', '0', '--nmb_crops', '2', '4',
        '--size_crops', str(o.size), str(o.size // 2), '--min_scale_crops', '0.2', '0.05',
        '--max_scale_crops', '1.0', '0.14', '--constrained_cropping', '--auto_augment', '0', '2', '3', '4', '5'], True),
    'sce': ('main_sce.py', lambda o: ['--queue_size', queue(o), '--knn_freq', '0'], True),
    'clsa': ('main_clsa.py', lambda o: ['--moco_k', queue(o), '--knn_freq', '0'], True),
    'video_sce': ('main_sce.py', lambda o: [
        '--dataset', 'video', '--data_folder', os.path.join(SHARED, 'videos', 'actions2', 'train'),
        '--model', o.video_model, '--size', str(o.video_size), '--num_frames', str(o.frames),
        '--queue_size', queue(o), '--knn_freq', '0'], True),
    # an ImageNet-like folder: JPEGs of 500 x 375 (CIFAR-10 images enlarged), two crops of 224 px
    'supcon_jpeg_folder': ('main_supcon.py', lambda o: [
        '--method', 'SupCon', '--knn_freq', '0', '--dataset', 'path', '--data_folder', jpeg_folder(o),
        '--size', '224'], True),
}


def parse_option():
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--methods', nargs='+', default=None, choices=sorted(METHODS),
                   help='default: every method whose script exists')
    p.add_argument('--model', default='resnet18')
    p.add_argument('--size', type=int, default=32)
    p.add_argument('--batch_size', type=int, default=128)
    p.add_argument('--video_model', default='r3d18', help='trunk of the video methods')
    p.add_argument('--video_size', type=int, default=112, help='frame size of the video methods')
    p.add_argument('--frames', type=int, default=8, help='frames per clip of the video methods')
    p.add_argument('--steps', type=int, default=8, help='steps per run, the first 2 of them warm-up')
    p.add_argument('--repeats', type=int, default=1, help='runs of each configuration, alternating')
    p.add_argument('--workers', type=int, default=2, help='data-loading processes of PIL pipelines')
    p.add_argument('--compare', action='store_true', help='time plain and ours, print ours / plain')
    p.add_argument('--data_only', action='store_true', help='time the input pipelines alone (one worker)')
    p.add_argument('--views', action='store_true', help='time the device views of SCE, image folders and '
                   'clips against their CPU pipelines (scripts/benchmark_views.py)')
    p.add_argument('--batches', type=int, default=10, help='--data_only: batches timed per pipeline')
    p.add_argument('--images', type=int, default=50000, help='CIFAR-10 training images used')
    p.add_argument('--plain', default='', help='extra options of the plain configuration')
    p.add_argument('--ours', default='', help='extra options of ours, e.g. "--compile"')
    o = p.parse_args()
    if o.methods is None:
        o.methods = [m for m, (script, _, _) in METHODS.items() if os.path.exists(os.path.join(REPO, script))]
    return o


# ----------------------------------------------------------------------------- data

class CIFAR10Images(torch.utils.data.Dataset):
    """CIFAR-10 as torchvision's CIFAR10 holds it: .data (uint8 [N, 32, 32, 3]), .targets, .classes."""

    def __init__(self, data, targets, classes, transform=None):
        self.data, self.targets, self.classes, self.transform = data, targets, classes, transform

    def __len__(self):
        return len(self.targets)

    def __getitem__(self, i):
        img = Image.fromarray(self.data[i])
        return (self.transform(img) if self.transform else img), self.targets[i]


def load_cifar10(split, limit):
    """(pixels, labels, classes, real) of the first `limit` images of a split of
    ../shared/data/cifar10_jpeg.npz, decoded; random pixels (real False) without that file."""
    path = os.path.join(SHARED, 'cifar10_jpeg.npz')
    if not os.path.exists(path):
        rng = np.random.default_rng(0)
        n = min(limit, 50000 if split == 'train' else 10000)
        return rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8), rng.integers(0, 10, n).tolist(), \
            [str(c) for c in range(10)], False
    z = np.load(path)
    data, offsets = z[f'{split}_bytes'], z[f'{split}_offsets']
    n = min(limit, len(offsets) - 1)
    pixels = np.stack([np.asarray(Image.open(io.BytesIO(data[offsets[i]:offsets[i + 1]].tobytes())).convert('RGB'))
                       for i in range(n)])
    return pixels, z[f'{split}_labels'][:n].tolist(), [str(c) for c in z['classes']], True


def jpeg_folder(o):
    """save/benchmark_jpegs: the --batches (+ 1 warm-up) batches of 500 x 375 JPEGs (quality 90),
    made once from load_cifar10's images, in class folders: an ImageNet run's decoding and resizing."""
    root = os.path.join(REPO, 'save', 'benchmark_jpegs')
    n = o.batch_size * (o.batches + 1)
    if len(glob.glob(os.path.join(root, '*', '*.jpg'))) != n:
        shutil.rmtree(root, ignore_errors=True)
        pixels, labels, classes, _ = load_cifar10('train', n)
        for i, (image, label) in enumerate(zip(pixels, labels)):
            os.makedirs(os.path.join(root, classes[label]), exist_ok=True)
            Image.fromarray(image).resize((500, 375), Image.BICUBIC).save(
                os.path.join(root, classes[label], f'{i:05d}.jpg'), quality=90)
    return root


def serve_cifar10(limit):
    """Make --dataset cifar10 read load_cifar10's images (each split decoded once) in every script;
    returns whether they are the real ones."""
    cache, original = {}, datasets.image_dataset

    def image_dataset(args, train, transform):
        if args.dataset != 'cifar10':
            return original(args, train, transform)
        split = 'train' if train else 'test'
        if split not in cache:
            cache[split] = load_cifar10(split, limit)
        return CIFAR10Images(*cache[split][:3], transform)

    datasets.image_dataset = image_dataset  # the scripts and knn_loaders call it through the module
    return os.path.exists(os.path.join(SHARED, 'cifar10_jpeg.npz'))


# ----------------------------------------------------------------------------- runs

def script_module(script):
    return importlib.import_module(script[:-3])


def command(o, method, config, tmp):
    """The script and its options for one run."""
    script, options, has_gpu_aug = METHODS[method]
    options = options(o)
    data = [] if '--dataset' in options else ['--dataset', 'cifar10', '--data_folder', tmp, '--no-download']
    argv = [*data, '--save_root', tmp, '--model', o.model, '--size', str(o.size), '--batch_size', str(o.batch_size),
            '--epochs', '1000', '--print_freq', '1000000', '--seed', '0', *options]
    if config == 'plain':
        argv += PLAIN + ['--num_workers', str(o.workers)] + o.plain.split()
    else:
        argv += OURS + (['--gpu_aug', '--num_workers', '0'] if has_gpu_aug else ['--num_workers', str(o.workers)])
        argv += o.ours.split()
    return script, argv


def run_in_process(script, argv, body):
    """body(module) with sys.argv set for the script; returns its result, or the error as a string."""
    saved = sys.argv
    sys.argv = [os.path.join(REPO, script), *argv]
    try:
        return body(script_module(script))
    except util.StepLimitReached as done:
        return done.args[0]
    except util.UserError as e:
        return f'error: {e}'
    except SystemExit as e:  # argparse: an option this script does not have
        return f'exit {e.code}: options not accepted'
    except Exception as e:  # a broken method fails its own row, not the table
        return f'failed: {type(e).__name__}: {e}'
    finally:
        sys.argv = saved
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
        gc.collect()  # the finished run's loader workers and tensors


def time_steps(o, method, config, tmp):
    script, argv = command(o, method, config, tmp)
    result = run_in_process(script, argv + ['--max_steps', str(o.steps)], lambda m: m.main())
    return 'error: the run ended before --steps steps' if result is None else result


def epochs(loader):
    """The loader's batches, epoch after epoch (a small video set has few batches)."""
    for epoch in range(1, 10**6):
        loader.sampler.set_epoch(epoch)
        yield from loader


def time_pipeline(o, method, gpu_aug, tmp):
    """Images/s of the script's training loader with --num_workers 0 (one worker's work), torch on
    one thread; with gpu_aug, the on-device augmentation on this machine's device."""
    script, argv = command(o, method, 'plain', tmp)
    argv += ['--num_workers', '0'] + (['--gpu_aug'] if gpu_aug else [])

    def body(m):
        args = m.parse_option()
        distributed.start(args)
        loader = m.set_loader(args)
        loader = loader[0] if isinstance(loader, tuple) else loader
        batches, n, views = epochs(loader), 0, 1
        next(batches)  # warm-up
        start = time.perf_counter()
        for _ in range(o.batches):
            x, labels = next(batches)
            n, views = n + len(labels), len(x) if isinstance(x, (list, tuple)) else 1
        if args.device.type == 'cuda':
            torch.cuda.synchronize()
        return {'images_per_s': n / (time.perf_counter() - start), 'views': views}

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return run_in_process(script, argv, body)
    finally:
        torch.set_num_threads(threads)


# ----------------------------------------------------------------------------- report

def device_name():
    if torch.cuda.is_available():
        return torch.cuda.get_device_name()
    model = next((line.split(':', 1)[1].strip() for line in open('/proc/cpuinfo') if line.startswith('model name')),
                 'CPU') if os.path.exists('/proc/cpuinfo') else 'CPU'
    return f'{model}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads'


def median(runs, key):
    values = [r[key] for r in runs if isinstance(r, dict)]
    return statistics.median(values) if values else float('nan')


def shape(o, method):
    """model, size and frames of a method's runs."""
    video = method.startswith('video')
    return (o.video_model, o.video_size, o.frames) if video else (o.model, o.size, '-')


def report_steps(o, results):
    print(f'\n{"method":15} {"config":6} {"model":9} {"size":>4} {"frames":>6} {"batch":>5} {"images/s":>9} '
          f'{"ms/step":>8} {"data ms":>8} {"compute":>8} {"peak MiB":>9}   (images/s: clips/s for video)')
    for method, by_config in results.items():
        model, size, frames = shape(o, method)
        for config, runs in by_config.items():
            errors = [r for r in runs if isinstance(r, str)]
            if errors:
                print(f'{method:15} {config:6} {errors[0]}')
                continue
            print(f'{method:15} {config:6} {model:9} {size:>4} {frames:>6} {o.batch_size:>5} '
                  f'{median(runs, "images_per_s"):>9.1f} {median(runs, "data_ms") + median(runs, "compute_ms"):>8.1f} '
                  f'{median(runs, "data_ms"):>8.1f} {median(runs, "compute_ms"):>8.1f} {median(runs, "peak_memory") / 2**20:>9.0f}')
        if o.compare and all(isinstance(r, dict) for runs in by_config.values() for r in runs):
            ratios = [b['images_per_s'] / a['images_per_s'] for a, b in zip(by_config['plain'], by_config['ours'])]
            print(f'{method:15} ours / plain: {statistics.median(ratios):.2f}x images/s '
                  f'(per repeat: {", ".join(f"{r:.2f}" for r in ratios)})')


def main():
    o = parse_option()
    real = serve_cifar10(o.images)
    print(f'device: {device_name()}; torch {torch.__version__}')
    print(f'data: {"CIFAR-10 (real images, " + os.path.normpath(SHARED) + ")" if real else "random images (no ../shared/data/cifar10_jpeg.npz)"}')
    tmp = tempfile.mkdtemp(prefix='benchmark_')
    if o.views:
        import benchmark_views  # noqa: E402  (scripts/, beside this file)
        for _ in range(o.repeats):
            benchmark_views.report(load_cifar10('train', 1000)[0], o.batch_size,
                                   torch.device('cuda' if torch.cuda.is_available() else 'cpu'))
        return
    if o.data_only:
        print(f'\n{"method":15} {"pipeline":28} {"views":>5} {"images/s":>9}   (one worker: --num_workers 0, 1 torch thread; clips/s for video)')
        for method in o.methods:
            modes = [False, True] if METHODS[method][2] else [False]
            runs = {mode: [] for mode in modes}
            for _ in range(o.repeats):
                for mode in modes:
                    runs[mode].append(time_pipeline(o, method, mode, tmp))
            for mode, rs in runs.items():
                name = '--gpu_aug, ' + ('GPU' if torch.cuda.is_available() else 'CPU tensors') if mode else 'PIL per sample'
                errors = [r for r in rs if isinstance(r, str)]
                print(f'{method:15} {name:28} ' + (errors[0] if errors else
                      f'{median(rs, "views"):>5} {median(rs, "images_per_s"):>9.1f}'))
            if len(modes) == 2 and all(isinstance(r, dict) for rs in runs.values() for r in rs):
                ratios = [b['images_per_s'] / a['images_per_s'] for a, b in zip(runs[False], runs[True])]
                print(f'{method:15} --gpu_aug / PIL: {statistics.median(ratios):.1f}x '
                      f'(per repeat: {", ".join(f"{r:.1f}" for r in ratios)})')
        return
    configs = ['plain', 'ours'] if o.compare else ['ours']
    results = {}
    for method in o.methods:
        results[method] = {c: [] for c in configs}
        for r in range(o.repeats):
            for config in (configs if r % 2 == 0 else configs[::-1]):  # alternate who goes first
                results[method][config].append(time_steps(o, method, config, tmp))
                print(f'  {method} {config} run {r + 1}: ' + (results[method][config][-1]
                      if isinstance(results[method][config][-1], str)
                      else f'{results[method][config][-1]["images_per_s"]:.1f} images/s'), flush=True)
    report_steps(o, results)


if __name__ == '__main__':
    main()
