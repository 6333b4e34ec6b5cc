"""Seeded numbers every training script must keep: a restructuring changes none of them.

Each case trains a few CPU steps on tiny data (seed 0, no workers) and records the printed
per-step losses and two sums of the final weights (float64, a fingerprint of every step). The
values were recorded before the consolidation of schedules, optimisers, monitors and checkpoints;
a deliberate change of numbers (a fidelity fix) re-records them with

    python tests/test_numbers.py            # prints the table below for the current code

and says so in its commit. CPU kernels round differently with the instruction set (AVX-512
machines give other last digits, which a few chaotic cases amplify): every case runs with the
AVX2 kernels of ATen, oneDNN and MKL, so any x86-64 machine with AVX2 reproduces the table."""
import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from conftest import check_ok, load, make_image_folder, only_file, run_script  # noqa: E402

TINY = ['--model', 'resnet18', '--width', '8', '--size', '32', '--num_workers', '0', '--print_freq', '1',
        '--seed', '0']
OFF = ['--knn_freq', '0']  # pretraining scripts: no kNN monitor
PATH = ['--dataset', 'path', '--data_folder', '{train}', '--test_folder', '{test}']
VIDEO = ['--dataset', 'video', '--data_folder', '{videos}/train', '--test_folder', '{videos}/test', '--model', 'r3d18',
         '--width', '4', '--size', '32', '--num_frames', '2', '--num_workers', '0', '--print_freq', '1', '--seed', '0',
         '--knn_freq', '0']

SAME_KERNELS = {'ATEN_CPU_CAPABILITY': 'avx2', 'ONEDNN_MAX_CPU_ISA': 'AVX2', 'MKL_CBWR': 'AVX2'}

# name: (script, options); {train}, {test}, {videos}, {ckpt} are filled in by the test
CASES = {
    'supcon': ('main_supcon.py', PATH + TINY + OFF + ['--batch_size', '8', '--epochs', '2', '--cosine', '--warm',
                                               '--learning_rate', '0.1']),
    'simclr': ('main_supcon.py', PATH + TINY + OFF + ['--batch_size', '8', '--epochs', '2', '--method', 'SimCLR',
                                               '--temp', '0.5', '--lr_decay_epochs', '1']),
    'ce': ('main_ce.py', PATH + TINY + ['--batch_size', '8', '--epochs', '2', '--cosine', '--learning_rate', '0.1']),
    'linear': ('main_linear.py', PATH + ['--ckpt', '{ckpt}', '--num_workers', '0', '--print_freq', '1', '--seed', '0',
                                         '--batch_size', '8', '--epochs', '2', '--lr_decay_epochs', '1',
                                         '--learning_rate', '1']),
    'linear_clsa': ('main_linear.py', PATH + ['--ckpt', '{ckpt}', '--num_workers', '0', '--print_freq', '1',
                                              '--seed', '0', '--batch_size', '8', '--epochs', '2', '--protocol', 'clsa']),
    'moco': ('main_moco.py', PATH + TINY + OFF + ['--batch_size', '8', '--epochs', '2', '--mlp', '--aug_plus', '--cos',
                                           '--moco_k', '32', '--moco_t', '0.2']),
    'moco_multicrop_knn': ('main_moco.py', PATH + TINY + OFF + [
        '--batch_size', '8', '--epochs', '2', '--mlp', '--moco_k', '32', '--moco_t', '0.2', '--moco_m', '0.99',
        '--nmb_crops', '2', '2', '--size_crops', '32', '16', '--min_scale_crops', '0.2', '0.05',
        '--max_scale_crops', '1.0', '0.14', '--constrained_cropping', '--auto_augment', '0', '2',
        '--aux_topk', '4', '--aux_weight', '0.4']),
    # shuffle-BN over 4 sub-batches of the momentum encoder's BatchNorm (trunk and projector) only, as released
    # (re-recorded for issue 13; before, the online encoder's was split too)
    'sce_cifar': ('main_sce.py', PATH + TINY + OFF + ['--recipe', 'cifar', '--batch_size', '8', '--epochs', '2',
                                                     '--queue_size', '32', '--warmup_epochs', '1', '--bn_splits', '4']),
    'sce_imagenet_lars': ('main_sce.py', PATH + TINY + OFF + [
        '--recipe', 'imagenet', '--batch_size', '8', '--epochs', '2', '--queue_size', '32', '--warmup_epochs', '1',
        '--proj_hidden', '32', '--proj_dim', '16', '--pred_hidden', '32', '--nmb_crops', '2', '1',
        '--size_crops', '32', '16', '--min_scale_crops', '0.2', '0.1', '--max_scale_crops', '1.0', '0.5']),
    'clsa': ('main_clsa.py', PATH + TINY + OFF + ['--batch_size', '8', '--epochs', '2', '--moco_k', '32',
                                           '--nmb_crops', '1', '1', '--size_crops', '32', '16',
                                           '--min_scale_crops', '0.2', '0.086', '--max_scale_crops', '1.0', '0.429',
                                           '--pick_strong', '1', '--pick_weak', '0', '--sym', '1']),
    'sce_video': ('main_sce.py', VIDEO + ['--batch_size', '6', '--epochs', '2', '--queue_size', '24',
                                          '--warmup_epochs', '1']),
}

# recorded before the consolidation: (per-step losses as printed, sum of weights, sum of |weights|)
EXPECTED = {
    'supcon': ([2.782, 2.975, 2.725, 2.727, 2.72, 2.707], 1074.8042752619156, 11808.681194528623),
    'simclr': ([19.477, 19.412, 19.05, 19.192, 19.594, 19.405], 1091.6875252793666, 11842.365234605462),
    'ce': ([1.315, 1.097, 1.307, 0.858, 0.891, 0.8], 1089.6575405550388, 11045.796051512294),
    'linear': ([1.171, 1.493, 17.273, 42.955, 23.557, 17.688], 1094.486597425236, 11101.760976510477),
    # re-recorded when CLSA's linear cosine started at the full rate (its first epoch had run at 5.005)
    'linear_clsa': ([1.115, 40.637, 212.257, 713.686, 367.682, 300.919], 1094.3392606530585, 12721.034365783335),
    'moco': ([0.254, 2.234, 2.835, 3.234, 3.492, 3.481], 1075.1972450979488, 11804.512197871625),
    'moco_multicrop_knn': ([1.684, 3.084, 3.956, 4.494, 4.846, 4.861], 1025.7489427438013, 11819.352025262204),
    # sce_*: re-recorded for the fidelity fixes of issue 13 (crops one by one through BatchNorm, shuffle-BN splits
    # only the momentum encoder, predictor's last Linear without bias)
    'sce_cifar': ([2.653, 2.592, 3.251, 3.083, 3.581, 3.695], 1895.1659606050491, 15407.374023185723),
    'sce_imagenet_lars': ([5.395, 5.792, 6.471, 5.831, 6.56, 6.266], 1158.8941932853427, 11601.177136119593),
    # re-recorded when --sym enqueued the first weak crop's keys, as released (before: the key crop's)
    'clsa': ([8.779, 11.291, 12.787, 13.895, 14.752, 14.735], 1020.1202601648415, 11861.661602712606),
    'sce_video': ([3.37, 3.344], 5876.692425212111, 46122.126121001755),
}


def make_data(root):
    """Tiny image folders, videos and a SupCon checkpoint (for the linear cases) under root."""
    from test_video import make_video
    train = make_image_folder(root / 'train', 3, 8, seed=3)
    test = make_image_folder(root / 'test', 3, 4, seed=4)
    for split, n in (('train', 3), ('test', 2)):
        for c in range(2):
            for i in range(n):
                make_video(root / 'videos' / split / f'class{c}' / f'v{i}.mp4', frames=20, fps=10, size=(40, 32))
    check_ok(run_script('main_supcon.py', '--dataset', 'path', '--data_folder', train, '--batch_size', '8',
                        '--epochs', '1', *TINY, *OFF, cwd=root / 'pretrain', env=SAME_KERNELS))
    return dict(train=train, test=test, videos=str(root / 'videos'), ckpt=only_file(root / 'pretrain' / 'save'))


def measure(name, data, root):
    from conftest import step_losses
    script, options = CASES[name]
    cwd = root / name
    proc = check_ok(run_script(script, *[o.format(**data) for o in options], cwd=cwd, env=SAME_KERNELS))
    weights = [v.double() for v in load(only_file(cwd / 'save'))['model'].values() if v.is_floating_point()]
    return step_losses(proc.stdout), sum(w.sum().item() for w in weights), sum(w.abs().sum().item() for w in weights)


@pytest.fixture(scope='module')
def data(tmp_path_factory):
    return make_data(tmp_path_factory.mktemp('numbers'))


@pytest.mark.parametrize('name', sorted(CASES))
def test_seeded_numbers_are_unchanged(name, data, tmp_path):
    losses, total, magnitude = measure(name, data, tmp_path)
    want_losses, want_total, want_magnitude = EXPECTED[name]
    assert losses == pytest.approx(want_losses, abs=2e-3)
    assert magnitude == pytest.approx(want_magnitude, rel=1e-5)
    assert total == pytest.approx(want_total, rel=1e-4, abs=1e-3)


if __name__ == '__main__':
    import pathlib
    import tempfile
    with tempfile.TemporaryDirectory() as tmp:
        root = pathlib.Path(tmp)
        found = make_data(root)
        print('EXPECTED = {')
        for case in CASES:
            print(f'    {case!r}: {measure(case, found, root)!r},', flush=True)
        print('}')
