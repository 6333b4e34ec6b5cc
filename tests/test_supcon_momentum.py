"""main_supcon.py --momentum_encoder: SupConMomentumLoss against loops over rows, the labelled
queue and the momentum update by hand; end to end on tiny data (the queue holds the momentum
encoder's keys and labels of the right images) then linear evaluation; exact resume; two CPU
processes equal one; SimCLR; user errors."""
import math
import os
import re
import shutil
import subprocess
import sys

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import main_supcon
import util
from conftest import SMALL, assert_user_error, check_ok, load, only_file, run_script, step_losses
from losses import SupConMomentumLoss
from networks.momentum import MomentumEncoder
from networks.supcon_momentum import LabelledQueue, MomentumKeys
import test_distributed
from test_distributed import ATOL as TWO_PROCESS_ATOL, TRUNK, assert_close_models

RUN = 'SupCon_path_resnet18_lr_0.05_decay_0.0001_bsz_8_temp_0.07_trial_0_momentum_k_64_m_0.999_width_8'
ATOL = 1e-5  # keys recomputed here against keys computed inside a run: same ops, float rounding at most
data64 = test_distributed.data64  # the fixture of its two-process tests: 64 images, 2 steps of 32


# ----------------------------------------------------------------------------- the loss

def dot(a, b):
    return sum(x * y for x, y in zip(a, b))


def reference(features, keys, queue, labels, queue_labels, temperature, base_temperature):
    """Loops over anchors: each query (every view of every sample) against every key of the batch
    and every queue row; positives: the keys of its label (its own sample's without labels), never
    a row labelled -1; -(T / T_base) x the mean over positives of log softmax, averaged over anchors."""
    features, keys, queue = features.double().tolist(), keys.double().tolist(), queue.double().tolist()
    ident = labels.tolist() if labels is not None else list(range(len(features)))
    queue_ident = queue_labels.tolist() if labels is not None else [-1] * len(queue)
    contrast = [(k, ident[j]) for j in range(len(keys)) for k in keys[j]] + list(zip(queue, queue_ident))
    losses = []
    for i, views in enumerate(features):
        for q in views:
            logits = [dot(q, c) / temperature for c, _ in contrast]
            log_z = math.log(sum(math.exp(s) for s in logits))
            positives = [s - log_z for s, (_, y) in zip(logits, contrast) if y == ident[i] and y >= 0]
            losses.append(-(temperature / base_temperature) * sum(positives) / len(positives))
    return sum(losses) / len(losses)


def unit_rows(*shape, seed):
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(*shape, generator=g, dtype=torch.float64), dim=-1)


@pytest.mark.parametrize('supervised', [True, False], ids=['SupCon', 'SimCLR'])
@pytest.mark.parametrize('temperature, base', [(0.07, 0.07), (0.1, 0.07), (0.5, 1.0)])
def test_loss_matches_the_loops(supervised, temperature, base):
    features, keys, queue = unit_rows(4, 2, 5, seed=0), unit_rows(4, 2, 5, seed=1), unit_rows(6, 5, seed=2)
    labels = torch.tensor([0, 1, 0, 2])
    queue_labels = torch.tensor([1, -1, 0, 3, -1, 0])  # a class absent from the batch, two unlabelled slots
    loss = SupConMomentumLoss(temperature, base)(features, keys, queue, labels if supervised else None,
                                                 queue_labels if supervised else None)
    assert loss.dim() == 0 and loss.dtype == torch.float64
    expected = reference(features, keys, queue, labels if supervised else None, queue_labels, temperature, base)
    assert loss.item() == pytest.approx(expected, abs=1e-9)


def test_loss_by_hand_with_an_unlabelled_queue_slot():
    # q = k = e1 (label 0), queue = [e1 labelled -1, e2 labelled 0], T = T_base = 1:
    # logits [q.k, q.queue] = [1, 1, 0]; positives: the own key (1) and queue row e2 (0), not the -1 row,
    # which stays in the denominator: loss = log(e + e + 1) - (1 + 0) / 2 = log(6.4365637) - 0.5 = 1.3619948
    # (the -1 row as a positive would give 1.1953281; left out of the denominator, 0.8132617)
    e1 = torch.tensor([[[1.0, 0.0]]], dtype=torch.float64)
    queue = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    loss = SupConMomentumLoss(1.0, 1.0)(e1, e1.clone(), queue, torch.tensor([0]), torch.tensor([-1, 0]))
    assert loss.item() == pytest.approx(1.3619948041, abs=1e-9)


def test_loss_gives_gradients_to_the_queries_only():
    features = unit_rows(3, 2, 4, seed=3).requires_grad_()
    keys, queue = unit_rows(3, 2, 4, seed=4).requires_grad_(), unit_rows(6, 4, seed=5).requires_grad_()
    SupConMomentumLoss()(features, keys, queue, torch.tensor([0, 1, 1]), torch.tensor([0, 1, -1, 1, 0, -1])).backward()
    assert features.grad is not None and torch.isfinite(features.grad).all()
    assert keys.grad is None and queue.grad is None


def test_loss_refuses_labels_without_queue_labels():
    with pytest.raises(ValueError, match='go together'):
        SupConMomentumLoss()(unit_rows(2, 2, 4, seed=6), unit_rows(2, 2, 4, seed=7), unit_rows(4, 4, seed=8),
                             torch.tensor([0, 1]))


# ----------------------------------------------------------------------------- queue and momentum update

def test_labelled_queue_wraps_around():
    q = LabelledQueue(6, 2)
    init = q.keys.clone()
    assert torch.allclose(init.norm(dim=1), torch.ones(6, dtype=init.dtype)) and torch.equal(q.labels, torch.full((6,), -1))
    batches = [(torch.full((2, 2), float(b)), torch.tensor([b, 10 + b])) for b in range(4)]
    for keys, labels in batches[:3]:
        q.enqueue(keys, labels)
    assert int(q.ptr) == 0  # a full turn
    assert q.labels.tolist() == [0, 10, 1, 11, 2, 12]
    q.enqueue(*batches[3])  # overwrites the oldest
    assert q.labels.tolist() == [3, 13, 1, 11, 2, 12] and int(q.ptr) == 2
    assert q.keys[:, 0].tolist() == [3, 3, 1, 1, 2, 2]
    with pytest.raises(ValueError, match='not divisible'):
        q.enqueue(torch.zeros(4, 2), torch.zeros(4, dtype=torch.long))
    assert int(q.ptr) == 2 and q.labels.tolist() == [3, 13, 1, 11, 2, 12]  # a refused batch changes nothing
    assert set(q.state_dict()) == {'keys', 'ptr', 'labels'}


def test_enqueue_writes_every_view_with_its_label():
    keys = MomentumKeys(None, LabelledQueue(8, 3), 0.99)
    batch = unit_rows(2, 2, 3, seed=9).float()  # [bsz 2, 2 views, D 3]
    keys.enqueue(batch, torch.tensor([4, 7]))
    assert torch.equal(keys.queue.keys[:4], batch.reshape(4, 3)) and keys.queue.labels[:4].tolist() == [4, 4, 7, 7]
    keys.enqueue(batch)  # SimCLR: no labels, never a positive
    assert keys.queue.labels.tolist() == [4, 4, 7, 7, -1, -1, -1, -1] and int(keys.queue.ptr) == 0


def test_momentum_update_then_keys():
    online = nn.Linear(2, 1)
    with torch.no_grad():
        online.weight.copy_(torch.tensor([[1., 2.]]))
        online.bias.zero_()
    keys = MomentumKeys(MomentumEncoder(online), LabelledQueue(4, 1), 0.9)
    with torch.no_grad():
        online.weight.copy_(torch.tensor([[3., 4.]]))
        online.bias.fill_(1.)
    out = keys.encode(online, torch.tensor([[1., 1.]]))
    # param_k <- 0.9 param_k + 0.1 param_q: [1.2, 2.2] and 0.1, then the keys of the updated encoder
    assert torch.allclose(keys.encoder.module.weight, torch.tensor([[1.2, 2.2]]))
    assert torch.allclose(keys.encoder.module.bias, torch.tensor([0.1]))
    assert torch.allclose(out, torch.tensor([[3.5]])) and not out.requires_grad


# ----------------------------------------------------------------------------- end to end

def parse(argv, monkeypatch):
    monkeypatch.setattr(sys, 'argv', ['main_supcon.py', *map(str, argv)])
    return main_supcon.parse_option()


def run_main(argv, cwd, monkeypatch, capsys):
    """main_supcon.py's main() in this process, as its __main__ runs it: (exit status, stdout, stderr)."""
    monkeypatch.chdir(cwd)
    monkeypatch.setattr(sys, 'argv', ['main_supcon.py', *map(str, argv)])
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_:
        util.run(main_supcon.main)
    out = capsys.readouterr()
    return subprocess.CompletedProcess(argv, exit_.value.code, out.out, out.err)


def flags(data, *extra):
    return ['--dataset', 'path', '--data_folder', data, '--batch_size', '8', '--knn_freq', '0', *SMALL, '--print_freq', '1',
            *extra]


@pytest.fixture(scope='module')
def momentum_run(tmp_path_factory, shared_data):
    """2 epochs of 24 images, batch 8 (3 steps of 16 keys each), queue of 64 keys."""
    cwd = tmp_path_factory.mktemp('supcon_momentum')
    argv = flags(shared_data[0], '--epochs', '2', '--momentum_encoder', '--moco_k', '64')
    proc = check_ok(run_script('main_supcon.py', *argv, cwd=cwd))
    return argv, proc, cwd / 'save' / 'SupCon' / 'path_models' / RUN / 'last.pth'


def test_checkpoint_holds_the_keys_and_labels_of_the_last_batch(momentum_run, monkeypatch):
    argv, proc, last = momentum_run
    assert re.search(r'^epoch 2, total time [\d.]+, loss [\d.]+', proc.stdout, re.M), proc.stdout
    ckpt = load(last)
    assert ckpt['method'] == 'SupCon' and ckpt['args']['momentum_encoder'] and ckpt['args']['moco_k'] == 64
    assert ckpt['momentum_encoder'].keys() == {f'module.{k}' for k in ckpt['model']}
    assert not torch.equal(ckpt['momentum_encoder']['module.encoder.conv1.weight'], ckpt['model']['encoder.conv1.weight'])
    queue = ckpt['queue']
    assert queue['keys'].shape == (64, 128) and int(queue['ptr']) == (2 * 3 * 16) % 64
    assert torch.allclose(queue['keys'].norm(dim=1), torch.ones(64), atol=1e-5)
    assert set(queue['labels'].tolist()) <= {0, 1, 2}  # 96 keys enqueued: no initial random row is left

    # The last step wrote rows 16-31: its batch's keys from the momentum encoder as saved (updated
    # before, not after, computing them), in BatchNorm's training mode over the batch's 16 images.
    args = parse(argv, monkeypatch)
    args.rank, args.world_size, args.device, args.data_seed = 0, 1, torch.device('cpu'), args.seed
    loader, _ = main_supcon.set_loader(args)
    loader.sampler.set_epoch(2)
    views, labels = list(loader)[-1]
    _, _, momentum = main_supcon.set_model(args)
    momentum.encoder.load_state_dict(ckpt['momentum_encoder'])
    keys = momentum.encoder.train()(torch.cat(views))  # view 0 of every image, then view 1
    keys = torch.stack(keys.split(8), 1).reshape(16, 128)  # sample-major, as enqueued
    assert torch.allclose(queue['keys'][16:32], keys, atol=ATOL)
    assert torch.equal(queue['labels'][16:32], labels.repeat_interleave(2))


def test_linear_evaluates_the_trunk(momentum_run, shared_data, tmp_path):
    _, _, last = momentum_run
    train, test = shared_data
    proc = check_ok(run_script('main_linear.py', '--ckpt', last, '--dataset', 'path', '--data_folder', train,
                               '--test_folder', test, '--batch_size', '8', '--epochs', '1', '--num_workers', '0',
                               '--print_freq', '1000', '--seed', '0', cwd=tmp_path))
    assert re.search(r'^best accuracy: [\d.]+', proc.stdout, re.M), proc.stdout
    probe, pretrained = load(only_file(tmp_path / 'save')), load(last)['model']
    trunk = {k: v for k, v in probe['model'].items() if k.startswith('encoder.')}
    assert trunk.keys() == {k for k in pretrained if k.startswith('encoder.')}
    assert all(torch.equal(v, pretrained[k]) for k, v in trunk.items())  # the frozen trunk


def test_simclr_queues_unlabelled_keys(shared_data, tmp_path):
    proc = check_ok(run_script('main_supcon.py', *flags(shared_data[0], '--epochs', '1', '--method', 'SimCLR',
                                                        '--momentum_encoder', '--moco_k', '32'), cwd=tmp_path))
    assert all(math.isfinite(x) for x in step_losses(proc.stdout))
    queue = load(only_file(tmp_path / 'save'))['queue']
    assert torch.equal(queue['labels'], torch.full((32,), -1)) and int(queue['ptr']) == (3 * 16) % 32


def test_resume_matches_uninterrupted(shared_data, tmp_path):
    """2 epochs against 1 epoch then --resume for the second; the 32-key queue wraps around in both."""
    argv = flags(shared_data[0], '--epochs', '2', '--save_freq', '1', '--cosine', '--momentum_encoder', '--moco_k', '32')
    full = check_ok(run_script('main_supcon.py', *argv, cwd=tmp_path))
    last = only_file(tmp_path / 'save')
    final = load(last)
    shutil.copy(os.path.join(os.path.dirname(last), 'ckpt_epoch_1.pth'), last)
    proc = check_ok(run_script('main_supcon.py', *argv, '--resume', cwd=tmp_path))
    assert re.search(r'^resumed from .*\(epoch 1\)$', proc.stdout, re.M), proc.stdout
    assert len(step_losses(proc.stdout)) == 3 and step_losses(proc.stdout) == step_losses(full.stdout)[3:]
    resumed = load(last)
    assert resumed['epoch'] == final['epoch'] == 2 and int(final['queue']['ptr']) == (2 * 3 * 16) % 32
    for part in ('model', 'momentum_encoder', 'queue'):
        assert resumed[part].keys() == final[part].keys(), part
        for k in final[part]:
            assert torch.equal(resumed[part][k], final[part][k]), f'{part}: {k}'
    sa, sb = resumed['optimizer']['state'], final['optimizer']['state']
    assert sa.keys() == sb.keys() and all(torch.equal(sa[i]['momentum_buffer'], sb[i]['momentum_buffer']) for i in sa)


def test_two_processes_match_one(data64, tmp_path):
    """Global batch 32 (16 per rank), 2 steps, a queue of one step's 64 keys: with --syncBN the key
    encoder's BatchNorm is the whole batch's too, so both runs agree up to float rounding."""
    train, test = data64
    argv = ['--dataset', 'path', '--data_folder', train, '--test_folder', test, '--knn_freq', '1', '--syncBN',
            '--print_freq', '1', '--epochs', '1', '--batch_size', '32', '--momentum_encoder', '--moco_k', '64', *TRUNK]
    one = check_ok(run_script('main_supcon.py', *argv, cwd=tmp_path / 'one'))
    two = check_ok(run_script('main_supcon.py', *argv, cwd=tmp_path / 'two', torchrun=True))
    assert len(step_losses(one.stdout)) == 2 and step_losses(two.stdout) == pytest.approx(step_losses(one.stdout), abs=2e-3)
    a, b = load(only_file(tmp_path / 'one' / 'save')), load(only_file(tmp_path / 'two' / 'save'))
    assert b['args']['world_size'] == 2
    assert_close_models(a['model'], b['model'], TWO_PROCESS_ATOL)
    assert_close_models(a['momentum_encoder'], b['momentum_encoder'], TWO_PROCESS_ATOL)
    # Rank r loads every other image of a step (SeededSampler): the gathered batch holds rank 0's
    # half, then rank 1's; the queue's rows (2 views per image) follow that order.
    order = torch.cat([torch.arange(0, 32, 2), torch.arange(1, 32, 2)])
    keys_one, keys_two = a['queue']['keys'].view(32, 2, -1), b['queue']['keys'].view(32, 2, -1)
    assert torch.allclose(keys_two, keys_one[order], atol=TWO_PROCESS_ATOL, rtol=0)
    assert torch.equal(b['queue']['labels'].view(32, 2), a['queue']['labels'].view(32, 2)[order])
    assert int(a['queue']['ptr']) == int(b['queue']['ptr']) == 0


# ----------------------------------------------------------------------------- options and user errors

def test_run_name_help_and_defaults(shared_data, monkeypatch, tmp_path):
    args = parse(flags(shared_data[0], '--momentum_encoder'), monkeypatch)
    assert (args.moco_k, args.moco_m) == (65536, 0.999)  # MoCo's defaults
    assert os.path.basename(args.save_folder).endswith('_trial_0_momentum_k_65536_m_0.999_width_8')
    plain = parse(flags(shared_data[0]), monkeypatch)
    assert '_momentum' not in plain.save_folder and not plain.momentum_encoder
    text = ' '.join(run_script('main_supcon.py', '--help', cwd=tmp_path).stdout.split())
    assert 'queue size, in keys (a multiple of 2 views x --batch_size) (default: 65536)' in text
    assert 'key-encoder momentum (default: 0.999)' in text


@pytest.mark.parametrize('extra, needles', [
    (['--momentum_encoder', '--moco_k', '40'], ['--moco_k 40', '2 views x the global batch 8 = 16']),
    (['--moco_k', '32'], ['--moco_k', 'add --momentum_encoder']),
    (['--moco-m', '0.99'], ['--moco_m', 'add --momentum_encoder']),
], ids=['queue-not-divisible', 'queue-without-momentum', 'momentum-without-momentum'])
def test_option_errors(shared_data, tmp_path, monkeypatch, capsys, extra, needles):
    proc = run_main(flags(shared_data[0], '--epochs', '1', *extra), tmp_path, monkeypatch, capsys)
    assert_user_error(proc, tmp_path, *needles)


def test_resume_refuses_a_plain_supcon_checkpoint(tiny_ckpt, shared_data, tmp_path, monkeypatch, capsys):
    before = open(tiny_ckpt, 'rb').read()
    proc = run_main(flags(shared_data[0], '--epochs', '2', '--momentum_encoder', '--resume', tiny_ckpt),
                    tmp_path, monkeypatch, capsys)
    assert_user_error(proc, tmp_path, 'trained with momentum_encoder False, this run has True')
    assert open(tiny_ckpt, 'rb').read() == before
