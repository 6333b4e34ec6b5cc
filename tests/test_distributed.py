"""Two CPU processes (gloo) against one: the same global batches, the same losses, the same weights.

Data sharding gives each step's per-rank batches whose union is the single-process batch, and every
sample's augmentation is drawn from its own seed, so a 2-process run repeats the 1-process run up to
float rounding. The data set is tiny (64 images, batch 32: two steps), as training is chaotic."""
import argparse
import os
import re
import shutil
import subprocess
import sys

import pytest
import torch

import distributed
import options
from conftest import REPO, check_ok, free_port, load, make_image_folder, only_file, run_ranks, run_script, step_losses

TRUNK = ['--model', 'resnet18', '--width', '8', '--size', '32', '--num_workers', '0', '--seed', '0']

# Weights after two SGD steps agree to float32 rounding only. The SupCon gradient itself is badly
# conditioned in float32 (measured against float64: ~3e-3 relative error with either BN), and the
# two runs reduce in different orders (all_reduce of BN sums and gradients), so after two steps
# parameters differ by up to ~2.5e-5 (measured). The smallest per-step update of any parameter
# tensor is ~5e-4 (lr 0.05 x momentum buffer), so 1e-4 is tight enough to catch a wrong gradient
# scale, a missing sync of BN statistics or a different batch, and loose enough for rounding.
ATOL = 1e-4


@pytest.fixture(scope='module')
def data64(tmp_path_factory):
    root = tmp_path_factory.mktemp('data64')
    train = make_image_folder(root / 'train', 4, 16, seed=5)
    test = make_image_folder(root / 'test', 4, 2, seed=6)
    shutil.copy(root / 'train' / 'class_0' / 'img_0.png', root / 'test' / 'class_0' / 'extra.png')  # 9: uneven shards
    return train, test


def assert_close_models(a, b, atol=ATOL):
    assert a.keys() == b.keys()
    for k in a:
        if a[k].is_floating_point():
            assert torch.allclose(a[k], b[k], rtol=0, atol=atol), f'{k}: max diff {(a[k] - b[k]).abs().max():.3g}'
        else:
            assert torch.equal(a[k], b[k]), k


def knn_lines(stdout):
    return re.findall(r'^epoch \d+, kNN accuracy [\d.]+$', stdout, re.M)


def test_supcon_two_processes_match_one(data64, tmp_path):
    train, test = data64
    flags = ['--dataset', 'path', '--data_folder', train, '--test_folder', test, '--knn_freq', '1',
             '--syncBN', '--print_freq', '1', '--epochs', '1', '--batch_size', '32', *TRUNK]
    one = check_ok(run_script('main_supcon.py', *flags, cwd=tmp_path / 'one'))
    two = check_ok(run_script('main_supcon.py', *flags, cwd=tmp_path / 'two', torchrun=True))
    assert 'note: --syncBN has no effect with a single process' in one.stdout
    note = 'note: --dataset path without --mean/--std'
    assert two.stdout.count(note) == one.stdout.count(note) > 0  # notes come from rank 0 only

    losses_one, losses_two = step_losses(one.stdout), step_losses(two.stdout)
    assert len(losses_one) == 2, one.stdout
    assert len(losses_two) == 2, two.stdout  # printed once per step (rank 0), the global loss
    assert losses_two == pytest.approx(losses_one, abs=2e-3)

    a, b = load(only_file(tmp_path / 'one' / 'save')), load(only_file(tmp_path / 'two' / 'save'))
    assert b['args']['world_size'] == 2 and a['args']['world_size'] == 1
    assert len(b['rng']) == 2  # each rank's RNG state
    assert_close_models(a['model'], b['model'])
    # kNN monitor: features of uneven shards (9 test images) gathered back in order
    assert len(knn_lines(one.stdout)) == 2
    assert knn_lines(two.stdout) == knn_lines(one.stdout)


def test_batch_not_divisible_by_processes(tmp_path):
    args = ['main_supcon.py', '--dataset', 'digits', '--batch_size', '33', '--epochs', '1', *TRUNK]
    workers = run_ranks(*args, cwd=tmp_path)
    for w in workers:
        assert w.returncode == 2, w.stderr
        lines = w.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith('error: '), w.stderr
        assert '--batch_size 33' in lines[0] and '2 processes' in lines[0]
    assert not list(tmp_path.rglob('*.pth'))
    # through torchrun, which reports its workers' exit status itself
    proc = run_script(*args, cwd=tmp_path, torchrun=True)
    assert proc.returncode != 0
    assert 'error: --batch_size 33 is not divisible by the 2 processes' in proc.stderr
    assert re.search(r'exitcode\s*:\s*2\b', proc.stderr), proc.stderr[-2000:]
    assert not list(tmp_path.rglob('*.pth'))


def val_lines(stdout):
    return re.findall(r'val acc [\d.]+ \(top-5 [\d.]+\)', stdout)


def train_lines(stdout):
    return [(float(l), float(a)) for l, a in re.findall(r'^epoch \d+, .* loss ([\d.]+), train acc ([\d.]+)', stdout, re.M)]


def assert_same_global_logs(one, two):
    """Per-step losses and the epoch's loss and train accuracy are the global batch's."""
    losses_one, losses_two = step_losses(one.stdout), step_losses(two.stdout)
    assert len(losses_one) == 2 and len(losses_two) == 2, two.stdout
    assert losses_two == pytest.approx(losses_one, abs=2e-3)
    (l1, a1), = train_lines(one.stdout)
    (l2, a2), = train_lines(two.stdout)
    assert l2 == pytest.approx(l1, abs=2e-3) and a2 == a1


def test_ce_two_processes_match_one(data64, tmp_path):
    train, test = data64
    flags = ['--dataset', 'path', '--data_folder', train, '--test_folder', test, '--syncBN', '--epochs', '1',
             '--batch_size', '32', '--batch_size_val', '4', '--print_freq', '1', '--cosine', *TRUNK]
    one = check_ok(run_script('main_ce.py', *flags, cwd=tmp_path / 'one'))
    two = check_ok(run_script('main_ce.py', *flags, cwd=tmp_path / 'two', torchrun=True))
    assert 'best accuracy' in two.stdout
    assert_same_global_logs(one, two)
    assert_close_models(load(only_file(tmp_path / 'one' / 'save'))['model'],
                        load(only_file(tmp_path / 'two' / 'save'))['model'])
    assert val_lines(one.stdout) and val_lines(two.stdout) == val_lines(one.stdout)  # evaluation summed over ranks


def test_linear_two_processes_match_one(data64, tiny_ckpt, tmp_path):
    train, test = data64
    flags = ['--ckpt', tiny_ckpt, '--dataset', 'path', '--data_folder', train, '--test_folder', test,
             '--epochs', '1', '--batch_size', '32', '--batch_size_val', '4', '--print_freq', '1',
             '--num_workers', '0', '--seed', '0']
    one = check_ok(run_script('main_linear.py', *flags, cwd=tmp_path / 'one'))
    two = check_ok(run_script('main_linear.py', *flags, cwd=tmp_path / 'two', torchrun=True))
    assert re.search(r'^best accuracy: [\d.]+ \(top-5 [\d.]+\)$', two.stdout, re.M), two.stdout
    assert_same_global_logs(one, two)
    a, b = load(only_file(tmp_path / 'one' / 'save')), load(only_file(tmp_path / 'two' / 'save'))
    assert_close_models(a['model'], b['model'], atol=1e-5)  # a linear classifier on frozen features
    assert a['best_acc'] == pytest.approx(b['best_acc'], abs=1e-4)
    assert val_lines(two.stdout) == val_lines(one.stdout)


# ----------------------------------------------------------------------------- MoCo's and CLSA's launcher flags

@pytest.mark.parametrize('mp, given, nodes, relaunched, batch', [
    (False, set(), 1, False, 256),  # plain python, torchrun or srun: --batch_size is global
    (True, set(), 1, False, 256),  # --multiprocessing_distributed on one node
    (True, {'nodes'}, 2, False, 512),  # ... on two: 256 per node
    (False, {'nodes'}, 2, False, 512),  # --world_size 2 under torchrun/srun
    (False, set(), 1, True, 256),  # a process --multiprocessing_distributed relaunched (CLSA's default)
])
def test_launcher_flags_make_batch_size_per_node(monkeypatch, mp, given, nodes, relaunched, batch):
    monkeypatch.delenv(options.RELAUNCHED_ENV, raising=False)
    if relaunched:
        monkeypatch.setenv(options.RELAUNCHED_ENV, '1')
    args = argparse.Namespace(batch_size=256, nodes=nodes, multiprocessing_distributed=mp)
    options.per_node_batch(args, given)
    assert args.batch_size == batch and args.per_node == bool(mp or given or relaunched)


@pytest.mark.parametrize('local_world_size, workers', [('8', 4), (None, 4)])  # torchrun's, or srun's tasks / nodes
def test_launcher_flags_divide_workers_over_the_node(monkeypatch, capsys, local_world_size, workers):
    monkeypatch.delenv('LOCAL_WORLD_SIZE', raising=False)
    if local_world_size:
        monkeypatch.setenv('LOCAL_WORLD_SIZE', local_world_size)
    args = argparse.Namespace(batch_size=512, nodes=2, num_workers=32, rank=0)
    distributed.divide_workers(args, 16)
    assert args.num_workers == workers  # MoCo's (32 + 8 - 1) // 8
    assert 'global batch 512 = 2 node(s) x 8 process(es) x 32' in capsys.readouterr().out


def test_two_nodes_train_the_global_batch_of_the_released_command(data64, tmp_path):
    """Two 'nodes' of one CPU process each (torchrun --nnodes 2), as MoCo's launcher flags say:
    --batch-size 16 --world-size 2 trains a global batch of 32 (16 per process), 2 steps of 64 images."""
    train, _ = data64
    port, procs = str(free_port()), []
    for node in range(2):
        env = dict(os.environ, OMP_NUM_THREADS='1', CUDA_VISIBLE_DEVICES='')
        for key in ('RANK', 'WORLD_SIZE', 'LOCAL_RANK', 'LOCAL_WORLD_SIZE', options.RELAUNCHED_ENV):
            env.pop(key, None)
        cmd = [sys.executable, '-m', 'torch.distributed.run', '--nnodes', '2', '--node_rank', str(node),
               '--nproc_per_node', '1', '--master_addr', '127.0.0.1', '--master_port', port,
               os.path.join(REPO, 'main_moco.py'), '--dataset', 'path', '--data_folder', train, '--mlp',
               '--batch-size', '16', '--world-size', '2', '--rank', str(node), '--moco-k', '128', '--epochs', '1',
               '--knn_freq', '0', '--print_freq', '1', *TRUNK]
        os.makedirs(tmp_path / f'node{node}')
        procs.append(subprocess.Popen(cmd, cwd=tmp_path / f'node{node}', env=env, stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True))
    out = [p.communicate(timeout=300) for p in procs]
    for p, (stdout, stderr) in zip(procs, out):
        assert p.returncode == 0, stderr[-3000:]
    assert 'global batch 32 = 2 node(s) x 1 process(es) x 16' in out[0][0]
    assert len(step_losses(out[0][0])) == 2, out[0][0]  # 64 images in batches of 32
    ckpt = load(only_file(tmp_path / 'node0' / 'save'))
    assert ckpt['args']['batch_size'] == 32 and ckpt['args']['world_size'] == 2
    assert int(ckpt['queue']['ptr']) == 2 * 32


@pytest.mark.parametrize('env, gpus, gpu, wanted', [
    ({}, 4, None, True),  # plain python with four visible GPUs: all four
    ({}, 1, None, False), ({}, 0, None, False),
    ({}, 4, 0, False),  # --gpu picks one
    ({'RANK': '0', 'WORLD_SIZE': '4'}, 4, None, False),  # already under torchrun
    ({'SLURM_STEP_NUM_TASKS': '4'}, 4, None, False),  # srun started one task per GPU
    ({'SLURM_STEP_NUM_TASKS': '1'}, 4, None, True),  # one SLURM task holding four GPUs
])
def test_a_plain_run_uses_every_visible_gpu(env, gpus, gpu, wanted):
    assert distributed.wants_every_gpu(argparse.Namespace(gpu=gpu), env, gpus) is wanted


def test_the_relaunch_keeps_the_command_and_the_global_batch(monkeypatch, capsys):
    ran = []

    def execv(path, cmd):
        ran.append(cmd)
        raise SystemExit(0)
    monkeypatch.setattr(torch.cuda, 'device_count', lambda: 2)
    monkeypatch.setattr(os, 'execv', execv)
    monkeypatch.setattr(sys, 'argv', ['main_supcon.py', '--batch_size', '256'])
    for key in ('RANK', 'WORLD_SIZE', 'SLURM_STEP_NUM_TASKS'):
        monkeypatch.delenv(key, raising=False)
    with pytest.raises(SystemExit):
        distributed.init_distributed(argparse.Namespace(gpu=None, batch_size=256, syncBN=False))
    assert ran == [[sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node=2',
                    'main_supcon.py', '--batch_size', '256']]
    assert 'one process per GPU' in capsys.readouterr().out
