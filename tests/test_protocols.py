"""The evaluation protocols as released: the linear schedules of SCE and CLSA at their first and last
epoch (and step), the N(0, 0.01) heads and the batch-scaled rate of the video evaluations, the top-5
that goes with the best top-1, the released linear-evaluation commands of MoCo and CLSA through
main_linear.py, and the protocol main_linear.py picks for each method's checkpoint."""
import argparse
import math
import re
import sys

import pytest
import torch

import classifier
import evaluation
import main_ce
import main_linear
import util
from conftest import assert_user_error, check_ok, load, make_image_folder, only_file, run_script
from networks.resnet_big import build_trunk


def parse(module, argv, monkeypatch):
    monkeypatch.setattr(sys, 'argv', [f'{module.__name__}.py', *map(str, argv)])
    return module.parse_option()


def linear_args(ckpt, shared_data, monkeypatch, *extra):
    train, test = shared_data
    return parse(main_linear, ['--ckpt', ckpt, '--dataset', 'path', '--data_folder', train, '--test_folder', test,
                               *extra], monkeypatch)


def relabelled(tiny_ckpt, tmp_path, method, **args):
    """The tiny SupCon checkpoint as if `method` had written it (its saved options updated by args)."""
    ckpt = load(tiny_ckpt)
    ckpt['method'] = method
    ckpt['args'].update(args)
    path = tmp_path / f'{method}.pth'
    torch.save(ckpt, path)
    return str(path)


def published(tmp_path, layout, model='resnet18', stem='cifar', width=8, **extra):
    """A checkpoint file in an authors' layout holding a random trunk (no training needed)."""
    trunk = build_trunk(model, stem=stem, width=width).state_dict()
    if layout == 'moco':  # MoCo's main_moco (CLSA's adds best_acc): the query encoder under module.encoder_q.
        obj = {'epoch': 200, 'arch': model, 'state_dict': {f'module.encoder_q.{k}': v for k, v in trunk.items()},
               **extra}
    elif layout == 'supcontrast':
        obj = {'model': {f'encoder.module.{k}': v for k, v in trunk.items()}, 'epoch': 1000}
    elif layout == 'torchvision':
        obj = {**trunk, 'fc.weight': torch.zeros(10, 8 * width), 'fc.bias': torch.zeros(10)}
    else:  # eztorch: the bare trunk
        obj = trunk
    path = tmp_path / f'{layout}.pth.tar'
    torch.save(obj, path)
    return str(path)


def imagenet_like(root):
    """DIR/train and DIR/val, as MoCo's and CLSA's lincls read an ImageNet folder."""
    make_image_folder(root / 'train', 3, 4, seed=11)
    make_image_folder(root / 'val', 3, 2, seed=12)
    return str(root)


# ----------------------------------------------------------------------------- item 8: schedules

def test_sce_linear_schedule_is_eztorchs_per_step_cosine(tiny_ckpt, shared_data, monkeypatch):
    args = linear_args(tiny_ckpt, shared_data, monkeypatch, '--protocol', 'sce', '--batch_size', '1024')
    assert (args.warmup_epochs, args.epochs, args.learning_rate) == (0, 90, 0.4)  # 0.1 per 256 x 1024
    steps = 1251
    total = args.epochs * steps
    assert classifier.lr_at(args, 1, 0, steps) == pytest.approx(0.4)  # full rate at the first step
    assert classifier.lr_at(args, 1, 1, steps) < 0.4  # per step, not per epoch
    # the 90th epoch trains (it ran at 0 when the per-epoch cosine was shifted by one epoch)
    assert classifier.lr_at(args, 90, 0, steps) == pytest.approx(0.4 * (1 + math.cos(math.pi * 89 / 90)) / 2)
    last = classifier.lr_at(args, 90, steps - 1, steps)
    assert last == pytest.approx(0.4 * (1 + math.cos(math.pi * (total - 1) / total)) / 2) and 0 < last < 1e-6


def test_clsa_linear_schedule_starts_at_full_rate(tiny_ckpt, shared_data, monkeypatch):
    args = linear_args(tiny_ckpt, shared_data, monkeypatch, '--protocol', 'clsa')
    assert (args.learning_rate, args.final_lr, args.epochs, args.cosine) == (10.0, 0.01, 100, True)
    lrs = [classifier.lr_at(args, epoch, step, 5) for epoch in range(1, 101) for step in range(5)]
    assert lrs[0] == lrs[4] == 10.0  # the first epoch at the full rate, per epoch
    # CLSA's authors' lincls: 0.01 + (lr - 0.01) (1 + cos(pi e / epochs)) / 2, e = 0 .. 99
    assert lrs[-1] == pytest.approx(0.01 + 9.99 * (1 + math.cos(math.pi * 99 / 100)) / 2)
    assert 0.01 < lrs[-1] < 0.0125 and lrs == sorted(lrs, reverse=True)
    # the final rate is 0.01 whatever --learning_rate says; --lr_decay_rate no longer sets it
    args = linear_args(tiny_ckpt, shared_data, monkeypatch, '--protocol', 'clsa', '--learning_rate', '1')
    assert classifier.lr_at(args, 51, 0, 5) == pytest.approx(0.01 + 0.99 / 2)
    for refused in (['--lr_decay_rate', '0.5'], ['--warm']):  # neither would take effect
        with pytest.raises(util.UserError, match=refused[0]):
            linear_args(tiny_ckpt, shared_data, monkeypatch, '--protocol', 'clsa', *refused)


def test_moco_and_supcon_linear_schedules(tiny_ckpt, shared_data, monkeypatch):
    args = linear_args(tiny_ckpt, shared_data, monkeypatch, '--protocol', 'moco')
    # MoCo's lincls counts epochs from 0 and decays at epoch >= 60 and 80: our 61st and 81st
    assert [classifier.lr_at(args, e, 0, 3) for e in (1, 60, 61, 80, 81, 100)] == \
        pytest.approx([30, 30, 3, 3, 0.3, 0.3])
    args = linear_args(tiny_ckpt, shared_data, monkeypatch)
    assert [classifier.lr_at(args, e, 0, 3) for e in (1, 60, 61, 76, 91)] == \
        pytest.approx([0.1, 0.1, 0.02, 0.004, 0.0008])  # SupContrast's x0.2 at 60, 75, 90


# ----------------------------------------------------------------------------- items 9, 10: video heads and rate

def video_ckpt(tmp_path):
    """One of our checkpoints with a tiny R3D-18 trunk, as SCE's video pretraining writes it."""
    path = tmp_path / 'sce_video.pth'
    if path.exists():
        return str(path)
    trunk = build_trunk('r3d18', width=4)
    torch.save({'method': 'SCE', 'epoch': 1, 'model': {f'encoder.{k}': v for k, v in trunk.state_dict().items()},
                'args': {'model': 'r3d18', 'stem': 'imagenet', 'width': 4, 'size': 32, 'num_frames': 2,
                         'run_name': 'SCE_video'}}, path)
    return str(path)


def assert_normal_head(fc):
    assert fc.bias.abs().max() == 0
    assert fc.weight.mean().abs() < 0.002 and fc.weight.std().item() == pytest.approx(0.01, rel=0.1)


def on_cpu(args, n_classes):
    args.n_classes, args.device, args.world_size, args.channels_last = n_classes, torch.device('cpu'), 1, False
    return args


def test_video_linear_probe_head_is_initialised_as_pytorchvideo(tmp_path, monkeypatch):
    torch.manual_seed(0)
    args = parse(main_linear, ['--ckpt', video_ckpt(tmp_path), '--dataset', 'video', '--data_folder', tmp_path,
                               '--test_folder', tmp_path], monkeypatch)
    assert (args.protocol, args.protocol_source, args.fc_init) == ('video', 'the video dataset video', 'normal')
    probe, _ = main_linear.set_model(on_cpu(args, 400))
    assert_normal_head(probe.classifier.fc)  # 400 x 32 weights


def start_until_the_data(module, args, monkeypatch):
    """module.main() with these args, stopped where it would build its loaders (what it printed
    before stays in capsys)."""
    def stop(args):
        raise util.UserError('stopped before the data')
    monkeypatch.setattr(module, 'parse_option', lambda: args)
    monkeypatch.setattr(module, 'set_loader', stop)
    with pytest.raises(util.UserError, match='stopped before the data'):
        module.main()


def finetuning_args(tmp_path, monkeypatch, *extra):
    return parse(main_ce, ['--pretrained', video_ckpt(tmp_path), '--dataset', 'ucf101', '--data_folder', tmp_path,
                           '--num_frames', '2', *extra], monkeypatch)


def test_video_finetuning_head_is_initialised_as_pytorchvideo(tmp_path, monkeypatch):
    torch.manual_seed(0)
    model = main_ce.set_model(on_cpu(finetuning_args(tmp_path, monkeypatch), 101))
    assert_normal_head(model.fc)  # 101 x 32 weights; PyTorch's default would have std 0.1 here
    assert all(torch.equal(v, load(video_ckpt(tmp_path))['model'][f'encoder.{k}'])
               for k, v in model.encoder.state_dict().items())


@pytest.mark.parametrize('batch, lr', [([], 0.025), (['--batch_size', '256'], 0.1), (['--batch_size', '32'], 0.0125)])
def test_video_finetuning_rate_scales_with_the_batch(tmp_path, monkeypatch, batch, lr):
    assert finetuning_args(tmp_path, monkeypatch, *batch).learning_rate == pytest.approx(lr)


def test_video_finetuning_rate_is_printed_and_documented(tmp_path, monkeypatch, capsys):
    assert finetuning_args(tmp_path, monkeypatch, '--learning_rate', '0.3').learning_rate == 0.3  # given: as is
    args = finetuning_args(tmp_path, monkeypatch, '--batch_size', '128')
    start_until_the_data(main_ce, args, monkeypatch)
    assert 'video fine-tuning: lr 0.05 (= 0.1 per 256 clips x batch 128 / 256), epochs 200' in capsys.readouterr().out
    text = ' '.join(run_script('main_ce.py', '--help', '--dataset', 'ucf101', cwd=tmp_path).stdout.split())
    assert 'videos: 0.1 per 256 clips x --batch_size / 256 unless given (0.025 at batch 64)' in text


# ----------------------------------------------------------------------------- item 11: the best epoch's top-5

def test_best_top1_is_reported_with_the_top5_of_its_epoch(monkeypatch, capsys):
    results = iter([(1.0, 50.0, 90.0), (0.9, 60.0, 70.0), (0.8, 55.0, 99.0)])  # (loss, top-1, top-5) per epoch
    monkeypatch.setattr(evaluation, 'evaluate', lambda model, loader, args: next(results))
    validation = evaluation.Validation(None, None, argparse.Namespace(val_freq=1, epochs=3), None)
    assert [validation(e)[0] for e in (1, 2, 3)] == [True, True, False]
    assert (validation.best_acc, validation.best_acc5) == (60.0, 70.0)  # not the best top-5 (99) of any epoch
    validation.report()
    assert capsys.readouterr().out.strip() == 'best accuracy: 60.00 (top-5 70.00)'


# ----------------------------------------------------------------------------- item 13: released commands

def test_mocos_released_lincls_command_runs(tmp_path):
    data = imagenet_like(tmp_path / 'imagenet')
    ckpt = published(tmp_path, 'moco', model='resnet50', stem='imagenet')
    # MoCo's README, with data paths, sizes, epochs and batch swapped (and no workers, seeded)
    released = ['-a', 'resnet50', '--lr', '30.0', '--batch-size', '8', '--pretrained', ckpt,
                '--dist-url', 'tcp://localhost:10001', '--multiprocessing-distributed', '--world-size', '1',
                '--rank', '0', data]
    tiny = ['--size', '32', '--epochs', '1', '--num_workers', '0', '--seed', '0']
    # one process on a CPU: --multiprocessing-distributed (one process per GPU) is refused, as by main_moco.py
    assert_user_error(run_script('main_linear.py', *released, *tiny, cwd=tmp_path / 'mp'), tmp_path / 'mp',
                      '--multiprocessing-distributed', 'none is visible')
    released.remove('--multiprocessing-distributed')  # its one-node launcher flags run
    proc = check_ok(run_script('main_linear.py', *released, *tiny, cwd=tmp_path / 'run'))
    assert re.search(r'^linear protocol moco \(a published checkpoint in the moco layout .*\): lr 30, epochs 1, '
                     r'weight decay 0, fc init normal, dataset imagenet$', proc.stdout, re.M), proc.stdout
    assert re.search(r'^best accuracy: [\d.]+ \(top-5 [\d.]+\)$', proc.stdout, re.M), proc.stdout
    saved = load(only_file(tmp_path / 'run' / 'save'))
    a = saved['args']
    assert (a['model'], a['learning_rate'], a['batch_size'], a['dataset'], a['data_folder'], a['protocol']) == \
        ('resnet50', 30.0, 8, 'imagenet', data, 'moco')
    assert (a['lr_decay_epochs'], a['weight_decay'], a['fc_init'], a['nodes'], a['node_rank']) == ([60, 80], 0.0,
                                                                                                  'normal', 1, 0)


def test_clsas_released_lincls_command_runs(tiny_ckpt, tmp_path):
    data = imagenet_like(tmp_path / 'imagenet')
    ckpt = relabelled(tiny_ckpt, tmp_path, 'CLSA')  # one of our CLSA checkpoints: CLSA's protocol
    # CLSA's README, with data paths, epochs and batch swapped (and no workers, seeded)
    proc = check_ok(run_script('main_linear.py', f'--data={data}', '--dist-url=tcp://localhost:10001',
                               f'--pretrained={ckpt}', '--epochs', '2', '--batch_size', '8', '--num_workers', '0',
                               '--seed', '0', cwd=tmp_path))
    assert 'linear protocol clsa (a CLSA checkpoint): lr 10, epochs 2, weight decay 0, fc init normal, ' \
           'dataset imagenet' in proc.stdout, proc.stdout
    a = load(only_file(tmp_path / 'save'))['args']
    assert (a['dataset'], a['data_folder'], a['learning_rate'], a['final_lr'], a['cosine']) == \
        ('imagenet', data, 10.0, 0.01, True)


def test_a_published_clsa_checkpoint_is_read_as_mocos_layout(tmp_path, monkeypatch):
    # CLSA publishes MoCo's layout (plus best_acc): the protocol is MoCo's unless --protocol clsa says so
    data = imagenet_like(tmp_path / 'imagenet')
    ckpt = published(tmp_path, 'moco', best_acc=0.0)
    args = parse(main_linear, [f'--data={data}', '--dist-url=tcp://localhost:10001', f'--pretrained={ckpt}'],
                 monkeypatch)
    assert (args.protocol, args.dataset) == ('moco', 'imagenet') and '--protocol clsa' in args.protocol_source
    args = parse(main_linear, [f'--data={data}', f'--pretrained={ckpt}', '--protocol', 'clsa'], monkeypatch)
    assert (args.protocol, args.protocol_source, args.learning_rate) == ('clsa', 'given', 10.0)


def test_positional_folder_is_an_imagenet_folder(tiny_ckpt, tmp_path, monkeypatch):
    data = imagenet_like(tmp_path / 'imagenet')
    args = parse(main_linear, ['--ckpt', tiny_ckpt, data], monkeypatch)
    assert (args.dataset, args.data_folder, args.protocol) == ('imagenet', data, 'supcon')
    with pytest.raises(util.UserError, match='--data_folder'):
        parse(main_linear, ['--ckpt', tiny_ckpt, data, '--data_folder', data], monkeypatch)
    assert parse(main_linear, ['--ckpt', tiny_ckpt, data, '--dataset', 'path', '--test_folder', data],
                 monkeypatch).dataset == 'path'


@pytest.mark.parametrize('method, protocol', [('SupCon', 'supcon'), ('SimCLR', 'supcon'), ('SupCE', 'supcon'),
                                              ('MoCo', 'moco'), ('SCE', 'sce'), ('CLSA', 'clsa')])
def test_protocol_of_the_method_that_wrote_the_checkpoint(tiny_ckpt, shared_data, tmp_path, monkeypatch, method,
                                                          protocol):
    args = linear_args(relabelled(tiny_ckpt, tmp_path, method), shared_data, monkeypatch)
    assert (args.protocol, args.protocol_source) == (protocol, f'a {method} checkpoint')
    for key, value in main_linear.PROTOCOLS[protocol].items():
        if key not in ('dataset', 'learning_rate', 'lr_decay_epochs'):  # --dataset path given; derived below
            assert getattr(args, key) == value, key
    given = linear_args(relabelled(tiny_ckpt, tmp_path, method), shared_data, monkeypatch, '--protocol', 'supcon')
    assert (given.protocol, given.protocol_source) == ('supcon', 'given')


@pytest.mark.parametrize('layout, protocol', [('supcontrast', 'supcon'), ('torchvision', 'supcon'), ('moco', 'moco'),
                                              ('eztorch', 'sce')])
def test_protocol_of_a_published_checkpoint(shared_data, tmp_path, monkeypatch, layout, protocol):
    args = linear_args(published(tmp_path, layout), shared_data, monkeypatch)
    assert args.protocol == protocol and layout in args.protocol_source


def test_protocol_of_a_linear_probe_and_of_video(tiny_ckpt, shared_data, tmp_path, monkeypatch):
    probe = relabelled(tiny_ckpt, tmp_path, 'Linear', protocol='moco')
    assert linear_args(probe, shared_data, monkeypatch).protocol == 'moco'
    with pytest.raises(util.UserError, match='reads videos'):  # a video trunk on images: said plainly
        linear_args(video_ckpt(tmp_path), shared_data, monkeypatch)


def test_the_applied_protocol_is_printed(tiny_ckpt, shared_data, tmp_path, monkeypatch, capsys):
    args = linear_args(relabelled(tiny_ckpt, tmp_path, 'SCE'), shared_data, monkeypatch, '--batch_size', '512')
    start_until_the_data(main_linear, args, monkeypatch)
    assert capsys.readouterr().out.splitlines()[0] == (
        'linear protocol sce (a SCE checkpoint): lr 0.2 (= 0.1 per 256 x batch 512 / 256), epochs 90, weight decay 0, '
        'fc init normal, dataset path')
