"""util.py and evaluation.py helpers against hand-computed values: schedules, option finishing and
SupContrast's run names, meters, accuracy, weighted kNN, checkpoints, the seeded samplers."""
import argparse
import importlib
import os
import random
import sys

import numpy as np
import pytest
import torch

import options
import checkpoints
import optim
import util
from datasets import SeededSampler, ShardSampler
from evaluation import knn_predict
from networks.resnet_big import SupConResNet


def parse(script, argv, monkeypatch):
    """parse_option() of a script (module main_xxx) as if run with argv."""
    monkeypatch.setattr(sys, 'argv', [f'{script}.py', *argv])
    return importlib.import_module(script).parse_option()


def sgd(lr=1.0):
    return torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=lr)


def lr_of(opt):
    return opt.param_groups[0]['lr']


# ----------------------------------------------------------------------------- schedules

def supcontrast(epoch, step=0, steps=10, **kw):
    args = argparse.Namespace(**{**dict(learning_rate=0.5, lr_decay_rate=0.1, cosine=True, epochs=300,
                                        lr_decay_epochs=[], warm=False, warm_epochs=10, warmup_from=0.01), **kw})
    return optim.supcontrast_lr(args, epoch, step, steps)


def test_cosine_schedule_hand_values():
    # eta_min = 0.5 * 0.1^3 = 0.0005; lr(e) = eta_min + (0.5 - eta_min) * (1 + cos(pi e / 300)) / 2
    assert supcontrast(1) == pytest.approx(0.49998630604904, abs=1e-12)  # cos(0.6 deg)
    assert supcontrast(1, step=9) == supcontrast(1)  # per epoch
    assert supcontrast(150) == pytest.approx(0.25025, abs=1e-12)  # half way
    assert supcontrast(300) == pytest.approx(0.0005, abs=1e-12)  # floor lr * rate^3


@pytest.mark.parametrize('epoch, expected', [
    (1, 0.05), (700, 0.05), (701, 0.005), (800, 0.005), (801, 0.0005), (900, 0.0005), (901, 0.00005), (1000, 0.00005)])
def test_step_schedule_strict_milestones(epoch, expected):
    assert supcontrast(epoch, learning_rate=0.05, cosine=False, epochs=1000,
                       lr_decay_epochs=[700, 800, 900]) == pytest.approx(expected, rel=1e-12)


def test_warmup_per_step_linear_from_0_01():
    step = dict(learning_rate=0.5, cosine=False, warm=True, lr_decay_epochs=[100])
    assert supcontrast(1, 0, **step) == pytest.approx(0.01)  # first step of the first epoch
    assert supcontrast(1, 5, **step) == pytest.approx(0.01 + 0.05 * 0.49)  # 5 of 100 steps
    assert supcontrast(6, 0, **step) == pytest.approx(0.255)  # half way: 0.01 + 0.5 * 0.49
    assert supcontrast(10, 9, **step) == pytest.approx(0.01 + 0.99 * 0.49)  # last warm step
    assert supcontrast(11, 0, **step) == 0.5  # after warm-up: the epoch schedule
    assert supcontrast(1, 0, **dict(step, warm=False)) == 0.5
    # with the cosine, the warm-up ends where the cosine stands at epoch 10
    target = supcontrast(10, warm=False)
    assert supcontrast(10, 9, warm=True) == pytest.approx(0.01 + 0.99 * (target - 0.01))


def test_a_longer_warm_up_from_a_lower_rate():
    # PySlowFast's contrastive configs: 35 epochs from 0.001
    long = dict(learning_rate=0.1, cosine=False, warm=True, warm_epochs=35, warmup_from=0.001, lr_decay_epochs=[300])
    assert supcontrast(1, 0, **long) == pytest.approx(0.001)
    assert supcontrast(18, 5, **long) == pytest.approx(0.001 + (175 / 350) * 0.099)  # 175 of 350 steps
    assert supcontrast(35, 9, **long) == pytest.approx(0.001 + (349 / 350) * 0.099)
    assert supcontrast(36, 0, **long) == 0.1


def test_a_deeper_mlp_head(monkeypatch):
    args = parse('main_moco', ['--mlp', '--mlp_layers', '3', '--moco_k', '256'], monkeypatch)
    assert '_mlp3_' in args.run_name + '_'
    import main_moco
    model = main_moco.set_model(argparse.Namespace(**{**vars(args), 'model': 'resnet18', 'width': 8, 'device': 'cpu',
                                                      'world_size': 1, 'syncBN': False, 'rank': 0}))[0]
    assert [tuple(m.weight.shape) for m in model.head if isinstance(m, torch.nn.Linear)] == [(64, 64), (64, 64), (128, 64)]
    supcon = SupConResNet('resnet18', width=8, mlp_layers=3)
    assert [tuple(m.weight.shape) for m in supcon.head if isinstance(m, torch.nn.Linear)] == [(64, 64), (64, 64), (128, 64)]
    assert list(SupConResNet('resnet18', width=8).head.state_dict()) == ['0.weight', '0.bias', '2.weight', '2.bias']


def test_warm_up_options(monkeypatch):
    args = parse('main_moco', ['--warm', '--warm_epochs', '35', '--warmup_from', '0.001', '--cos'], monkeypatch)
    assert args.run_name.endswith('_cosine_warm_35_from_0.001')
    import main_moco
    assert main_moco.lr_at(args, 1, 0, 10) == pytest.approx(0.001)
    assert main_moco.lr_at(args, 35, 9, 10) == pytest.approx(0.001 + 349 / 350 * (optim.cosine(0.03, 35 / 200) - 0.001))
    for script, argv, needle in [('main_supcon', ['--warm_epochs', '35'], '--warm_epochs: it shapes the warm-up'),
                                 ('main_moco', ['--warm', '--warm_epochs', '0'], 'must be > 0'),
                                 ('main_moco', ['--mlp_layers', '3'], '--mlp_layers: it shapes the --mlp head'),
                                 ('main_supcon', ['--head', 'linear', '--mlp_layers', '3'], 'this run has --head linear'),
                                 ('main_sce', ['--warmup_from', '0.1'], 'for --warmup_epochs')]:
        with pytest.raises(util.UserError, match=needle):
            parse(script, argv, monkeypatch)


# ----------------------------------------------------------------------------- options, run names

def test_supcon_seed_command_run_name_and_warmup(monkeypatch):
    args = parse('main_supcon', '--dataset cifar10 --method SupCon --batch_size 400 --learning_rate 0.5 '
                 '--temp 0.1 --cosine --epochs 300'.split(), monkeypatch)
    assert args.run_name == 'SupCon_cifar10_resnet50_lr_0.5_decay_0.0001_bsz_400_temp_0.1_trial_0_cosine_warm'
    assert args.warm is True  # batch > 256 forces warm-up
    # from 0.01 at the first step to eta_min + (lr - eta_min) (1 + cos(pi 10 / 300)) / 2 after 10 epochs,
    # eta_min = 0.0005, cos(6 deg) = 0.994521895368
    assert optim.supcontrast_lr(args, 1, 0, 100) == pytest.approx(0.01)
    assert optim.supcontrast_lr(args, 10, 99, 100) == pytest.approx(0.01 + 0.999 * (0.49863184336823 - 0.01))
    assert os.path.normpath(args.save_folder) == os.path.normpath(
        './save/SupCon/cifar10_models/SupCon_cifar10_resnet50_lr_0.5_decay_0.0001_bsz_400_temp_0.1_trial_0_cosine_warm')
    assert os.path.normpath(args.tb_folder) == os.path.normpath(
        './save/SupCon/cifar10_tensorboard/SupCon_cifar10_resnet50_lr_0.5_decay_0.0001_bsz_400_temp_0.1_trial_0_cosine_warm')
    assert args.lr_decay_epochs == [700, 800, 900]


def test_small_batch_is_not_warmed_and_warmup_to_without_cosine(monkeypatch):
    args = parse('main_supcon', '--dataset path --data_folder ./datasets/animals10_300x300/train/ --learning_rate 0.5 '
                 '--temp 0.1 --cosine --model resnet18 --epochs 300 --size 300 --batch_size 26 --method SupCon '
                 '--mean (0.3837,0.3704,0.3072) --std (0.3268,0.3187,0.3051)'.split(), monkeypatch)
    assert args.run_name == 'SupCon_path_resnet18_lr_0.5_decay_0.0001_bsz_26_temp_0.1_trial_0_cosine'
    assert args.warm is False
    assert args.mean == (0.3837, 0.3704, 0.3072) and args.std == (0.3268, 0.3187, 0.3051)
    assert args.stem == 'imagenet'  # 300 px images get the downsampling stem

    args = parse('main_supcon', ['--batch_size', '256'], monkeypatch)
    assert args.warm is False and not args.run_name.endswith('_warm')
    args = parse('main_supcon', ['--batch_size', '257', '--learning_rate', '0.3'], monkeypatch)
    assert args.warm is True and args.run_name.endswith('_trial_0_warm')
    assert optim.supcontrast_lr(args, 10, 99, 100) == pytest.approx(0.01 + 0.999 * 0.29)  # step: to the base lr
    args = parse('main_supcon', ['--warm', '--width', '16'], monkeypatch)
    assert args.run_name == 'SupCon_cifar10_resnet50_lr_0.05_decay_0.0001_bsz_256_temp_0.07_trial_0_warm_width_16'


def test_ce_seed_command_run_name(monkeypatch):
    args = parse('main_ce', '--batch_size 1024 --learning_rate 0.8 --cosine --syncBN'.split(), monkeypatch)
    assert args.run_name == 'SupCE_cifar10_resnet50_lr_0.8_decay_0.0001_bsz_1024_trial_0_cosine_warm'
    assert args.syncBN and args.warm
    assert args.lr_decay_epochs == [350, 400, 450]


def test_options_shared_spellings(monkeypatch):
    args = parse('main_supcon', '--lr 0.3 --cos -b 64 --data /x --workers 3 --wd 0.001'.split(), monkeypatch)
    assert (args.learning_rate, args.cosine, args.batch_size, args.data_folder, args.num_workers,
            args.weight_decay) == (0.3, True, 64, '/x', 3, 0.001)


def test_parse_floats_forms():
    assert options.parse_floats('(0.5, 0.25, 0.125)', '--mean') == (0.5, 0.25, 0.125)
    assert options.parse_floats('0.5,0.25,0.125', '--mean') == (0.5, 0.25, 0.125)
    assert options.parse_floats('0.5', '--mean') == (0.5,)
    with pytest.raises(util.UserError, match='--mean'):
        options.parse_floats('(a, b)', '--mean')


def test_take_trunk_options():
    ckpt = {'args': {'model': 'resnet18', 'stem': 'cifar', 'width': 8}}
    args = argparse.Namespace(model='resnet50', stem=None, width=64)  # the defaults, not given
    checkpoints.take_trunk_options(args, ckpt, '--ckpt x', given=set())
    assert (args.model, args.stem, args.width) == ('resnet18', 'cifar', 8)
    args = argparse.Namespace(model='resnet18', stem=None, width=8)
    checkpoints.take_trunk_options(args, ckpt, '--ckpt x', {'model', 'width'})  # repeating the same options is fine
    args = argparse.Namespace(model='resnet50', stem=None, width=None)
    with pytest.raises(util.UserError, match='--model resnet50 contradicts --ckpt x'):
        checkpoints.take_trunk_options(args, ckpt, '--ckpt x', {'model'})


# ----------------------------------------------------------------------------- meters, accuracy, kNN

def test_average_meter_tensors_and_floats():
    m = util.AverageMeter()
    m.update(torch.tensor(2.0), 3)
    m.update(4.0)
    assert m.val == 4.0
    assert m.avg == pytest.approx((2 * 3 + 4) / 4)
    m.update(torch.tensor(1.0, requires_grad=True) * 2, 4)  # a graph-attached loss is detached
    assert m.val == 2.0 and m.avg == pytest.approx((6 + 4 + 8) / 8)
    assert isinstance(m.avg, float) and isinstance(m.val, float)
    m.reset()
    assert (m.val, m.avg, m.count) == (0.0, 0.0, 0)


def test_accuracy_top1_top5_hand_case():
    output = torch.tensor([
        [0.1, 0.9, 0.0, 0.0, 0.0, 0.0],   # target 1: top-1 hit
        [0.9, 0.5, 0.4, 0.3, 0.2, 0.1],   # target 4: 5th best -> top-5 hit only
        [0.9, 0.5, 0.4, 0.3, 0.2, 0.1],   # target 5: worst -> miss
    ])
    target = torch.tensor([1, 4, 5])
    top1, top5 = util.accuracy(output, target, (1, 5))
    assert top1.item() == pytest.approx(100 / 3)
    assert top5.item() == pytest.approx(200 / 3)
    # fewer classes than k: top-5 of 3 classes is always a hit
    top1, top5 = util.accuracy(torch.tensor([[0.0, 1.0, 2.0], [2.0, 1.0, 0.0]]), torch.tensor([2, 2]), (1, 5))
    assert (top1.item(), top5.item()) == (50.0, 100.0)


def test_knn_predict_weighted_vote_hand_case():
    bank = torch.tensor([[1.0, 0.0], [0.6, 0.8], [0.6, -0.8], [-1.0, 0.0]])
    labels = torch.tensor([0, 1, 1, 0])
    q = torch.tensor([[1.0, 0.0]])
    # k=3 neighbours of q: sims 1 (class 0), 0.6 and 0.6 (class 1); the 4th (sim -1) is out.
    # t=0.1: class 0 gets e^10 = 22026, class 1 gets 2 e^6 = 807 -> 0 (a plain majority says 1)
    assert knn_predict(q, bank, labels, 2, k=3, t=0.1).tolist() == [0]
    # t=1: class 0 gets e^1 = 2.72, class 1 gets 2 e^0.6 = 3.64 -> 1
    assert knn_predict(q, bank, labels, 2, k=3, t=1.0).tolist() == [1]
    # k=1: nearest only; k larger than the bank: all four vote (class 0: e^1 + e^-1 = 3.09 < 3.64)
    assert knn_predict(q, bank, labels, 2, k=1, t=1.0).tolist() == [0]
    assert knn_predict(q, bank, labels, 2, k=200, t=1.0).tolist() == [1]
    # chunked queries give the same answers
    qs = torch.tensor([[1.0, 0.0], [-1.0, 0.0], [0.0, 1.0], [0.0, -1.0]])
    assert knn_predict(qs, bank, labels, 2, k=1, chunk=1).tolist() == [0, 0, 1, 1]
    assert knn_predict(qs, bank, labels, 3, k=1, chunk=3).tolist() == [0, 0, 1, 1]


# ----------------------------------------------------------------------------- checkpoints

def small_run(tmp_path):
    torch.manual_seed(0)
    model = SupConResNet('resnet18', width=4, feat_dim=8)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.randn(4, 3, 8, 8)).sum().backward()
    opt.step()
    args = argparse.Namespace(model='resnet18', width=4, stem='cifar', lr_decay_epochs=[700, 800],
                              mean=(0.5, 0.5, 0.5), device=torch.device('cpu'), resume=None, seed=0, epochs=10)
    return model, opt, args


def test_checkpoint_round_trip(tmp_path):
    model, opt, args = small_run(tmp_path)
    path = str(tmp_path / 'run' / 'last.pth')
    random.seed(1), np.random.seed(1), torch.manual_seed(1)
    checkpoints.save_checkpoint(path, method='SupCon', args=args, epoch=7, model=model, optimizer=opt,
                         scaler=util.grad_scaler(argparse.Namespace(device=torch.device('cpu'), amp='none')),
                         queue=torch.arange(6.0).view(2, 3))
    after = (random.random(), np.random.rand(), torch.rand(1))
    assert os.listdir(tmp_path / 'run') == ['last.pth']  # no temporary file left behind

    ckpt = torch.load(path, map_location='cpu', weights_only=True)
    assert {'method', 'args', 'epoch', 'model', 'optimizer', 'scaler', 'rng', 'queue'} <= ckpt.keys()
    assert checkpoints.load_checkpoint(path).keys() == ckpt.keys()
    assert ckpt['method'] == 'SupCon' and ckpt['epoch'] == 7
    assert ckpt['args']['lr_decay_epochs'] == [700, 800] and ckpt['args']['mean'] == [0.5, 0.5, 0.5]
    assert ckpt['args']['device'] == 'cpu' and ckpt['args']['resume'] is None
    assert torch.equal(ckpt['queue'], torch.arange(6.0).view(2, 3))
    state = model.state_dict()
    assert ckpt['model'].keys() == state.keys()
    assert all(torch.equal(ckpt['model'][k], v) for k, v in state.items())
    assert any(k.startswith('encoder.') for k in ckpt['model'])
    assert len(checkpoints.trunk_state_dict(ckpt)) == len(model.encoder.state_dict())

    # the optimiser state (momentum) and RNG states restore exactly
    model2 = SupConResNet('resnet18', width=4, feat_dim=8)
    opt2 = torch.optim.SGD(model2.parameters(), lr=0.1, momentum=0.9)
    args.rank, args.resume = 0, path
    first = checkpoints.restore(dict(ckpt, path=path), args, model2, opt2, None, 'SupCon')
    assert first == 8
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), model2.state_dict().values()))
    for p, p2 in zip(model.parameters(), model2.parameters()):
        assert torch.equal(opt.state[p]['momentum_buffer'], opt2.state[p2]['momentum_buffer'])
    assert (random.random(), np.random.rand(), torch.rand(1)) == after


def test_checkpoint_write_is_atomic(tmp_path, monkeypatch):
    model, opt, args = small_run(tmp_path)
    path = tmp_path / 'last.pth'
    checkpoints.save_checkpoint(str(path), method='SupCon', args=args, epoch=1, model=model, optimizer=opt)
    before = path.read_bytes()

    def disk_full(obj, f, *a, **k):  # writes part of the file, then fails like a full disk
        f.write(b'PK\x03\x04 half a checkpoint')
        raise OSError(28, 'No space left on device')

    monkeypatch.setattr(torch, 'save', disk_full)
    with pytest.raises(util.UserError, match=r'cannot write .*last.pth: No space left on device \(disk full\?\)'):
        checkpoints.save_checkpoint(str(path), method='SupCon', args=args, epoch=2, model=model, optimizer=opt)
    assert path.read_bytes() == before  # the previous last.pth is untouched
    assert os.listdir(tmp_path) == ['last.pth']  # and nothing half-written is left beside it
    monkeypatch.undo()
    assert checkpoints.load_checkpoint(str(path))['epoch'] == 1


def test_load_checkpoint_rejects_what_is_not_ours(tmp_path):
    with pytest.raises(util.UserError, match='does not exist'):
        checkpoints.load_checkpoint(str(tmp_path / 'missing.pth'))
    text = tmp_path / 'notes.pth'
    text.write_text('hello\n')
    with pytest.raises(util.UserError, match='is not a checkpoint of this project'):
        checkpoints.load_checkpoint(str(text))
    other = tmp_path / 'other.pth'
    torch.save({'state_dict': {'w': torch.zeros(1)}}, other)
    with pytest.raises(util.UserError, match='is not a checkpoint of this project'):
        checkpoints.load_checkpoint(str(other))
    pickled = tmp_path / 'pickled.pth'
    torch.save({'method': 'x', 'args': argparse.Namespace(a=1), 'model': {}}, pickled)  # SupContrast's 'opt' style
    with pytest.raises(util.UserError, match='is not a checkpoint of this project'):
        checkpoints.load_checkpoint(str(pickled))


def test_load_state_mismatch_is_a_user_error():
    trunk = SupConResNet('resnet18', width=4).encoder
    other = SupConResNet('resnet18', width=8).encoder
    with pytest.raises(util.UserError, match='--ckpt x does not fit the model: .*size mismatch'):
        checkpoints.load_state(trunk, other.state_dict(), '--ckpt x')


# ----------------------------------------------------------------------------- samplers

def batches(sampler, size):
    items = list(sampler)
    return [items[i:i + size] for i in range(0, len(items), size)]


@pytest.mark.parametrize('world', [2, 4])
def test_seeded_sampler_shards_make_up_the_single_process_batch(world):
    n, batch = 48, 8
    single = SeededSampler(n, seed=3)
    shards = [SeededSampler(n, seed=3, rank=r, world=world) for r in range(world)]
    for epoch in (1, 2):
        for s in [single, *shards]:
            s.set_epoch(epoch)
        per_rank = [batches(s, batch // world) for s in shards]
        for step, expected in enumerate(batches(single, batch)):
            got = [pair for rank in per_rank for pair in rank[step]]
            assert sorted(got) == sorted(expected)  # same indices with the same per-sample seeds
    one = list(single)  # epoch 2
    single.set_epoch(1)
    two = list(single)
    assert [i for i, _ in one] != [i for i, _ in two]  # epochs are shuffled differently
    assert sorted(i for i, _ in two) == list(range(n))


def test_seeded_sampler_pads_like_distributed_sampler_and_shard_sampler_does_not():
    shards = [list(SeededSampler(10, seed=0, rank=r, world=3)) for r in range(3)]
    assert [len(s) for s in shards] == [4, 4, 4]
    assert set(i for s in shards for i, _ in s) == set(range(10))
    evals = [list(ShardSampler(10, r, 3)) for r in range(3)]
    assert evals == [[0, 3, 6, 9], [1, 4, 7], [2, 5, 8]]


def test_bad_option_values_are_user_errors(monkeypatch):
    with pytest.raises(util.UserError, match='--batch_size 0: must be > 0'):
        parse('main_supcon', ['--batch_size', '0'], monkeypatch)
    with pytest.raises(util.UserError, match='--lr_decay_epochs must be comma-separated integers'):
        parse('main_ce', ['--lr_decay_epochs', '10,x'], monkeypatch)
    with pytest.raises(util.UserError, match='--mean and --std go together'):
        parse('main_supcon', ['--std', '(0.2, 0.2, 0.2)'], monkeypatch)
