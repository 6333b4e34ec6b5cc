"""scripts/benchmark_learning.py end to end on a generated stand-in for the CIFAR-10 npz: the
subset written once, each method's run and probe, the table and the figure."""
import io
import os
import re

import numpy as np
from PIL import Image

from conftest import check_ok, run_script

CLASSES = [f'class{c}' for c in range(10)]


def fake_cifar10_npz(path, per_class):
    """The npz's layout (JPEG bytes, offsets, labels, names per split) with random 32x32 images."""
    rng = np.random.default_rng(0)
    arrays = {'classes': np.array(CLASSES)}
    for split, n in per_class.items():
        blobs, labels = [], []
        for i in range(n * 10):
            buffer = io.BytesIO()
            Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(buffer, 'JPEG')
            blobs.append(np.frombuffer(buffer.getvalue(), np.uint8))
            labels.append(i % 10)
        arrays[f'{split}_bytes'] = np.concatenate(blobs)
        arrays[f'{split}_offsets'] = np.cumsum([0] + [len(b) for b in blobs])
        arrays[f'{split}_labels'] = np.array(labels)
        arrays[f'{split}_names'] = np.array([f'{i}.jpg' for i in range(len(blobs))])
    np.savez(path, **arrays)


def test_two_methods_make_the_table_and_the_figure(tmp_path):
    npz = tmp_path / 'cifar10.npz'
    fake_cifar10_npz(npz, {'train': 12, 'test': 4})
    out = tmp_path / 'out'
    # width 8, not 4: torch 2.14.1's oneDNN convolution backward, channels-last (the benchmark's), crashes at
    # width 4 on CPUs without AVX-512 (a segfault in backward; fine with torch.backends.mkldnn off)
    argv = ['--npz', npz, '--methods', 'ce', 'simclr', '--epochs', '2', '--width', '8', '--train_per_class', '8',
            '--test_per_class', '3', '--linear_epochs', '1', '--workers', '0', '--amp', 'none', '--out', out]
    proc = check_ok(run_script('scripts/benchmark_learning.py', *argv, cwd=tmp_path, timeout=600))
    for split, n in (('train', 8), ('test', 3)):
        assert sorted(os.listdir(out / 'data' / split)) == CLASSES
        assert all(len(os.listdir(out / 'data' / split / c)) == n for c in CLASSES)
    table = open(out / 'results.md').read()
    rows = re.findall(r'^\| (ce|simclr) \| ([\d.]+) \| ([\d.]+) \| ([-+][\d.]+) \| ([\d.]+) \|', table, re.M)
    assert [r[0] for r in rows] == ['ce', 'simclr'], table
    for _, before, after, gain, linear in rows:
        assert abs(float(after) - float(before) - float(gain)) < 0.011
        assert 0 <= float(linear) <= 100
    assert 'main_ce.py --dataset path' in table and '--knn_freq 1' in table
    assert (out / 'knn_curves.png').stat().st_size > 1000
    assert table.strip() in proc.stdout
    # a second run reuses the subset
    written = os.path.getmtime(out / 'data' / 'subset.txt')
    check_ok(run_script('scripts/benchmark_learning.py', *argv[:3], 'ce', *argv[5:], cwd=tmp_path, timeout=600))
    assert os.path.getmtime(out / 'data' / 'subset.txt') == written
