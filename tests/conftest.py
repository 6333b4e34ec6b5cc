"""Shared helpers: run a script in a subprocess inside a temporary folder (so ./save lands there),
tiny ImageFolder data sets of random PNGs, tiny videos, and a small pretrained checkpoint shared
by the tests."""
import os
import re
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

# Small trunk, no workers, quiet: every run of the suite uses these unless a test says otherwise.
SMALL = ['--model', 'resnet18', '--width', '8', '--size', '32', '--num_workers', '0',
         '--print_freq', '1000', '--seed', '0']


def run_script(script, *args, cwd, env=None, torchrun=False, nproc=2, timeout=300):
    """Run `python script args...` (or `python -m torch.distributed.run --nproc_per_node N script`)
    with cwd as working directory; returns the CompletedProcess (text stdout/stderr)."""
    full_env = dict(os.environ)
    full_env.update(OMP_NUM_THREADS='1', CUDA_VISIBLE_DEVICES='')
    for key in ('RANK', 'WORLD_SIZE', 'LOCAL_RANK', 'MASTER_ADDR', 'MASTER_PORT', 'SLURM_STEP_NUM_TASKS'):
        full_env.pop(key, None)
    full_env.update(env or {})
    os.makedirs(cwd, exist_ok=True)
    cmd = [sys.executable]
    if torchrun:
        cmd += ['-m', 'torch.distributed.run', '--nproc_per_node', str(nproc), '--master_port', str(free_port())]
    cmd += [os.path.join(REPO, script), *[str(a) for a in args]]
    return subprocess.run(cmd, cwd=cwd, env=full_env, capture_output=True, text=True, timeout=timeout)


def run_ranks(script, *args, cwd, nproc=2, timeout=300):
    """Start nproc processes of `python script args...` with the environment torchrun gives its
    workers (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT), so that each worker's own
    exit status and stderr can be checked; returns their CompletedProcess, rank order."""
    os.makedirs(cwd, exist_ok=True)
    port = str(free_port())
    procs = []
    for rank in range(nproc):
        env = dict(os.environ, OMP_NUM_THREADS='1', CUDA_VISIBLE_DEVICES='', RANK=str(rank), LOCAL_RANK=str(rank),
                   WORLD_SIZE=str(nproc), MASTER_ADDR='127.0.0.1', MASTER_PORT=port)
        cmd = [sys.executable, os.path.join(REPO, script), *[str(a) for a in args]]
        procs.append(subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                      text=True))
    done = []
    try:
        for p in procs:
            out, err = p.communicate(timeout=timeout)
            done.append(subprocess.CompletedProcess(p.args, p.returncode, out, err))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    return done


def free_port():
    import socket
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def check_ok(proc):
    """Assert a run succeeded, showing its output otherwise."""
    assert proc.returncode == 0, f'exit {proc.returncode}\nSTDOUT:\n{proc.stdout[-3000:]}\nSTDERR:\n{proc.stderr[-5000:]}'
    return proc


def step_losses(stdout):
    """The per-step loss values of `Train: [e][i/n] ... loss X.XXX (avg)` lines, in order."""
    return [float(m) for m in re.findall(r'^Train: .*?\tloss ([-\d.naif]+) \(', stdout, flags=re.M)]


def assert_user_error(proc, cwd, *needles):
    """Exit 2, exactly one stderr line 'error: ...' containing every needle, no traceback, no .pth."""
    assert proc.returncode == 2, f'exit {proc.returncode}\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}'
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith('error: '), proc.stderr
    assert 'Traceback' not in proc.stderr + proc.stdout
    for needle in needles:
        assert str(needle) in lines[0], f'{needle!r} not in {lines[0]!r}'
    written = [p for p in (cwd / 'save').rglob('*')] if (cwd / 'save').exists() else []
    assert not [p for p in written if p.is_file() and '.pth' in p.name], written
    return lines[0]


def load(path):
    return torch.load(path, map_location='cpu', weights_only=True)


def only_file(folder, name='last.pth'):
    """The one file `name` below folder (asserting there is exactly one)."""
    found = [os.path.join(d, name) for d, _, files in os.walk(folder) if name in files]
    assert len(found) == 1, f'expected one {name} below {folder}, found {found}'
    return found[0]


def make_image_folder(root, classes=3, per_class=4, size=40, seed=0):
    """root/class_k/img_i.png with random RGB noise; returns root as str."""
    rng = np.random.default_rng(seed)
    for c in range(classes):
        os.makedirs(os.path.join(root, f'class_{c}'), exist_ok=True)
        for i in range(per_class):
            pixels = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
            pixels[..., c % 3] //= 4  # a little class signal
            Image.fromarray(pixels).save(os.path.join(root, f'class_{c}', f'img_{i}.png'))
    return str(root)


@pytest.fixture
def tiny_folders(tmp_path):
    """(train, test) ImageFolders of 3 classes: 4 and 2 random 40x40 PNGs per class."""
    return (make_image_folder(tmp_path / 'data' / 'train', 3, 4, seed=1),
            make_image_folder(tmp_path / 'data' / 'test', 3, 2, seed=2))


@pytest.fixture(scope='session')
def shared_data(tmp_path_factory):
    """Session-wide (train, test) ImageFolders: 3 classes of 8 and 4 random 40x40 PNGs."""
    root = tmp_path_factory.mktemp('shared_data')
    return (make_image_folder(root / 'train', 3, 8, seed=3), make_image_folder(root / 'test', 3, 4, seed=4))


@pytest.fixture(scope='session')
def tiny_ckpt(tmp_path_factory, shared_data):
    """A real SupCon checkpoint (resnet18, width 8, size 32), one epoch on the shared tiny data."""
    cwd = tmp_path_factory.mktemp('tiny_ckpt')
    check_ok(run_script('main_supcon.py', '--dataset', 'path', '--data_folder', shared_data[0],
                        '--batch_size', '8', '--epochs', '1', '--knn_freq', '0', *SMALL, cwd=cwd))
    return only_file(cwd / 'save')


@pytest.fixture(scope='module')
def videos(tmp_path_factory):
    """train/ (2 classes x 3 videos) and test/ (2 x 2) of 2-s, 40x32 mp4s; (root, train, test)."""
    from test_video import make_video
    root = tmp_path_factory.mktemp('videos')
    for split, n in (('train', 3), ('test', 2)):
        for c in range(2):
            for i in range(n):
                make_video(root / split / f'class{c}' / f'v{i}.mp4', frames=20, fps=10, size=(40, 32))
    return root, str(root / 'train'), str(root / 'test')
