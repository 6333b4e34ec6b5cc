"""Check every training script on this machine's GPU in one command, and time it: one table, exit 1 on any failure.

    python scripts/gpu_check.py            # CUDA: every script x fp32 / bf16 / fp16, channels-last, device
                                           # views, --compile; ResNet-50 224-px SupCon benchmark; a CIFAR-10
                                           # SimCLR epoch with device views; NCCL + SyncBatchNorm on 2 GPUs
    python scripts/gpu_check.py --cpu      # the same rows, reduced: tiny data, width 8, fp32 and bf16, 3 steps

Each row runs a script in this process with --max_steps (scripts/benchmark.py's machinery: timed
steps, nothing written) on data made here: the built-in digits images and a few tiny videos.
Which options give a script its device views is the one table DEVICE_VIEWS.
"""
import argparse
import glob
import os
import re
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import benchmark  # noqa: E402  (scripts/: run_in_process, device_name; puts the repository on the path)

REPO = benchmark.REPO

# row -> (script, options). Image rows train on digits (built in, no download).
SCRIPTS = {
    'supcon': ('main_supcon.py', ['--method', 'SupCon']),
    'simclr': ('main_supcon.py', ['--method', 'SimCLR']),
    'supcon_jpeg_folder': ('main_supcon.py', ['--method', 'SupCon']),  # + --dataset path: JPEG files made here
    'ce': ('main_ce.py', []),
    'linear': ('main_linear.py', []),  # --ckpt added: a checkpoint written by a SupCon epoch here
    'moco_multicrop_knn': ('main_moco.py', ['--mlp', '--aug_plus', '--moco_t', '0.2', '--moco_k', '256',
                                            '--nmb_crops', '2', '2', '--size_crops', '32', '16',
                                            '--min_scale_crops', '0.2', '0.05', '--max_scale_crops', '1.0', '0.14',
                                            '--aux-weight', '0.4', '--aux-topk', '4']),
    'moco_revisiting': ('main_moco.py', ['--mlp', '--aug_plus', '--moco_t', '0.2', '--moco_k', '256',
                                         '--nmb_crops', '2', '2', '--size_crops', '32', '16',
                                         '--min_scale_crops', '0.2', '0.05', '--max_scale_crops', '1.0', '0.14',
                                         '--constrained_cropping', '--auto_augment', '0', '2', '3']),
    'sce': ('main_sce.py', ['--queue_size', '256']),
    'sce_video': ('main_sce.py', ['--queue_size', '16', '--num_frames', '2', '--batch_size', '2']),  # + --dataset video
    'simclr_video': ('main_supcon.py', ['--method', 'SimCLR', '--num_frames', '2', '--batch_size', '2']),  # rho clips
    'moco_video': ('main_moco.py', ['--mlp', '--moco_k', '16', '--num_frames', '2', '--batch_size', '2',
                                    '--bn_splits', '1']),
    'clsa': ('main_clsa.py', ['--moco_k', '256']),
}

# Options that give a script its device-side views (on CPU tensors in the --cpu check).
DEVICE_VIEWS = {
    'supcon': ['--gpu_aug'],
    'supcon_jpeg_folder': ['--gpu_aug'],  # workers read the files, nvJPEG decodes them on the GPU
    'simclr': ['--gpu_aug'],
    'moco_multicrop_knn': ['--gpu_aug'],
    'moco_revisiting': ['--gpu_aug'],  # constrained crops and AutoAugment on the device
    'clsa': ['--gpu_aug'],
    'sce': ['--gpu_aug'],
    'sce_video': ['--gpu_aug'],
    'simclr_video': ['--gpu_aug'],
    'moco_video': ['--gpu_aug'],
}

PRECISIONS = {'cuda': ['none', 'bf16', 'fp16'], 'cpu': ['none', 'bf16']}


def parse_option():
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--cpu', action='store_true', help='the reduced check on CPU (what the test suite runs)')
    p.add_argument('--rows', nargs='+', default=None, choices=sorted(SCRIPTS), help='default: all')
    p.add_argument('--steps', type=int, default=None, help='steps per run (default 6 on CUDA, 3 on CPU)')
    p.add_argument('--batch_size', type=int, default=None, help='default 128 on CUDA, 16 on CPU')
    p.add_argument('--no-benchmarks', dest='benchmarks', action='store_false',
                   help='CUDA: skip the ResNet-50 benchmark and the CIFAR-10 epoch')
    o = p.parse_args()
    o.device = 'cpu' if o.cpu else 'cuda'
    if o.device == 'cuda' and not torch.cuda.is_available():
        p.error('no CUDA device visible: run with --cpu for the reduced check')
    o.steps = o.steps or (3 if o.cpu else 6)
    o.batch_size = o.batch_size or (16 if o.cpu else 128)
    o.rows = o.rows or list(SCRIPTS)
    return o


def make_videos(root, n=8):
    """train/ of 2 classes x n/2 two-second 48 x 40 mp4s of moving colour."""
    import av
    rng = np.random.default_rng(0)
    for i in range(n):
        path = os.path.join(root, 'train', f'class{i % 2}', f'v{i}.mp4')
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with av.open(path, 'w') as container:
            stream = container.add_stream('mpeg4', rate=10)
            stream.width, stream.height, stream.pix_fmt = 48, 40, 'yuv420p'
            for k in range(20):
                pixels = np.roll(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8), k, 1)
                for packet in stream.encode(av.VideoFrame.from_ndarray(pixels, format='rgb24')):
                    container.mux(packet)
            for packet in stream.encode():
                container.mux(packet)
    return os.path.join(root, 'train')


def make_jpegs(root, n):
    """root/class{0,1}/ of n random-colour JPEGs of varied sizes (40-72 px a side)."""
    from torchvision.io import encode_jpeg, write_file
    rng = np.random.default_rng(0)
    for i in range(n):
        h, w = (int(v) for v in rng.integers(40, 73, 2))
        os.makedirs(os.path.join(root, f'class{i % 2}'), exist_ok=True)
        pixels = torch.from_numpy(rng.integers(0, 256, (3, h, w), dtype=np.uint8))
        write_file(os.path.join(root, f'class{i % 2}', f'{i}.jpg'), encode_jpeg(pixels))
    return root


def argv_of(o, row, amp, tmp, extra=()):
    """The script and its options for one row; a row's own options come last (argparse: last wins)."""
    script, options = SCRIPTS[row]
    argv = ['--save_root', tmp, '--batch_size', str(o.batch_size), '--num_workers', '0', '--print_freq', '1000000',
            '--seed', '0', '--epochs', '100', '--amp', amp]
    if row.endswith('_video'):
        argv += ['--dataset', 'video', '--data_folder', o.videos, '--model', 'r3d18', '--size', '32']
        argv += ['--width', '4'] if o.cpu else []
    elif row == 'supcon_jpeg_folder':
        argv += ['--dataset', 'path', '--data_folder', o.jpegs, '--model', 'resnet18', '--size', '32']
        argv += ['--width', '8'] if o.cpu else []
    elif row == 'linear':  # the trunk, its width and size come from the checkpoint
        argv += ['--dataset', 'digits', '--ckpt', o.ckpt]
    else:
        argv += ['--dataset', 'digits', '--model', 'resnet18', '--size', '32'] + (['--width', '8'] if o.cpu else [])
    if row not in ('ce', 'linear'):
        argv += ['--knn_freq', '0']
    argv += DEVICE_VIEWS.get(row, []) + (['--channels_last'] if o.device == 'cuda' else [])
    return script, argv + options + list(extra)


def run_row(o, row, amp, tmp, extra=()):
    script, argv = argv_of(o, row, amp, tmp, extra)
    start = time.perf_counter()
    result = benchmark.run_in_process(script, argv + ['--max_steps', str(o.steps)], lambda m: m.main())
    if result is None:
        result = 'failed: the run ended before --max_steps'
    return result, time.perf_counter() - start


def write_checkpoint(o, tmp):
    """One short SupCon epoch on digits, in float32, so main_linear has a checkpoint of ours."""
    script, argv = argv_of(o, 'supcon', 'none', tmp)
    argv = [a for a in argv if a != '--gpu_aug'] + ['--epochs', '1']
    result = benchmark.run_in_process(script, argv, lambda m: m.main())
    found = glob.glob(os.path.join(tmp, '**', 'last.pth'), recursive=True)
    if isinstance(result, str) or not found:
        return None, result or 'no last.pth written'
    return found[0], None


def table_line(name, config, result, seconds):
    if isinstance(result, dict):
        return (f'{name:20} {config:22} {sum(result["step_s"]) / len(result["step_s"]) * 1e3:>9.1f} '
                f'{result["images_per_s"]:>9.1f} {result["peak_memory"] / 2**20:>9.0f} {seconds:>6.0f}  pass'), True
    return f'{name:20} {config:22} {"":>9} {"":>9} {"":>9} {seconds:>6.0f}  FAIL {result}', False


def subprocess_row(name, cmd, pattern, timeout):
    """A command of its own (benchmarks, torchrun): pass if it succeeds; the figure its output gives."""
    start = time.perf_counter()
    try:
        proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return f'{name:44} FAIL after {timeout} s', False
    found = re.findall(pattern, proc.stdout)
    ok = proc.returncode == 0 and bool(found)
    seconds = time.perf_counter() - start
    tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ['']
    return (f'{name:44} {seconds:>6.0f} s  ' + (f'pass  {found[-1]}' if ok else f'FAIL rc {proc.returncode}: {tail[0]}'),
            ok)


def main():
    o = parse_option()
    tmp = tempfile.mkdtemp(prefix='gpu_check_')
    print(f'device: {benchmark.device_name()}; torch {torch.__version__}', flush=True)
    o.videos = make_videos(os.path.join(tmp, 'videos')) if any(r.endswith('_video') for r in o.rows) else None
    o.jpegs = make_jpegs(os.path.join(tmp, 'jpegs'), 2 * o.batch_size) if 'supcon_jpeg_folder' in o.rows else None
    lines, ok = [], True
    if 'linear' in o.rows:
        o.ckpt, error = write_checkpoint(o, os.path.join(tmp, 'ckpt'))
        if error:
            lines.append((f'{"linear":20} {"checkpoint":22} FAIL {error}', False))
    for row in o.rows:
        if row == 'linear' and not getattr(o, 'ckpt', None):
            continue
        for amp in PRECISIONS[o.device]:
            configs = [(amp, [])]
            if o.device == 'cuda' and amp == 'bf16':
                configs.append((amp + ' --compile', ['--compile']))
            for config, extra in configs:
                result, seconds = run_row(o, row, amp, tmp, extra)
                lines.append(table_line(row, config, result, seconds))
                print('  ' + lines[-1][0], flush=True)
    if o.device == 'cuda' and o.benchmarks:
        py = sys.executable
        lines.append(subprocess_row('ResNet-50 224 px SupCon, bf16+CL / fp32', [
            py, 'scripts/benchmark.py', '--methods', 'supcon', '--compare', '--model', 'resnet50', '--size', '224',
            '--batch_size', '128', '--steps', '8'], r'ours / plain: ([\d.]+x)', 300))
        lines.append(subprocess_row('CIFAR-10 SimCLR R18 epoch, device views', [
            py, 'scripts/benchmark.py', '--methods', 'simclr', '--steps', '393', '--batch_size', '128'],
            r'simclr\s+ours\s+resnet18\s+32\s+-\s+128\s+([\d.]+)', 300))
    if o.device == 'cuda' and torch.cuda.device_count() >= 2:
        script, argv = argv_of(o, 'supcon', 'bf16', tmp)
        lines.append(subprocess_row('2 processes, NCCL, SyncBatchNorm', [
            sys.executable, '-m', 'torch.distributed.run', '--nproc_per_node', '2', script, *argv, '--syncBN',
            '--max_steps', str(o.steps)], r'timing: (.*)', 300))
    print(f'\n{"row":20} {"precision":22} {"ms/step":>9} {"images/s":>9} {"peak MiB":>9} {"s":>6}  result')
    for line, passed in lines:
        print(line)
        ok &= passed
    if o.device == 'cuda' and lines and 'CIFAR-10' in ' '.join(line for line, _ in lines):
        print('(CIFAR-10 epoch: 50,000 / the images/s above = seconds per epoch)')
    print('all passed' if ok else 'FAILED', flush=True)
    sys.exit(0 if ok else 1)


if __name__ == '__main__':
    main()
