"""main_moco.py end to end: MoCo v2 and the Revisiting-contrastive options (multi-crop, constrained
cropping, AutoAugment, kNN loss) on tiny data; the checkpoint's queue(s) hold the momentum encoder's
keys of the right images; MoCo's schedule; exact resume; shuffle-BN across two processes; user errors."""
import math
import os
import re
import shutil
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

import distributed
import main_moco
import util
from conftest import SMALL, assert_user_error, check_ok, load, only_file, run_ranks, run_script
from networks.momentum import SplitBatchNorm

MOCO_V2 = ['--mlp', '--moco_t', '0.2', '--aug_plus', '--cos']
E2E_RUN = 'MoCo_path_resnet18_lr_0.03_decay_0.0001_bsz_8_t_0.2_m_0.999_k_32_trial_0_mlp_augplus_cosine_width_8'
# Revisiting-Contrastive-SSL's "ours" command in its released spelling, shrunk: crops 160/96 -> 32/16, batch 256 -> 8,
# topk 20 -> 4, queue 65536 -> 32. The positional folder is MoCo's (ImageNet layout: DATA/train/).
OURS = ['-a', 'resnet18', '--lr', '0.3', '--batch-size', '8', '--mlp', '--moco-t', '0.2', '--cos', '--moco-m', '0.995',
        '--size_crops', '32', '16', '--min_scale_crops', '0.2', '0.05', '--max_scale_crops', '1.0', '0.14',
        '--num_crops', '2', '4', '--constrained-cropping', '--auto-augment', '0', '2', '3', '4', '5',
        '--aux-topk', '4', '--aux-weight', '0.4', '--moco-k', '32']
ATOL = 1e-5  # keys recomputed here against keys computed inside a run: same ops, float rounding at most


def parse(argv, monkeypatch):
    monkeypatch.setattr(sys, 'argv', ['main_moco.py', *map(str, argv)])
    return main_moco.parse_option()


def replay_args(argv, monkeypatch, rank=0, world=1):
    """The options of a run of `argv`, as rank `rank` of `world` processes on the CPU sees them."""
    # several processes shuffle keys across them: no single-process BatchNorm split
    args = parse([*argv, *(['--bn_splits', '1'] if world > 1 else [])], monkeypatch)
    args.rank, args.world_size, args.device = rank, world, torch.device('cpu')
    args.data_seed = args.seed  # what distributed.start gives a seeded run
    return args


def key_batches(argv, monkeypatch, epoch=1, rank=0, world=1):
    """The key crops (view 1) of every step of `epoch` that rank `rank` of a run of `argv` loaded:
    every sample's augmentation is drawn from its own seed, so the batches can be loaded again."""
    args = replay_args(argv, monkeypatch, rank, world)
    loader, _ = main_moco.set_loader(args)
    loader.sampler.set_epoch(epoch)
    return [crops[1] for crops, _ in loader]


def momentum_encoder(argv, monkeypatch, state, bn_splits=None):
    """The momentum encoder of a single-process run of `argv`, with a checkpoint's weights, in
    training mode (BN on batch statistics, as when it computes keys)."""
    args = replay_args([*argv, *(['--bn_splits', str(bn_splits)] if bn_splits is not None else [])], monkeypatch)
    _, momentum, _, _ = main_moco.set_model(args)
    momentum.load_state_dict(state)
    return momentum.train()


def run_main(argv, cwd, monkeypatch, capsys):
    """main_moco.py's main() in this process, in cwd, as its __main__ runs it (util.run); returns what
    a process would (exit status, stdout, stderr)."""
    monkeypatch.chdir(cwd)
    monkeypatch.setattr(sys, 'argv', ['main_moco.py', *map(str, argv)])
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_:
        util.run(main_moco.main)
    out = capsys.readouterr()
    return subprocess.CompletedProcess(argv, exit_.value.code, out.out, out.err)


def assert_unit_rows(t):
    assert torch.allclose(t.norm(dim=1), torch.ones(t.shape[0]), atol=1e-5)


# ----------------------------------------------------------------------------- MoCo v2 end to end

@pytest.fixture(scope='module')
def moco_v2(tmp_path_factory, shared_data):
    """MoCo v2 (its README flags: --mlp --moco_t 0.2 --aug_plus --cos) for 2 epochs on the shared
    tiny data: 24 images, batch 8, so 3 steps per epoch, queue of 32 keys; kNN monitor every epoch."""
    train, test = shared_data
    cwd = tmp_path_factory.mktemp('moco_v2')
    proc = check_ok(run_script('main_moco.py', '--dataset', 'path', '--data_folder', train, '--test_folder', test,
                               *MOCO_V2, '--batch_size', '8', '--moco_k', '32', '--epochs', '2', '--knn_freq', '1',
                               *SMALL, cwd=cwd))
    return cwd, proc, cwd / 'save' / 'MoCo' / 'path_models' / E2E_RUN / 'last.pth'


def test_moco_v2_checkpoint(moco_v2):
    cwd, proc, last = moco_v2
    assert only_file(cwd / 'save') == str(last)
    ckpt = torch.load(last, map_location='cpu', weights_only=True)
    assert {'method', 'args', 'epoch', 'model', 'optimizer', 'scaler', 'rng', 'momentum_encoder', 'queue'} <= ckpt.keys()
    assert ckpt['method'] == 'MoCo' and ckpt['epoch'] == 2
    assert 'queue_backbone' not in ckpt  # no kNN loss, no second queue
    a = ckpt['args']
    assert (a['model'], a['width'], a['size'], a['moco_t'], a['moco_k'], a['mlp'], a['aug_plus'], a['cosine']) == \
        ('resnet18', 8, 32, 0.2, 32, True, True, True)
    assert a['bn_splits'] == 8  # one process, batch divisible by 8: MoCo's split-BN by default

    model = ckpt['model']
    assert all(k.startswith(('encoder.', 'head.')) for k in model)
    assert model['encoder.conv1.weight'].shape == (8, 3, 3, 3)
    # MoCo v2 head: Linear(64, 64) -> ReLU -> Linear(64, 128), with biases
    assert model['head.0.weight'].shape == (64, 64) and model['head.2.weight'].shape == (128, 64)
    assert 'head.2.bias' in model
    assert all(torch.isfinite(v).all() for v in model.values() if v.is_floating_point())
    # the momentum encoder: the same network, lagging behind the trained one
    momentum = ckpt['momentum_encoder']
    assert momentum.keys() == {f'module.{k}' for k in model}
    assert not torch.equal(momentum['module.encoder.conv1.weight'], model['encoder.conv1.weight'])

    queue = ckpt['queue']
    assert queue['keys'].shape == (32, 128)
    assert_unit_rows(queue['keys'])
    assert int(queue['ptr']) == (2 * 3 * 8) % 32  # epochs x steps x batch, modulo the queue size

    # kNN monitor: the random trunk, then every epoch
    knn = re.findall(r'^epoch (\d+), kNN accuracy ([\d.]+)$', proc.stdout, re.M)
    assert [int(e) for e, _ in knn] == [0, 1, 2], proc.stdout
    assert re.search(r'^epoch 2, total time [\d.]+, loss [\d.]+', proc.stdout, re.M)


@pytest.mark.parametrize('protocol', [[], ['--protocol', 'moco']], ids=['supcon', 'moco'])
def test_linear_evaluates_the_moco_trunk(moco_v2, shared_data, tmp_path, protocol):
    _, _, last = moco_v2
    train, test = shared_data
    proc = check_ok(run_script('main_linear.py', '--ckpt', last, *protocol, '--dataset', 'path',
                               '--data_folder', train, '--test_folder', test, '--batch_size', '8', '--epochs', '1',
                               '--num_workers', '0', '--print_freq', '1000', '--seed', '0', cwd=tmp_path))
    assert re.search(r'^best accuracy: [\d.]+', proc.stdout, re.M), proc.stdout  # no --model: from the ckpt
    probe = load(only_file(tmp_path / 'save'))
    pretrained = load(last)['model']
    trunk = {k: v for k, v in probe['model'].items() if k.startswith('encoder.')}
    assert trunk.keys() == {k for k in pretrained if k.startswith('encoder.')}
    assert all(torch.equal(v, pretrained[k]) for k, v in trunk.items())  # frozen MoCo trunk


# ----------------------------------------------------------------------------- Revisiting-Contrastive-SSL's "ours"

def test_revisiting_command_runs_and_queues_stay_aligned(shared_data, tmp_path, monkeypatch):
    data = os.path.dirname(shared_data[0])  # DATA/train holds the 24 images
    out = tmp_path / 'out'
    argv = [*OURS, data, *SMALL, '--epochs', '1', '--knn_freq', '0', '--output_dir', out]
    check_ok(run_script('main_moco.py', *argv, cwd=tmp_path))
    assert os.path.isfile(out / 'last.pth')
    assert only_file(tmp_path) == str(out / 'last.pth')  # --output_dir replaces save/MoCo/...
    assert not (tmp_path / 'save').exists()

    ckpt = load(out / 'last.pth')
    a = ckpt['args']
    assert (a['learning_rate'], a['moco_m'], a['moco_t'], a['moco_k'], a['cosine']) == (0.3, 0.995, 0.2, 32, True)
    assert (a['nmb_crops'], a['size_crops'], a['min_scale_crops'], a['max_scale_crops']) == \
        ([2, 4], [32, 16], [0.2, 0.05], [1.0, 0.14])
    assert a['constrained_cropping'] and a['auto_augment'] == [0, 2, 3, 4, 5]
    assert (a['aux_topk'], a['aux_weight'], a['data_folder'], a['bn_splits']) == (4, 0.4, data, 8)

    queue, backbone = ckpt['queue'], ckpt['queue_backbone']
    assert queue['keys'].shape == (32, 128) and backbone['keys'].shape == (32, 64)  # trunk features: 64
    assert int(queue['ptr']) == int(backbone['ptr']) == 3 * 8  # 3 steps of 8, enqueued together
    assert_unit_rows(backbone['keys'])
    # Row-aligned: row i of both queues comes from one image. The last step's keys were computed by
    # the momentum encoder as saved (it is updated before, not after, computing them); with batch 8
    # in 8 BN splits every key has its own BN statistics, so the keys can be recomputed exactly.
    keys = key_batches(argv, monkeypatch)[-1]
    k, k_trunk = momentum_encoder(argv, monkeypatch, ckpt['momentum_encoder'])(keys)
    assert torch.allclose(queue['keys'][16:24], k, atol=ATOL)
    assert torch.allclose(backbone['keys'][16:24], F.normalize(k_trunk, dim=1), atol=ATOL)


# ----------------------------------------------------------------------------- schedule

def moco_adjust_learning_rate(lr, epoch, args):
    """MoCo's main_moco.adjust_learning_rate, 0-based epoch."""
    if args.cosine:
        return lr * 0.5 * (1. + math.cos(math.pi * epoch / args.epochs))
    for milestone in args.lr_decay_epochs:
        lr *= 0.1 if epoch >= milestone else 1.
    return lr


def test_cosine_schedule(monkeypatch):
    args = parse(['--lr', '0.03', '--cos', '--epochs', '200'], monkeypatch)
    assert main_moco.lr_at(args, 1, 0, 1) == 0.03  # the first epoch at full lr, exactly
    assert main_moco.lr_at(args, 101, 0, 1) == pytest.approx(0.015, abs=1e-15)
    last = main_moco.lr_at(args, 200, 0, 1)
    assert last == pytest.approx(0.03 * (1 + math.cos(math.pi * 199 / 200)) / 2, rel=1e-12)
    assert 0 < last < 1e-5  # down to (nearly) 0: no floor
    for epoch in range(1, 201):
        assert main_moco.lr_at(args, epoch, 0, 1) == pytest.approx(moco_adjust_learning_rate(0.03, epoch - 1, args),
                                                                     rel=1e-12, abs=1e-15)


def test_step_schedule(monkeypatch):
    args = parse(['--lr', '0.03', '--epochs', '200'], monkeypatch)
    assert args.lr_decay_epochs == [120, 160] and not args.cosine
    expected = {1: 0.03, 120: 0.03, 121: 0.003, 160: 0.003, 161: 0.0003, 200: 0.0003}
    for epoch, lr in expected.items():
        assert main_moco.lr_at(args, epoch, 0, 1) == pytest.approx(lr, rel=1e-12), epoch
    for epoch in range(1, 201):  # epoch 121 (1-based) is MoCo's 120 (0-based): the first decayed
        assert main_moco.lr_at(args, epoch, 0, 1) == pytest.approx(moco_adjust_learning_rate(0.03, epoch - 1, args),
                                                                     rel=1e-12)
    assert parse(['--schedule', '120', '160'], monkeypatch).lr_decay_epochs == [120, 160]
    args = parse(['--lr', '0.1', '--schedule', '30', '40'], monkeypatch)
    assert args.lr_decay_epochs == [30, 40]
    assert [main_moco.lr_at(args, e, 0, 1) for e in (30, 31, 41)] == pytest.approx([0.1, 0.01, 0.001], rel=1e-12)


# ----------------------------------------------------------------------------- resume

def assert_same_moco_state(a, b):
    assert a['epoch'] == b['epoch']
    for part in ('model', 'momentum_encoder', 'queue', 'queue_backbone'):
        assert a[part].keys() == b[part].keys(), part
        for k in a[part]:
            assert torch.equal(a[part][k], b[part][k]), f'{part}: {k}'
    sa, sb = a['optimizer']['state'], b['optimizer']['state']
    assert sa.keys() == sb.keys() and sa
    assert all(torch.equal(sa[i]['momentum_buffer'], sb[i]['momentum_buffer']) for i in sa)


def resume_run(flags, cwd, **kw):
    """Run `flags` for 3 epochs; then stop it after epoch 1 (its ckpt_epoch_1.pth copied over
    last.pth) and --resume: returns (uninterrupted, resumed) last.pth states."""
    full = check_ok(run_script('main_moco.py', *flags, cwd=cwd, **kw))
    last = only_file(cwd / 'save')
    final = load(last)
    assert final['epoch'] == 3
    shutil.copy(os.path.join(os.path.dirname(last), 'ckpt_epoch_1.pth'), last)
    proc = check_ok(run_script('main_moco.py', *flags, '--resume', cwd=cwd, **kw))
    assert re.search(r'^resumed from .*\(epoch 1\)$', proc.stdout, re.M), proc.stdout
    losses = lambda out: re.findall(r'^epoch (\d+), total time [\d.]+, loss ([\d.]+)', out, re.M)
    assert losses(proc.stdout) == losses(full.stdout)[1:]  # epochs 2 and 3, same losses
    return final, load(last)


def test_resume_matches_uninterrupted(shared_data, tmp_path):
    # 3 steps of 8 per epoch into a queue of 32: the queues wrap around during epoch 2
    flags = ['--dataset', 'path', '--data_folder', shared_data[0], *MOCO_V2, '--batch_size', '8', '--moco_k', '32',
             '--aux-weight', '0.4', '--aux-topk', '4', '--epochs', '3', '--save_freq', '1', '--knn_freq', '0', *SMALL]
    final, resumed = resume_run(flags, tmp_path)
    assert int(final['queue']['ptr']) == int(final['queue_backbone']['ptr']) == (3 * 3 * 8) % 32
    assert_same_moco_state(resumed, final)


# ----------------------------------------------------------------------------- two processes

def test_two_processes_queue_holds_shuffle_bn_keys_of_both_ranks(shared_data, tmp_path, monkeypatch):
    """Global batch 4 (2 per rank), 6 steps, lr 0: the momentum encoder never moves, so every key in
    the queue can be recomputed from the checkpoint. Under shuffle-BN each key's BN statistics are
    those of the pair of images that one rank encoded, a pair drawn from the whole global batch."""
    flags = ['--dataset', 'path', '--data_folder', shared_data[0], '--mlp', '--batch_size', '4', '--moco_k', '32',
             '--lr', '0', '--epochs', '1', '--knn_freq', '0', *SMALL]
    check_ok(run_script('main_moco.py', *flags, cwd=tmp_path, torchrun=True))
    ckpt = load(only_file(tmp_path / 'save'))
    assert ckpt['args']['world_size'] == 2 and ckpt['args']['bn_splits'] == 1
    queue = ckpt['queue']['keys']
    assert int(ckpt['queue']['ptr']) == 6 * 4  # the GLOBAL batch enqueued at every step

    momentum = momentum_encoder(flags, monkeypatch, ckpt['momentum_encoder'], bn_splits=1)
    ranks = [key_batches(flags, monkeypatch, rank=r, world=2) for r in range(2)]
    assert [len(batches) for batches in ranks] == [6, 6]
    pairings = [((0, 1), (2, 3)), ((0, 2), (1, 3)), ((0, 3), (1, 2))]  # the first: no shuffle
    used = []
    for step, (mine, theirs) in enumerate(zip(*ranks)):
        x = torch.cat([mine, theirs])  # gathered in rank order: rank 0's 2 keys, then rank 1's
        rows = queue[4 * step:4 * step + 4]
        assert_unit_rows(rows)
        matches = []
        for pairing in pairings:
            keys = torch.empty_like(rows)
            for pair in pairing:
                keys[list(pair)] = momentum(x[list(pair)])[0]
            if torch.allclose(rows, keys, atol=ATOL):
                matches.append(pairing)
        assert len(matches) == 1, f'step {step}: queue rows are not the keys of the global batch'
        used += matches
    assert set(used) - {pairings[0]}, 'keys were never shuffled across ranks'


def test_two_process_resume_matches_uninterrupted(shared_data, tmp_path):
    """Every rank must hold the same queue from the start (MoCo's queue is one DDP-broadcast
    buffer): after a resume both ranks use the saved one."""
    flags = ['--dataset', 'path', '--data_folder', shared_data[0], *MOCO_V2, '--batch_size', '8', '--moco_k', '32',
             '--aux-weight', '0.4', '--aux-topk', '4', '--epochs', '3', '--save_freq', '1', '--knn_freq', '0', *SMALL]
    final, resumed = resume_run(flags, tmp_path, torchrun=True)
    assert int(final['queue']['ptr']) == (3 * 3 * 8) % 32
    assert_same_moco_state(resumed, final)


@pytest.mark.parametrize('batch, splits, expected', [(16, None, 8), (12, '1', 1), (16, '4', 4), (16, '1', 1)])
def test_bn_splits(shared_data, monkeypatch, batch, splits, expected):
    argv = ['--dataset', 'path', '--data_folder', shared_data[0], '--batch_size', batch, '--moco_k', '48',
            *(['--bn_splits', splits] if splits else []), *SMALL]
    args = parse(argv, monkeypatch)
    distributed.init_distributed(args)
    model, momentum, _, _ = main_moco.set_model(args)
    assert args.bn_splits == expected
    for net in (model, momentum):
        bns = [m for m in net.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
        assert len(bns) > 10
        if expected == 1:
            assert not [m for m in bns if isinstance(m, SplitBatchNorm)]
        else:
            assert all(isinstance(m, SplitBatchNorm) and m.num_splits == expected for m in bns)


def test_bn_splits_not_dividing_the_batch(shared_data, tmp_path, monkeypatch, capsys):
    proc = run_main(['--dataset', 'path', '--data_folder', shared_data[0], '--batch_size', '16', '--moco_k', '32',
                     '--bn_splits', '3', '--epochs', '1', '--knn_freq', '0', *SMALL], tmp_path, monkeypatch, capsys)
    assert_user_error(proc, tmp_path, '--bn_splits 3', '16')


def test_bn_splits_under_two_processes(shared_data, tmp_path):
    workers = run_ranks('main_moco.py', '--dataset', 'path', '--data_folder', shared_data[0], '--batch_size', '16',
                        '--moco_k', '32', '--bn_splits', '2', '--epochs', '1', '--knn_freq', '0', *SMALL, cwd=tmp_path)
    for w in workers:
        assert_user_error(w, tmp_path, '--bn_splits')


def test_sync_bn_synchronises_the_online_encoder_only(shared_data, monkeypatch):
    """--syncBN with several processes: the online encoder's BatchNorm is synchronised, the momentum
    encoder's stays per process (shared statistics would undo the key shuffle across processes)."""
    monkeypatch.setattr(torch.nn.parallel, 'DistributedDataParallel', lambda module, **_: module)  # no group here
    argv = ['--dataset', 'path', '--data_folder', shared_data[0], '--batch_size', '8', '--moco_k', '32', '--mlp',
            '--syncBN', *SMALL]
    model, momentum, _, _ = main_moco.set_model(replay_args(argv, monkeypatch, world=2))
    norms = lambda module: [m for m in module.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    assert norms(model) and all(isinstance(m, distributed._GlobalBatchNorm) for m in norms(model))
    assert norms(momentum) and all(type(m) is torch.nn.BatchNorm2d for m in norms(momentum))
    assert all(torch.equal(v, model.state_dict()[k[len('module.'):]]) for k, v in momentum.state_dict().items())


@pytest.mark.parametrize('size, stem, suffix', [(32, None, ''), (32, 'cifar', ''), (32, 'imagenet', '_stem_imagenet'),
                                                (96, 'cifar', '_stem_cifar'), (96, 'imagenet', '')])
def test_run_folder_names_a_stem_other_than_the_default(shared_data, monkeypatch, size, stem, suffix):
    """A --stem the size would not choose has its own run folder (it used to write into, and resume
    from, the default stem's run of the same options)."""
    argv = ['--dataset', 'path', '--data_folder', shared_data[0], '--batch_size', '8', '--moco_k', '32',
            '--model', 'resnet18', '--width', '8', '--size', size, *(['--stem', stem] if stem else [])]
    args = parse(argv, monkeypatch)
    assert os.path.basename(args.save_folder) == f'MoCo_path_resnet18_lr_0.03_decay_0.0001_bsz_8_t_0.07_m_0.999_k_32' \
                                                 f'_trial_0_width_8{suffix}'
    assert os.path.basename(args.tb_folder) == os.path.basename(args.save_folder)


# ----------------------------------------------------------------------------- user errors
# Option and data mistakes are caught before training: main() runs in this process, under the same
# util.run as the script's __main__ (exit status and stderr are what a process would give), which
# keeps the suite fast. The launcher's error runs as a process: on a machine with GPUs it would exec.

def test_multiprocessing_distributed_without_gpus(shared_data, tmp_path):
    proc = run_script('main_moco.py', '--dataset', 'path', '--data_folder', shared_data[0], '--batch_size', '16',
                      '--multiprocessing-distributed', '--epochs', '1', '--knn_freq', '0', *SMALL, cwd=tmp_path)
    assert_user_error(proc, tmp_path, '--multiprocessing-distributed', 'GPU')


@pytest.mark.parametrize('extra, needles', [
    (['--moco_k', '100'], ['--moco_k 100', '16']),
    (['--auto_augment', '1'], ['--auto_augment', 'key']),
    (['--size_crops', '32', '--nmb_crops', '2', '4'], ['--size_crops', '--nmb_crops']),
], ids=['queue-not-divisible', 'autoaugment-on-key', 'crop-lists-disagree'])
def test_option_errors(shared_data, tmp_path, monkeypatch, capsys, extra, needles):
    proc = run_main(['--dataset', 'path', '--data_folder', shared_data[0], '--batch_size', '16', *extra,
                     '--epochs', '1', '--knn_freq', '0', *SMALL], tmp_path, monkeypatch, capsys)
    assert_user_error(proc, tmp_path, *needles)


def test_dataset_smaller_than_one_batch(tiny_folders, tmp_path, monkeypatch, capsys):
    proc = run_main(['--dataset', 'path', '--data_folder', tiny_folders[0], '--batch_size', '16', '--moco_k', '32',
                     '--epochs', '1', '--knn_freq', '0', *SMALL], tmp_path, monkeypatch, capsys)
    assert_user_error(proc, tmp_path, '12 training images', '16')


def test_resume_without_the_knn_queue(moco_v2, shared_data, tmp_path, monkeypatch, capsys):
    """A checkpoint trained without the kNN loss (and so without its queue_backbone) does not resume
    with it: the option that defines it is named."""
    _, _, last = moco_v2
    before = last.read_bytes()
    proc = run_main(['--dataset', 'path', '--data_folder', shared_data[0], *MOCO_V2, '--batch_size', '8',
                     '--moco_k', '32', '--aux-weight', '0.4', '--epochs', '3', '--knn_freq', '0', '--resume', last,
                     *SMALL], tmp_path, monkeypatch, capsys)
    assert_user_error(proc, tmp_path, last, 'trained with aux_weight 0.0, this run has 0.4')
    assert last.read_bytes() == before


def test_a_positional_folder_picks_its_dataset(tmp_path, monkeypatch):
    """MoCo's positional folder is ImageNet's root; Revisiting's COCO command passes train2017/ of
    loose images: neither needs --dataset."""
    coco = tmp_path / 'train2017'
    coco.mkdir()
    assert parse([coco, '--batch-size', '8'], monkeypatch).dataset == 'path'
    (tmp_path / 'imagenet' / 'train').mkdir(parents=True)
    assert parse([tmp_path / 'imagenet', '--batch-size', '8'], monkeypatch).dataset == 'imagenet'
    assert parse([coco, '--dataset', 'imagenet', '--batch-size', '8'], monkeypatch).dataset == 'imagenet'
