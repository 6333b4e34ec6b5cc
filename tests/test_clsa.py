"""CLSA: BatchKeysMoCoLoss and CLSALoss against plain-Python references; main_clsa.py end to end (the
four commands of CLSA's README shrunk, CLSA's linear protocol, two processes, resume, user errors).
The strong augmentation and the views: tests/test_clsa_views.py."""
import math
import os
import re
import shutil
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

import classifier
import main_clsa
import main_linear
import util
from conftest import assert_user_error, check_ok, load, make_image_folder, only_file, run_script, step_losses
from losses import BatchKeysMoCoLoss, CLSALoss

ATOL = 1e-5  # keys recomputed here against keys computed inside a run: same ops, float rounding at most


# ----------------------------------------------------------------------------- losses

def dot(a, b):
    return sum(x * y for x, y in zip(a, b))


def log_softmax_list(logits):
    m = max(logits)
    log_z = m + math.log(sum(math.exp(s - m) for s in logits))
    return [s - log_z for s in logits]


def reference_batch_keys_nce(q, keys, queue, offset, temperature):
    """-log softmax([q_i·keys, q_i·queue] / T)[offset + i], averaged over rows i."""
    q, candidates = q.double().tolist(), keys.double().tolist() + queue.double().tolist()
    total = 0.0
    for i, qi in enumerate(q):
        total -= log_softmax_list([dot(qi, c) / temperature for c in candidates])[offset + i]
    return total / len(q)


def reference_clsa(q_weak, q_strong, keys, queue, moco_t, clsa_t):
    """As released: the weak query's InfoNCE logits at moco_t, rescaled by moco_t / clsa_t and
    softmaxed, are the target of the strong query's softmax at clsa_t: -sum target * log p."""
    candidates = keys.double().tolist() + queue.double().tolist()
    total = 0.0
    for w, s in zip(q_weak.double().tolist(), q_strong.double().tolist()):
        weak_logits = [dot(w, c) / moco_t for c in candidates]
        target = [math.exp(x) for x in log_softmax_list([x * moco_t / clsa_t for x in weak_logits])]
        log_p = log_softmax_list([dot(s, c) / clsa_t for c in candidates])
        total -= sum(t * lp for t, lp in zip(target, log_p))
    return total / len(q_weak)


def rows(n, dim, seed, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(n, dim, generator=g, dtype=dtype), dim=1)


@pytest.mark.parametrize('offset', [0, 4, 8])
@pytest.mark.parametrize('temperature', [0.07, 0.2])
def test_batch_keys_nce_matches_reference(offset, temperature):
    q, keys, queue = rows(4, 8, 0), rows(12, 8, 1), rows(20, 8, 2)  # 12 keys: a global batch of 3 ranks
    loss = BatchKeysMoCoLoss(temperature)(q, keys, queue, offset)
    assert loss.dim() == 0 and loss.dtype == torch.float64
    assert loss.item() == pytest.approx(reference_batch_keys_nce(q, keys, queue, offset, temperature), abs=1e-6)
    q32 = BatchKeysMoCoLoss(temperature)(q.float(), keys.float(), queue.float(), offset)
    assert q32.dtype == torch.float32 and q32.item() == pytest.approx(loss.item(), abs=1e-5)


def test_batch_keys_nce_positive_outside_the_keys():
    with pytest.raises(ValueError, match='outside the 12 keys'):
        BatchKeysMoCoLoss()(rows(4, 8, 0), rows(12, 8, 1), rows(20, 8, 2), offset=9)


@pytest.mark.parametrize('moco_t, clsa_t', [(0.2, 0.2), (0.2, 0.1), (0.07, 0.5)])
def test_clsa_loss_matches_released_formula(moco_t, clsa_t):
    q_weak, q_strong, keys, queue = rows(4, 8, 3), rows(4, 8, 4), rows(8, 8, 5), rows(24, 8, 6)
    loss = CLSALoss(clsa_t)(q_weak, q_strong, keys, queue)
    assert loss.dim() == 0 and loss.dtype == torch.float64
    assert loss.item() == pytest.approx(reference_clsa(q_weak, q_strong, keys, queue, moco_t, clsa_t), abs=1e-6)


def test_clsa_gradient_reaches_the_strong_query_only():
    q_weak, q_strong = rows(4, 8, 7).requires_grad_(), rows(4, 8, 8).requires_grad_()
    keys, queue = rows(8, 8, 9).requires_grad_(), rows(24, 8, 10).requires_grad_()
    t = 0.2
    CLSALoss(t)(q_weak, q_strong, keys, queue).backward()
    assert q_weak.grad is None and keys.grad is None and queue.grad is None  # the target is detached
    candidates = torch.cat([keys, queue]).detach()
    target = F.softmax(q_weak.detach() @ candidates.T / t, dim=1)
    p_strong = F.softmax(q_strong.detach() @ candidates.T / t, dim=1)
    # d/dq_s of -sum target * log p_strong, averaged over N rows: (p_strong - target) @ candidates / (T N)
    assert torch.allclose(q_strong.grad, (p_strong - target) @ candidates / (t * 4), atol=1e-12)


def test_clsa_loss_is_the_target_entropy_when_the_views_agree():
    """Cross-entropy = entropy(target) + KL(target || p_strong) >= entropy, with equality at p_strong = target."""
    q_weak, q_strong, keys, queue = rows(4, 8, 11), rows(4, 8, 12), rows(8, 8, 13), rows(24, 8, 14)
    target = F.softmax(q_weak @ torch.cat([keys, queue]).T / 0.2, dim=1)
    entropy = -(target * target.log()).sum(dim=1).mean().item()
    assert CLSALoss(0.2)(q_weak, q_weak, keys, queue).item() == pytest.approx(entropy, abs=1e-12)
    assert CLSALoss(0.2)(q_weak, q_strong, keys, queue).item() > entropy + 1e-3


def test_clsa_loss_finite_under_fp16_autocast_when_strong_probabilities_are_zero():
    """Each strong query meets its own key (logit +1/T) and its opposite (-1/T) among the candidates:
    at T = 0.01 the opposite's probability, exp(-200), is 0 even in float32, yet it is where the weak
    query (the opposite direction) puts its target mass. log(softmax) would give inf there."""
    t = 0.01
    q_strong = rows(2, 8, 15, torch.float16)
    q_weak, keys, queue = -q_strong, q_strong, torch.cat([-q_strong, rows(6, 8, 16, torch.float16)])
    q_strong.requires_grad_()
    with torch.autocast('cpu', dtype=torch.float16):
        loss = CLSALoss(t)(q_weak, q_strong, keys, queue)
    loss.backward()
    assert loss.dtype == torch.float32 and torch.isfinite(loss) and torch.isfinite(q_strong.grad).all()

    candidates = torch.cat([keys, queue]).float()
    p_strong = F.softmax(q_strong.detach().float() @ candidates.T / t, dim=1)
    target = F.softmax(q_weak.float() @ candidates.T / t, dim=1)
    zero = p_strong == 0
    assert zero.any() and (target[zero] > 0.1).any()
    assert not torch.isfinite(-(target * p_strong.log()).sum(dim=1).mean())  # the released formula
    # equal to the float64 reference on the same (fp16-rounded) inputs, up to float32 rounding
    assert loss.item() == pytest.approx(reference_clsa(q_weak, q_strong.detach(), keys, queue, t, t), rel=1e-5)


# ----------------------------------------------------------------------------- main_clsa.py end to end

# CLSA's README commands in their own spelling, shrunk: crops 224/192/160/128/96 -> 32/28/24/20/16,
# batch 256 -> 8, queue 65536 -> 32, ResNet-50 -> a ResNet-18 of width 8.
LAUNCHER = ['--workers=0', '--epochs=1', '--start_epoch=0', '--batch_size=8', '--lr=0.03', '--weight_decay=1e-4',
            '--print_freq=1', '--world_size=1', '--rank=0', '--dist_url=tcp://localhost:10001', '--moco_dim=128',
            '--moco_k=32', '--moco_m=0.999', '--moco_t=0.2', '--alpha=1', '--aug_times=5']
SINGLE = ['--nmb_crops', '1', '1', '--size_crops', '32', '16', '--min_scale_crops', '0.2', '0.086',
          '--max_scale_crops', '1.0', '0.429', '--pick_strong', '1', '--pick_weak', '0', '--clsa_t', '0.2']
MULTI = ['--nmb_crops', '1', '1', '1', '1', '1', '--size_crops', '32', '28', '24', '20', '16',
         '--min_scale_crops', '0.2', '0.172', '0.143', '0.114', '0.086',
         '--max_scale_crops', '1.0', '0.86', '0.715', '0.571', '0.429',
         '--pick_strong', '0', '1', '2', '3', '4', '--pick_weak', '0', '1', '2', '3', '4', '--clsa_t', '0.2']
TINY = ['--model', 'resnet18', '--width', '8', '--size', '32', '--seed', '0']


@pytest.fixture(scope='module')
def imagenet_like(tmp_path_factory):
    """DATA/train (3 classes x 8 images) and DATA/val (3 x 2), as --data of the seed commands reads."""
    root = tmp_path_factory.mktemp('imagenet_like')
    make_image_folder(root / 'train', 3, 8, seed=7)
    make_image_folder(root / 'val', 3, 2, seed=8)
    return str(root)


def parse(argv, monkeypatch):
    monkeypatch.setattr(sys, 'argv', ['main_clsa.py', *map(str, argv)])
    return main_clsa.parse_option()


def replay_args(argv, monkeypatch, rank=0, world=1):
    """The options of a run of `argv`, as rank `rank` of `world` processes on the CPU sees them."""
    # several processes shuffle keys across them: no single-process BatchNorm split
    args = parse([*argv, *(['--bn_splits', '1'] if world > 1 else [])], monkeypatch)
    args.rank, args.world_size, args.device = rank, world, torch.device('cpu')
    args.data_seed = args.seed  # what distributed.start gives a seeded run
    args.knn_freq = 0  # the training crops alone
    return args


KEY_CROP, FIRST_WEAK = 0, 1  # views of CLSATransform


def view_batches(argv, monkeypatch, view, rank=0, world=1):
    """View `view` of every step of epoch 1 that rank `rank` loaded: every sample's augmentation
    is drawn from its own seed, so the batches can be loaded again."""
    args = replay_args(argv, monkeypatch, rank, world)
    loader, _ = main_clsa.set_loader(args)
    loader.sampler.set_epoch(1)
    return [crops[view] for crops, _ in loader]


def momentum_encoder(argv, monkeypatch, state, bn_splits=None):
    """The momentum encoder of a single-process run of `argv` with a checkpoint's weights, in training
    mode (BatchNorm on batch statistics, as when it computes keys)."""
    args = replay_args([*argv, *(['--bn_splits', str(bn_splits)] if bn_splits is not None else [])], monkeypatch)
    _, momentum, _ = main_clsa.set_model(args)
    momentum.load_state_dict(state)
    return momentum.train()


def assert_unit_rows(t):
    assert torch.allclose(t.norm(dim=1), torch.ones(t.shape[0]), atol=1e-5)


@pytest.mark.parametrize('crops, sym', [(SINGLE, 0), (SINGLE, 1), (MULTI, 0), (MULTI, 1)],
                         ids=['single', 'single-sym', 'multi', 'multi-sym'])
def test_seed_command(imagenet_like, tmp_path, monkeypatch, crops, sym):
    argv = [f'--data={imagenet_like}', *LAUNCHER, *crops, '--sym', sym, *TINY, '--knn_freq', '1']
    proc = check_ok(run_script('main_clsa.py', *argv, cwd=tmp_path))
    losses = step_losses(proc.stdout)
    assert len(losses) == 3 and all(math.isfinite(x) for x in losses), proc.stdout  # 24 images, batch 8
    assert re.search(r'^epoch 1, total time [\d.]+, loss [\d.]+, ddm [\d.]+', proc.stdout, re.M), proc.stdout
    knn = re.findall(r'^epoch (\d+), kNN accuracy [\d.]+$', proc.stdout, re.M)
    assert knn == ['0', '1']  # the random trunk, then after the epoch

    last = only_file(tmp_path / 'save')
    assert os.path.dirname(os.path.dirname(last)) == str(tmp_path / 'save' / 'CLSA' / 'imagenet_models')
    ckpt = load(last)
    assert {'method', 'args', 'epoch', 'model', 'optimizer', 'scaler', 'rng', 'momentum_encoder', 'queue'} <= ckpt.keys()
    assert ckpt['method'] == 'CLSA' and ckpt['epoch'] == 1
    a = ckpt['args']
    multi = crops is MULTI
    assert (a['pick_weak'], a['pick_strong']) == (([0, 1, 2, 3, 4],) * 2 if multi else ([0], [1]))
    assert a['size_crops'] == ([32, 28, 24, 20, 16] if multi else [32, 16])
    assert (a['sym'], a['alpha'], a['clsa_t'], a['moco_t'], a['moco_k'], a['aug_times'], a['cosine']) == \
        (sym, 1.0, 0.2, 0.2, 32, 5, True)
    assert (a['num_workers'], a['nodes'], a['node_rank'], a['dist_url'], a['data_folder']) == \
        (0, 1, 0, 'tcp://localhost:10001', imagenet_like)
    assert ckpt['model']['head.0.weight'].shape == (64, 64) and ckpt['model']['head.2.weight'].shape == (128, 64)
    assert ckpt['momentum_encoder'].keys() == {f'module.{k}' for k in ckpt['model']}
    assert not torch.equal(ckpt['momentum_encoder']['module.encoder.conv1.weight'], ckpt['model']['encoder.conv1.weight'])

    # The queue holds the key crop's momentum keys, with --sym the first weak crop's (as released): the
    # last step's keys were computed by the momentum encoder as saved, each with its own BatchNorm
    # statistics (batch 8 in 8 splits), so they can be recomputed.
    queue = ckpt['queue']
    assert queue['keys'].shape == (32, 128) and int(queue['ptr']) == 24
    assert_unit_rows(queue['keys'])
    momentum = momentum_encoder(argv, monkeypatch, ckpt['momentum_encoder'])
    keys = lambda view: momentum(view_batches(argv, monkeypatch, view)[-1])[0]
    assert torch.allclose(queue['keys'][16:24], keys(FIRST_WEAK if sym else KEY_CROP), atol=ATOL)
    if sym:  # not the key crop's, which the queue held before
        assert not torch.allclose(queue['keys'][16:24], keys(KEY_CROP), atol=1e-2)

    if crops is SINGLE and sym == 0:  # CLSA's linear protocol on the checkpoint, as is
        linear_evaluation(last, imagenet_like, tmp_path / 'linear', monkeypatch)


def linear_evaluation(last, data, cwd, monkeypatch):
    argv = ['--ckpt', last, '--protocol', 'clsa', '--dataset', 'imagenet', '--data_folder', data]
    monkeypatch.setattr(sys, 'argv', ['main_linear.py', *argv])
    args = main_linear.parse_option()
    assert (args.learning_rate, args.weight_decay, args.epochs, args.fc_init, args.cosine) == (10.0, 0.0, 100, 'normal', True)
    assert (args.model, args.width, args.size) == ('resnet18', 8, 32)  # from the checkpoint
    # CLSA's cosine over epochs counted from 0, from lr towards 0.01
    assert classifier.lr_at(args, 1, 0, 10) == pytest.approx(10.0)
    assert classifier.lr_at(args, 51, 3, 10) == pytest.approx(0.01 + 9.99 / 2)
    assert classifier.lr_at(args, 100, 0, 10) == pytest.approx(0.01 + 9.99 * (1 + math.cos(math.pi * 0.99)) / 2)

    proc = check_ok(run_script('main_linear.py', *argv, '--batch_size', '8', '--epochs', '1', '--num_workers', '0',
                               '--seed', '0', cwd=cwd))
    assert re.search(r'^best accuracy: [\d.]+', proc.stdout, re.M), proc.stdout
    probe, pretrained = load(only_file(cwd / 'save')), load(last)['model']
    trunk = {k: v for k, v in probe['model'].items() if k.startswith('encoder.')}
    assert trunk.keys() == {k for k in pretrained if k.startswith('encoder.')}
    assert all(torch.equal(v, pretrained[k]) for k, v in trunk.items())  # the frozen CLSA trunk


def test_defaults_are_the_released_ones(monkeypatch):
    args = parse([], monkeypatch)
    assert (args.model, args.epochs, args.batch_size, args.learning_rate, args.momentum, args.weight_decay) == \
        ('resnet50', 200, 256, 0.03, 0.9, 1e-4)
    assert (args.moco_dim, args.moco_k, args.moco_m, args.moco_t, args.alpha, args.aug_times, args.clsa_t) == \
        (128, 65536, 0.999, 0.2, 1.0, 5, 0.2)
    assert (args.cosine, args.warm, args.sym, args.size, args.dataset) == (True, False, 0, 224, 'imagenet')
    assert args.size_crops == [224, 192, 160, 128, 96] and args.nmb_crops == [1] * 5
    assert args.pick_weak == args.pick_strong == [0, 1, 2, 3, 4]
    # as released, one process per GPU unless a launcher (torchrun, srun) started this one
    assert args.multiprocessing_distributed == torch.cuda.is_available()
    # the cosine per epoch, first epoch at full lr, no warm-up
    assert main_clsa.lr_at(args, 1, 0, 1) == 0.03
    assert main_clsa.lr_at(args, 101, 0, 1) == pytest.approx(0.015)
    assert 0 < main_clsa.lr_at(args, 200, 0, 1) < 1e-5


# ----------------------------------------------------------------------------- two processes, resume

def test_two_processes(shared_data, tmp_path, monkeypatch):
    """Global batch 4 (2 per rank), 6 steps, lr 0: the momentum encoder never moves, so every key in
    the queue can be recomputed. Under shuffle-BN each key's BatchNorm statistics are those of the
    pair of images one rank encoded, a pair drawn from the whole global batch; the queue holds the
    keys of --sym's first weak crops (as released) of both ranks in rank order, each paired with its
    own image (the release mixed them up across GPUs)."""
    argv = ['--dataset', 'path', '--data_folder', shared_data[0], *SINGLE, '--sym', '1', '--batch_size', '4',
            '--moco_k', '32', '--lr', '0', '--epochs', '1', '--knn_freq', '0', '--num_workers', '0', *TINY]
    proc = check_ok(run_script('main_clsa.py', *argv, '--print_freq', '1', cwd=tmp_path, torchrun=True))
    assert len(step_losses(proc.stdout)) == 6 and all(math.isfinite(x) for x in step_losses(proc.stdout))
    ckpt = load(only_file(tmp_path / 'save'))
    assert ckpt['args']['world_size'] == 2 and ckpt['args']['bn_splits'] == 1 and len(ckpt['rng']) == 2
    queue = ckpt['queue']['keys']
    assert int(ckpt['queue']['ptr']) == 6 * 4  # the global batch enqueued at every step

    momentum = momentum_encoder(argv, monkeypatch, ckpt['momentum_encoder'], bn_splits=1)
    ranks = [view_batches(argv, monkeypatch, FIRST_WEAK, rank=r, world=2) for r in range(2)]
    pairings = [((0, 1), (2, 3)), ((0, 2), (1, 3)), ((0, 3), (1, 2))]
    for step, (mine, theirs) in enumerate(zip(*ranks)):
        x, rows_ = torch.cat([mine, theirs]), queue[4 * step:4 * step + 4]
        matches = []
        for pairing in pairings:
            keys = torch.empty_like(rows_)
            for pair in pairing:
                keys[list(pair)] = momentum(x[list(pair)])[0]
            matches.append(torch.allclose(rows_, keys, atol=ATOL))
        assert sum(matches) == 1, f'step {step}: queue rows are not the first weak crops of the global batch'


def test_resume_matches_uninterrupted(shared_data, tmp_path):
    """Stopped after epoch 1 of 2 (its ckpt_epoch_1.pth copied over last.pth) and resumed: the same
    losses and the same final model, momentum encoder, queue and optimiser as without a stop."""
    flags = ['--dataset', 'path', '--data_folder', shared_data[0], *SINGLE, '--sym', '1', '--batch_size', '8',
             '--moco_k', '32', '--epochs', '2', '--save_freq', '1', '--knn_freq', '0', '--num_workers', '0', *TINY]
    full = check_ok(run_script('main_clsa.py', *flags, cwd=tmp_path))
    last = only_file(tmp_path / 'save')
    final = load(last)
    shutil.copy(os.path.join(os.path.dirname(last), 'ckpt_epoch_1.pth'), last)
    proc = check_ok(run_script('main_clsa.py', *flags, '--resume', cwd=tmp_path))
    assert re.search(r'^resumed from .*\(epoch 1\)$', proc.stdout, re.M), proc.stdout
    epochs = lambda out: re.findall(r'^epoch (\d+), total time [\d.]+, (loss .*), \d+ images/s', out, re.M)
    assert epochs(proc.stdout) == epochs(full.stdout)[1:]
    resumed = load(last)
    assert resumed['epoch'] == final['epoch'] == 2
    assert int(final['queue']['ptr']) == (2 * 3 * 8) % 32  # the queue wrapped around
    for part in ('model', 'momentum_encoder', 'queue'):
        assert all(torch.equal(final[part][k], resumed[part][k]) for k in final[part]), part
    sa, sb = final['optimizer']['state'], resumed['optimizer']['state']
    assert sa.keys() == sb.keys() and all(torch.equal(sa[i]['momentum_buffer'], sb[i]['momentum_buffer']) for i in sa)


# ----------------------------------------------------------------------------- user errors

def run_main(argv, cwd, monkeypatch, capsys):
    """main_clsa.py's main() in this process, as its __main__ runs it (util.run)."""
    monkeypatch.chdir(cwd)
    monkeypatch.setattr(sys, 'argv', ['main_clsa.py', *map(str, argv)])
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_:
        util.run(main_clsa.main)
    out = capsys.readouterr()
    return subprocess.CompletedProcess(argv, exit_.value.code, out.out, out.err)


@pytest.mark.parametrize('extra, needles', [
    (['--pick_weak', '2'], ['--pick_weak', 'crop index 2']),
    (['--size_crops', '32'], ['--size_crops', '--nmb_crops']),
    (['--moco_k', '20'], ['--moco_k 20', '8']),
    (['--world_size=2', '--rank=1'], ['--world_size 2 --rank 1']),
    (['--lr_decay_epochs', '120,160'], ['cosine', '--lr_decay_epochs']),
    (['--lr_decay_rate', '0.2'], ['cosine', '--lr_decay_rate']),
], ids=['pick-outside', 'crop-lists-disagree', 'queue-not-divisible', 'nodes-without-gpus', 'step-schedule',
        'decay-rate'])
def test_option_errors(shared_data, tmp_path, monkeypatch, capsys, extra, needles):
    proc = run_main(['--dataset', 'path', '--data_folder', shared_data[0], *SINGLE, '--batch_size', '8',
                     '--moco_k', '32', *extra, '--epochs', '1', '--knn_freq', '0', '--num_workers', '0', *TINY],
                    tmp_path, monkeypatch, capsys)
    assert_user_error(proc, tmp_path, *needles)


def test_resume_from_a_checkpoint_without_momentum_encoder(tiny_ckpt, shared_data, tmp_path, monkeypatch, capsys):
    proc = run_main(['--dataset', 'path', '--data_folder', shared_data[0], *SINGLE, '--batch_size', '8',
                     '--moco_k', '32', '--epochs', '1', '--knn_freq', '0', '--num_workers', '0', *TINY,
                     '--resume', tiny_ckpt], tmp_path, monkeypatch, capsys)
    assert_user_error(proc, tmp_path, tiny_ckpt, 'written by a SupCon run')
