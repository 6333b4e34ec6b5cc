"""End to end: the scripts run on tiny data (digits, built in; tiny ImageFolders of random PNGs),
write SupContrast's save folders and checkpoints every other script can read, and accept every
command of the SupContrast README."""
import argparse
import importlib
import os
import re
import shlex
import sys

import pytest
import torch

import checkpoints
from conftest import SMALL, assert_user_error, check_ok, load, only_file, run_script
from networks.resnet_big import SupConResNet

CKPT_KEYS = {'method', 'args', 'epoch', 'model', 'optimizer', 'scaler', 'rng'}
DIGITS_RUN = 'SupCon_digits_resnet18_lr_0.05_decay_0.0001_bsz_64_temp_0.07_trial_0_width_8'


@pytest.fixture(scope='module')
def digits_supcon(tmp_path_factory):
    """SupCon on digits for one epoch with the kNN monitor on: (cwd, process, last.pth)."""
    cwd = tmp_path_factory.mktemp('digits_supcon')
    proc = check_ok(run_script('main_supcon.py', '--dataset', 'digits', '--batch_size', '64', '--epochs', '1',
                               '--knn_freq', '1', '--batch_size_val', '256', *SMALL, cwd=cwd))
    return cwd, proc, cwd / 'save' / 'SupCon' / 'digits_models' / DIGITS_RUN / 'last.pth'


def assert_our_checkpoint(path, method, epoch):
    ckpt = torch.load(path, map_location='cpu', weights_only=True)
    assert CKPT_KEYS <= ckpt.keys()
    assert ckpt['method'] == method and ckpt['epoch'] == epoch
    assert isinstance(ckpt['args'], dict)
    assert any(k.startswith('encoder.') for k in ckpt['model'])
    assert all(torch.isfinite(v).all() for v in ckpt['model'].values() if v.is_floating_point())
    return ckpt


def test_supcon_digits_writes_supcontrast_layout(digits_supcon):
    cwd, proc, last = digits_supcon
    assert last.is_file(), proc.stdout
    ckpt = assert_our_checkpoint(last, 'SupCon', 1)
    assert ckpt['args']['model'] == 'resnet18' and ckpt['args']['width'] == 8
    assert ckpt['args']['run_name'] == DIGITS_RUN
    assert {'encoder.conv1.weight', 'encoder.layer4.1.bn2.running_var', 'head.0.weight'} <= ckpt['model'].keys()
    assert ckpt['model']['encoder.conv1.weight'].shape == (8, 3, 3, 3)
    assert ckpt['optimizer']['state'], 'the optimiser state (momentum) is saved'
    assert re.search(r'^epoch 1, total time [\d.]+, loss [\d.]+', proc.stdout, re.M)
    assert not list((cwd / 'save').rglob('ckpt_epoch_*.pth'))  # --save_freq 50 by default


def test_knn_monitor_prints_and_logs_to_tensorboard(digits_supcon):
    cwd, proc, _ = digits_supcon
    printed = {int(e): float(a) for e, a in re.findall(r'^epoch (\d+), kNN accuracy ([\d.]+)$', proc.stdout, re.M)}
    assert 1 in printed, proc.stdout  # after the last epoch (and epoch 0: the random trunk)
    assert 20 < printed[1] <= 100  # far above chance (10%) even for a tiny trunk on digits
    tb = cwd / 'save' / 'SupCon' / 'digits_tensorboard' / DIGITS_RUN
    events = list(tb.glob('events.out.tfevents.*'))
    assert events, f'no event file in {tb}'
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    acc = EventAccumulator(str(tb))
    acc.Reload()
    assert {'loss', 'learning_rate', 'knn_accuracy'} <= set(acc.Tags()['scalars'])
    logged = {s.step: s.value for s in acc.Scalars('knn_accuracy')}
    assert logged.keys() == printed.keys()
    assert all(logged[e] == pytest.approx(printed[e], abs=0.01) for e in printed)
    assert [s.step for s in acc.Scalars('loss')] == [1]


def test_linear_rebuilds_the_trunk_from_the_checkpoint(digits_supcon, tmp_path):
    _, _, last = digits_supcon
    proc = check_ok(run_script('main_linear.py', '--ckpt', last, '--dataset', 'digits', '--batch_size', '128',
                               '--epochs', '1', '--num_workers', '0', '--print_freq', '1000', '--seed', '0',
                               cwd=tmp_path))  # no --model, --width or --size: all from the checkpoint
    m = re.search(r'^best accuracy: ([\d.]+) \(top-5 ([\d.]+)\)$', proc.stdout, re.M)
    assert m, proc.stdout
    run = f'{DIGITS_RUN}_epoch_1_linear_digits_lr_0.1_bsz_128_trial_0'
    probe = assert_our_checkpoint(tmp_path / 'save' / 'Linear' / 'digits_models' / run / 'last.pth', 'Linear', 1)
    assert (tmp_path / 'save' / 'Linear' / 'digits_tensorboard' / run).is_dir()
    assert (probe['args']['model'], probe['args']['width'], probe['args']['size']) == ('resnet18', 8, 32)
    assert probe['best_acc'] == pytest.approx(float(m.group(1)), abs=0.01)
    # the trunk is frozen: every trunk tensor (BN statistics too) is the pretrained one
    pretrained = load(last)['model']
    trunk = {k: v for k, v in probe['model'].items() if k.startswith('encoder.')}
    assert trunk.keys() == {k for k in pretrained if k.startswith('encoder.')}
    assert all(torch.equal(v, pretrained[k]) for k, v in trunk.items())
    assert probe['model']['classifier.fc.weight'].shape == (10, 64)


def test_simclr_on_a_folder(shared_data, tmp_path):
    proc = check_ok(run_script('main_supcon.py', '--method', 'SimCLR', '--dataset', 'path', '--data_folder',
                               shared_data[0], '--batch_size', '8', '--epochs', '1', '--temp', '0.5',
                               '--knn_freq', '0', *SMALL, cwd=tmp_path))
    assert 'note: --dataset path without --mean/--std' in proc.stdout
    last = tmp_path / 'save' / 'SupCon' / 'path_models' / \
        'SimCLR_path_resnet18_lr_0.05_decay_0.0001_bsz_8_temp_0.5_trial_0_width_8' / 'last.pth'
    assert_our_checkpoint(last, 'SimCLR', 1)


def test_ce_from_scratch(shared_data, tmp_path):
    train, test = shared_data
    proc = check_ok(run_script('main_ce.py', '--dataset', 'path', '--data_folder', train, '--test_folder', test,
                               '--batch_size', '8', '--epochs', '2', '--num_classes', '3', '--save_freq', '2',
                               *SMALL, cwd=tmp_path))
    m = re.search(r'^best accuracy: ([\d.]+) \(top-5 [\d.]+\)$', proc.stdout, re.M)
    assert m, proc.stdout
    assert len(re.findall(r'^epoch \d, .* val acc [\d.]+ \(top-5 [\d.]+\), best [\d.]+$', proc.stdout, re.M)) == 2
    folder = tmp_path / 'save' / 'SupCon' / 'path_models' / 'SupCE_path_resnet18_lr_0.2_decay_0.0001_bsz_8_trial_0_width_8'
    ckpt = assert_our_checkpoint(folder / 'last.pth', 'SupCE', 2)
    assert_our_checkpoint(folder / 'ckpt_epoch_2.pth', 'SupCE', 2)
    assert ckpt['best_acc'] == pytest.approx(float(m.group(1)), abs=0.01)
    assert ckpt['model']['fc.weight'].shape == (3, 64)


def test_ce_pretrained_starts_from_the_checkpoint_trunk(tiny_ckpt, shared_data, tmp_path):
    train, test = shared_data
    # lr 0: SGD leaves the weights where they started, so the saved trunk shows where that was
    proc = check_ok(run_script('main_ce.py', '--pretrained', tiny_ckpt, '--learning_rate', '0',
                               '--dataset', 'path', '--data_folder', train, '--test_folder', test,
                               '--batch_size', '8', '--epochs', '1', '--num_workers', '0', '--print_freq', '1000',
                               '--seed', '0', cwd=tmp_path))  # no --model/--width: taken from the checkpoint
    assert 'best accuracy' in proc.stdout
    last = only_file(tmp_path / 'save')
    assert os.path.basename(os.path.dirname(last)) == \
        'SupCE_path_resnet18_lr_0.0_decay_0.0001_bsz_8_trial_0_pretrained_width_8'
    ckpt = assert_our_checkpoint(last, 'SupCE', 1)
    assert (ckpt['args']['model'], ckpt['args']['width']) == ('resnet18', 8)
    assert 'pretrained_ckpt' not in ckpt['args']
    pretrained = load(tiny_ckpt)['model']
    weights = [k for k in pretrained if k.startswith('encoder.') and k.endswith('.weight')]
    assert len(weights) > 20
    assert all(torch.equal(ckpt['model'][k], pretrained[k]) for k in weights)


def test_linear_reads_a_ce_checkpoint(shared_data, tmp_path):
    """Any checkpoint this project writes has a trunk main_linear can rebuild (here a SupCE one)."""
    train, test = shared_data
    check_ok(run_script('main_ce.py', '--dataset', 'path', '--data_folder', train, '--test_folder', test,
                        '--batch_size', '8', '--epochs', '1', '--width', '4', '--model', 'resnet18',
                        '--num_workers', '0', '--print_freq', '1000', '--seed', '0', cwd=tmp_path / 'ce'))
    ce = only_file(tmp_path / 'ce' / 'save')
    proc = check_ok(run_script('main_linear.py', '--ckpt', ce, '--dataset', 'path', '--data_folder', train,
                               '--test_folder', test, '--batch_size', '8', '--epochs', '1', '--num_workers', '0',
                               '--seed', '0', cwd=tmp_path / 'lin'))
    assert 'best accuracy' in proc.stdout
    probe = load(only_file(tmp_path / 'lin' / 'save'))
    assert probe['model']['classifier.fc.weight'].shape == (3, 32)


def test_animals10_shaped_commands_run(shared_data, tmp_path):
    """The SupContrast README's animals10 commands (--dataset path, --mean/--std, --size, --num_classes,
    --batch_size_val), with the sizes shrunk."""
    train, test = shared_data
    mean, std = '(0.5, 0.5, 0.5)', '(0.25, 0.25, 0.25)'
    proc = check_ok(run_script(
        'main_supcon.py', '--dataset', 'path', '--data_folder', train, '--learning_rate', '0.5', '--temp', '0.1',
        '--cosine', '--model', 'resnet18', '--width', '8', '--epochs', '1', '--size', '48', '--batch_size', '8',
        '--method', 'SupCon', '--mean', mean, '--std', std, '--num_workers', '0', '--seed', '0', cwd=tmp_path))
    assert 'ImageNet statistics' not in proc.stdout
    run = 'SupCon_path_resnet18_lr_0.5_decay_0.0001_bsz_8_temp_0.1_trial_0_cosine_width_8'
    ckpt_path = tmp_path / 'save' / 'SupCon' / 'path_models' / run / 'last.pth'
    ckpt = assert_our_checkpoint(ckpt_path, 'SupCon', 1)
    assert ckpt['args']['mean'] == [0.5, 0.5, 0.5] and ckpt['args']['size'] == 48
    assert (tmp_path / 'save' / 'SupCon' / 'path_tensorboard' / run).is_dir()

    proc = check_ok(run_script(
        'main_linear.py', '--batch_size', '8', '--batch_size_val', '4', '--epochs', '1', '--learning_rate', '1',
        '--model', 'resnet18', '--dataset', 'path', '--mean', mean, '--std', std, '--data_folder', train,
        '--test_folder', test, '--size', '48', '--num_classes', '3', '--ckpt', ckpt_path, '--num_workers', '0',
        '--seed', '0', cwd=tmp_path))
    assert re.search(r'^best accuracy: [\d.]+ \(top-5 [\d.]+\)$', proc.stdout, re.M), proc.stdout
    probe = assert_our_checkpoint(only_file(tmp_path / 'save' / 'Linear'), 'Linear', 1)
    assert probe['args']['size'] == 48 and probe['args']['num_classes'] == 3


# ----------------------------------------------------------------------------- the SupContrast README's commands parse

def seed_commands(ckpts):
    """Every training command of the SupContrast README, as (script, argv)."""
    mean, std = '"(0.3837, 0.3704, 0.3072)"', '"(0.3268, 0.3187, 0.3051)"'
    lines = [
        'main_supcon.py --dataset cifar10 --method SupCon --batch_size 400 --learning_rate 0.5 --temp 0.1 --cosine --epochs 300',
        f'main_linear.py --batch_size 256 --learning_rate 5 --ckpt {ckpts["resnet50"]} --epochs 100',
        './datasets/animals10_300x300/train/ --learning_rate 0.5 --temp 0.1 --cosine --model resnet18 --epochs 300 '
        f'--size 300 --batch_size 26 --method SupCon --mean {mean} --std {std}',
        'main_linear.py --batch_size 26 --batch_size_val 26 --epochs 100 --learning_rate 1 --model resnet18 '
        f'--dataset path --mean {mean} --std {std} --data_folder ./datasets/animals10_300x300/train/ '
        '--test_folder ./datasets/animals10_300x300/test/ --size 300 --num_classes 10 '
        f'--ckpt {ckpts["resnet18"]}',
        './datasets/animals10_300x300/train/ --learning_rate 0.5 --temp 0.1 --cosine --model resnet34 --epochs 500 '
        f'--size 300 --batch_size 30 --method SupCon --mean {mean} --std {std}',
        'main_linear.py --batch_size 30 --batch_size_val 30 --epochs 100 --learning_rate 1 --model resnet34 '
        f'--dataset path --mean {mean} --std {std} --data_folder ./datasets/animals10_300x300/train/ '
        '--test_folder ./datasets/animals10_300x300/test/ --size 300 --num_classes 10 '
        f'--ckpt {ckpts["resnet34"]}',
        'main_ce.py --batch_size 1024 --learning_rate 0.8 --cosine --syncBN',
        'main_supcon.py --batch_size 1024 --learning_rate 0.5 --temp 0.1 --cosine',
        f'main_linear.py --batch_size 512 --learning_rate 5 --ckpt {ckpts["resnet50"]}',
        'main_supcon.py --batch_size 1024 --learning_rate 0.5 --temp 0.5 --cosine --syncBN --method SimCLR',
        f'main_linear.py --batch_size 512 --learning_rate 1 --ckpt {ckpts["resnet50"]}',
        'main_supcon.py --batch_size 1024 --learning_rate 0.5 --temp 0.1 --cosine --dataset path --data_folder ./path '
        '--mean "(0.4914, 0.4822, 0.4465)" --std "(0.2675, 0.2565, 0.2761)" --method SimCLR',
    ]
    out = []
    for line in lines:
        if line.startswith('./'):
            line = 'main_supcon.py --dataset path --data_folder ' + line
        script, *argv = shlex.split(line)
        out.append((script, argv))
    return out


EXPECTED_SEED_RUNS = [
    'SupCon_cifar10_resnet50_lr_0.5_decay_0.0001_bsz_400_temp_0.1_trial_0_cosine_warm',
    'X_epoch_300_linear_cifar10_lr_5.0_bsz_256_trial_0',
    'SupCon_path_resnet18_lr_0.5_decay_0.0001_bsz_26_temp_0.1_trial_0_cosine',
    'X_epoch_300_linear_path_lr_1.0_bsz_26_trial_0',
    'SupCon_path_resnet34_lr_0.5_decay_0.0001_bsz_30_temp_0.1_trial_0_cosine',
    'X_epoch_300_linear_path_lr_1.0_bsz_30_trial_0',
    'SupCE_cifar10_resnet50_lr_0.8_decay_0.0001_bsz_1024_trial_0_cosine_warm',
    'SupCon_cifar10_resnet50_lr_0.5_decay_0.0001_bsz_1024_temp_0.1_trial_0_cosine_warm',
    'X_epoch_300_linear_cifar10_lr_5.0_bsz_512_trial_0',
    'SimCLR_cifar10_resnet50_lr_0.5_decay_0.0001_bsz_1024_temp_0.5_trial_0_cosine_warm',
    'X_epoch_300_linear_cifar10_lr_1.0_bsz_512_trial_0',
    'SimCLR_path_resnet50_lr_0.5_decay_0.0001_bsz_1024_temp_0.1_trial_0_cosine_warm',
]


def fake_pretrained(path, model, epoch=300):
    """A checkpoint written by checkpoints.save_checkpoint for a small SupConResNet `model` (width 8)."""
    net = SupConResNet(model, width=8, feat_dim=16)
    args = argparse.Namespace(model=model, stem='cifar', width=8, size=32, run_name='X', dataset='cifar10')
    checkpoints.save_checkpoint(str(path), method='SupCon', args=args, epoch=epoch, model=net,
                         optimizer=torch.optim.SGD(net.parameters(), lr=0.1))
    return str(path)


def test_every_seed_command_parses(tmp_path, monkeypatch):
    ckpts = {m: fake_pretrained(tmp_path / f'{m}.pth', m) for m in ('resnet18', 'resnet34', 'resnet50')}
    commands = seed_commands(ckpts)
    assert len(commands) == len(EXPECTED_SEED_RUNS)
    for (script, argv), run in zip(commands, EXPECTED_SEED_RUNS):
        monkeypatch.setattr(sys, 'argv', [script, *argv])
        args = importlib.import_module(script[:-3]).parse_option()
        assert args.run_name == run, (script, argv)
        if script == 'main_linear.py':
            assert args.width == 8  # adopted from the checkpoint
            assert os.path.normpath(args.save_folder).startswith(os.path.normpath('save/Linear/'))
    # SupContrast's tensorboard folders and checkpoint paths are where the scripts write
    monkeypatch.setattr(sys, 'argv', ['main_supcon.py', *commands[2][1]])
    args = importlib.import_module('main_supcon').parse_option()
    assert os.path.normpath(args.tb_folder) == os.path.normpath(
        './save/SupCon/path_tensorboard/SupCon_path_resnet18_lr_0.5_decay_0.0001_bsz_26_temp_0.1_trial_0_cosine')
    assert args.mean == (0.3837, 0.3704, 0.3072) and args.size == 300 and args.batch_size == 26
    monkeypatch.setattr(sys, 'argv', ['main_linear.py', *commands[5][1]])
    args = importlib.import_module('main_linear').parse_option()
    assert (args.model, args.num_classes, args.batch_size_val, args.test_folder) == \
        ('resnet34', 10, 30, './datasets/animals10_300x300/test/')


def test_mixed_precision_fp16_saves_the_scaler(shared_data, tmp_path):
    check_ok(run_script('main_supcon.py', '--dataset', 'path', '--data_folder', shared_data[0], '--amp', 'fp16',
                     '--batch_size', '8', '--epochs', '1', '--knn_freq', '0', *SMALL, cwd=tmp_path))
    ckpt = assert_our_checkpoint(only_file(tmp_path / 'save'), 'SupCon', 1)
    assert ckpt['args']['amp'] == 'fp16'
    assert ckpt['scaler'] and ckpt['scaler']['scale'] > 0
    assert all(v.dtype == torch.float32 for k, v in ckpt['model'].items() if v.is_floating_point())


def test_ce_knn_monitor(shared_data, tmp_path):
    """main_ce --knn_freq: the pretraining scripts' kNN monitor on the CE trunk (random trunk first);
    off by default, and its options refused while it is off."""
    train, test = shared_data
    data = ['--dataset', 'path', '--data_folder', train, '--test_folder', test, '--batch_size', '8']
    proc = check_ok(run_script('main_ce.py', *data, '--epochs', '2', '--knn_freq', '1', '--knn_k', '5',
                               *SMALL, cwd=tmp_path / 'on'))
    accuracies = [float(a) for a in re.findall(r'^epoch (?:\d), kNN accuracy ([\d.]+)$', proc.stdout, re.M)]
    assert len(accuracies) == 3 and all(0 <= a <= 100 for a in accuracies), proc.stdout
    assert 'kNN accuracy' not in check_ok(run_script('main_ce.py', *data, '--epochs', '1', *SMALL,
                                                     cwd=tmp_path / 'off')).stdout
    assert_user_error(run_script('main_ce.py', *data, '--epochs', '1', '--knn_k', '5', *SMALL, cwd=tmp_path / 'bad'),
                      tmp_path / 'bad', '--knn_k', '--knn_freq 0')
