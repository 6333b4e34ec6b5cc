"""Video through the scripts: SCE video pretraining (main_sce.py), the video linear protocol and
fine-tuning (main_linear.py, main_ce.py) with one-view validation then the separate multi-view test
(--test best|last), and retrieval on features averaged over the test views (main_retrieval.py), on
tiny videos made here (R3D-18 of width 4, 2 frames, 32 px); plus the pieces by hand: softmax
averaged over views, the per-step schedule, channels-last for 3D trunks, fine-tuning's colour jitter."""
import argparse
import json
import re
import sys
from types import SimpleNamespace

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import datasets
import distributed
import checkpoints
import util
import video_augment
from conftest import assert_user_error, check_ok, load, run_script
from evaluation import evaluate, recall_at_k, view_features
from networks.resnet_big import LinearClassifier, build_trunk
from test_video import still_clip

MEAN, STD = (0.45,) * 3, (0.225,) * 3
TINY = ['--width', '4', '--size', '32', '--num_frames', '2', '--num_workers', '0', '--print_freq', '1000',
        '--seed', '0']
CPU = SimpleNamespace(device=torch.device('cpu'), amp='none', channels_last=False)


# ----------------------------------------------------------------------------- by hand

class FirstValues(nn.Module):
    """'Model' whose outputs are the last K values of each input: inputs spell their logits."""

    def __init__(self, k):
        super().__init__()
        self.k = k

    def forward(self, x):
        return x.flatten(1)[:, -self.k:]


def view_batch(logits):
    """[B, V, K] logits as a batch of video test views [B, V, C=1, T=1, H=1, W=K]."""
    return torch.tensor(logits)[:, :, None, None, None, :]


def test_evaluate_averages_the_softmax_over_a_videos_views():
    # video 0: logits averaged say class 0, the softmax averaged (and the majority) class 1;
    # video 1: the majority says class 1, the softmax averaged class 0
    logits = [[[10.0, 0.0], [0.0, 3.0], [0.0, 3.0]], [[5.0, 0.0], [0.0, 0.5], [0.0, 0.5]]]
    labels = torch.tensor([1, 0])
    loss, top1, _ = evaluate(FirstValues(2), [(view_batch(logits), labels)], CPU)
    mean_probs = torch.tensor(logits).softmax(-1).mean(1)
    assert mean_probs.argmax(1).tolist() == [1, 0] and top1 == 100.0
    assert loss == pytest.approx(-mean_probs[[0, 1], labels].log().mean().item(), abs=1e-6)
    # one view per video is the plain classifier: cross-entropy of the logits
    single = torch.tensor([[2.0, -1.0, 0.5], [0.1, 0.2, 0.3]])
    loss, top1, top5 = evaluate(FirstValues(3), [(single, torch.tensor([0, 0]))], CPU)
    assert loss == pytest.approx(F.cross_entropy(single, torch.tensor([0, 0])).item(), abs=1e-6)
    assert (top1, top5) == (50.0, 100.0)


def test_view_features_of_a_video_view_batch():
    batch = torch.randn(3, 4, 2, 1, 1, 5)  # 3 videos x 4 views, each view 10 values
    trunk = nn.Sequential(nn.Flatten(), nn.Linear(10, 6))
    with torch.no_grad():
        by_hand = torch.stack([trunk(batch[:, v].reshape(3, 2, 1, 1, 5)) for v in range(4)]).mean(0)
        assert torch.allclose(view_features(trunk, batch, CPU), by_hand, atol=1e-6)


def test_per_step_schedule_by_hand():
    import classifier
    args = SimpleNamespace(warmup_epochs=2, epochs=4, learning_rate=1.0)
    lrs = [classifier.lr_at(args, epoch, step, 3) for epoch in range(1, 5) for step in range(3)]
    # 6 warm-up steps from 0 to 1 (0, 1/5, ..., 1), then a half cosine over the 6 others
    assert lrs[:6] == pytest.approx([k / 5 for k in range(6)])
    assert lrs[6:] == pytest.approx([(1 + torch.cos(torch.tensor(torch.pi * k / 6)).item()) / 2 for k in range(6)])


def test_channels_last_of_a_video_trunk():
    trunk = distributed.channels_last(build_trunk('r3d18', width=4))
    assert trunk.conv1.weight.is_contiguous(memory_format=torch.channels_last_3d)
    image = distributed.channels_last(build_trunk('resnet18', width=4))
    assert image.conv1.weight.is_contiguous(memory_format=torch.channels_last)


def test_finetuning_colour_jitter_is_the_same_on_every_frame():
    plain, coloured = video_augment.ClipScaleCropFlip(24, MEAN, STD), video_augment.ClipScaleCropFlip(24, MEAN, STD, colour=True)
    changed = 0
    for seed in range(6):
        torch.manual_seed(seed)
        a = plain(still_clip())
        torch.manual_seed(seed)
        b = coloured(still_clip())
        assert b.shape == (3, 6, 24, 24) and torch.allclose(b, b[:, :1].expand_as(b), atol=1e-6)
        changed += not torch.allclose(a, b, atol=1e-4)
    assert changed >= 3  # jitter p 0.8, grayscale p 0.2


# ----------------------------------------------------------------------------- the scripts

@pytest.fixture(scope='module')
def pretrained(videos):
    """One epoch of SCE's R3D-18 video recipe with the kNN monitor: (cwd, process, last.pth)."""
    root, train, test = videos
    proc = check_ok(run_script('main_sce.py', '--dataset', 'video', '--data_folder', train, '--test_folder', test,
                               '--batch_size', '6', '--queue_size', '24', '--epochs', '1', '--knn_freq', '1',
                               '--output_dir', root / 'sce', *TINY, cwd=root))
    return root, proc, root / 'sce' / 'last.pth'


def data(videos):
    return ['--dataset', 'video', '--data_folder', videos[1], '--test_folder', videos[2]]


def test_sce_video_pretraining(pretrained):
    _, proc, last = pretrained
    assert 'recipe r3d18_kinetics200: lars lr 0.05625 (= 2.4 x 6 / 256)' in proc.stdout
    assert re.search(r'^epoch 0, kNN accuracy [\d.]+$', proc.stdout, re.M)  # the random trunk
    assert re.search(r'^epoch 1, total time [\d.]+, loss [\d.]+,', proc.stdout, re.M)
    ckpt = load(last)
    a = ckpt['args']
    assert (ckpt['method'], a['model'], a['num_frames'], a['queue_size'], a['warmup_epochs']) == \
        ('SCE', 'r3d18', 2, 24, 35)
    assert a['run_name'].endswith('_sym_frames_2_cosine_width_4')
    shapes = {k: tuple(v.shape) for k, v in ckpt['model'].items() if k.endswith('weight') and v.dim() == 2}
    # projector 32 -> 1024 -> 1024 -> 256 (last BN without affine), predictor 256 -> 1024 -> 256
    assert shapes == {'head.0.weight': (1024, 32), 'head.3.weight': (1024, 1024), 'head.6.weight': (256, 1024),
                      'predictor.0.weight': (1024, 256), 'predictor.3.weight': (256, 1024)}
    assert ckpt['queue']['keys'].shape == (24, 256)


def test_sce_video_pretraining_with_device_views(videos, tmp_path):
    """--gpu_aug: workers decode the two clips, the device draws their views; the trunk evaluates
    as the CPU pipeline's does."""
    root, train, test = videos
    proc = check_ok(run_script('main_sce.py', *data(videos), '--batch_size', '6', '--queue_size', '24', '--epochs',
                               '2', '--knn_freq', '1', '--gpu_aug', '--output_dir', tmp_path / 'sce', *TINY,
                               cwd=tmp_path))
    assert re.search(r'^epoch 2, kNN accuracy [\d.]+$', proc.stdout, re.M), proc.stdout
    assert load(tmp_path / 'sce' / 'last.pth')['args']['gpu_aug']
    proc = check_ok(run_script('main_retrieval.py', '--ckpt', tmp_path / 'sce' / 'last.pth', '--test_clips', '1',
                               '--test_crops', '1', '--batch_size', '8', '--num_workers', '0', cwd=tmp_path))
    assert 'extracted 6 bank and 4 query features of dimension 32' in proc.stdout


def printed_test(stdout):
    m = re.search(r'^test accuracy of (.+) \(epoch (\d+), (.+)\): ([\d.]+) \(top-5 [\d.]+\)$', stdout, re.M)
    assert m, stdout
    return m.group(1), int(m.group(2)), m.group(3), float(m.group(4))


def test_linear_validates_on_one_view_then_tests_every_view(pretrained, videos):
    root, _, last = pretrained
    cmd = ['main_linear.py', '--ckpt', last, *data(videos), '--batch_size', '4', '--epochs', '3', '--val_freq', '2',
           '--num_workers', '0', '--seed', '0']
    proc = check_ok(run_script(*cmd, cwd=root / 'linear'))
    lines = re.findall(r'^epoch \d, .*$', proc.stdout, re.M)
    assert ['val acc' in line for line in lines] == [False, True, True]  # epochs 2 (--val_freq) and 3 (last)
    test = check_ok(run_script(*cmd, '--test', 'best', '--test_clips', '2', '--test_crops', '3',
                               cwd=root / 'linear'))
    path, epoch, views, acc = printed_test(test.stdout)
    assert path.endswith('_linear_video_lr_0.03125_bsz_4_trial_0_video_frames_2/best.pth')
    assert views == '2 clips x 3 crops per video' and epoch in (2, 3)
    assert 'Train:' not in test.stdout and 'epoch 1,' not in test.stdout  # nothing trained

    # the same accuracy by hand: each of the 6 views of a video through the probe on its own
    probe = load(root / 'linear' / path)
    a = probe['args']
    assert (a['protocol'], a['learning_rate'], a['warmup_epochs'], a['weight_decay'], a['num_frames']) == \
        ('video', 2.0 * 4 / 256, 8, 0.0, 2)
    trunk = checkpoints.pretrained_trunk(probe, 'probe').eval()
    fc = LinearClassifier(trunk.feat_dim, 2)
    fc.load_state_dict({k[len('classifier.'):]: v for k, v in probe['model'].items() if k.startswith('classifier.')})
    args = argparse.Namespace(**{**a, 'test_clips': 2, 'test_crops': 3, 'mean': None, 'std': None})
    test_set = datasets.eval_dataset(args, False, test_views=True)
    hits = 0
    with torch.no_grad():
        for views_of_video, label in (test_set[i] for i in range(len(test_set))):
            assert views_of_video.shape == (6, 3, 2, 36, 36)  # crops of side 32 / 0.875
            probs = torch.stack([fc(trunk(v[None])).softmax(1)[0] for v in views_of_video]).mean(0)
            hits += int(probs.argmax() == label)
    assert acc == pytest.approx(100 * hits / len(test_set), abs=0.01)


def test_finetuning_from_the_pretrained_trunk_then_its_test(pretrained, videos):
    root, _, last = pretrained
    cmd = ['main_ce.py', '--pretrained', last, *data(videos), '--batch_size', '6', '--epochs', '1', *TINY[2:4],
           '--num_workers', '0', '--seed', '0']  # no --model/--width/--num_frames: the checkpoint's
    proc = check_ok(run_script(*cmd, cwd=root / 'ce'))
    assert re.search(r'^epoch 1, .* val acc [\d.]+ \(top-5 [\d.]+\), best [\d.]+$', proc.stdout, re.M)
    folder = root / 'ce' / 'save' / 'SupCon' / 'video_models' / \
        'SupCE_video_r3d18_lr_0.00234375_decay_0.0_bsz_6_trial_0_pretrained_frames_2_width_4'
    ckpt = load(folder / 'best.pth')
    a = ckpt['args']
    # the released fine-tuning: lr 0.1 per 256 clips (0.025 at 64), no weight decay, cosine without warm-up,
    # dropout 0.8
    assert (a['learning_rate'], a['weight_decay'], a['warmup_epochs'], a['dropout'], a['val_freq']) == \
        (0.00234375, 0.0, 0, 0.8, 5)
    assert (folder / 'last.pth').is_file() and ckpt['model']['fc.weight'].shape == (2, 32)
    test = check_ok(run_script(*cmd, '--test', 'last', '--test_clips', '3', '--test_crops', '1', cwd=root / 'ce'))
    path, epoch, views, acc = printed_test(test.stdout)
    assert path.endswith('/last.pth') and epoch == 1 and views == '3 clips x 1 crops per video'
    assert acc in (0.0, 25.0, 50.0, 75.0, 100.0)  # 4 test videos


def test_retrieval_on_features_averaged_over_the_test_views(pretrained, videos):
    root, _, last = pretrained
    out = root / 'features'
    proc = check_ok(run_script('main_retrieval.py', '--ckpt', last, '--test_clips', '2', '--test_crops', '2',
                               '--batch_size', '8', '--num_workers', '0', '--features_dir', out, cwd=root))
    assert 'extracted 6 bank and 4 query features of dimension 32' in proc.stdout  # dataset: the checkpoint's
    feats = {name: load(out / f'{name}.pth') for name in ('train_features', 'train_labels', 'val_features',
                                                         'val_labels')}
    # a query's feature is the trunk's averaged over its 2 clips x 2 crops
    ckpt = load(last)
    trunk = checkpoints.pretrained_trunk(ckpt, 'ckpt').eval()
    args = argparse.Namespace(**{**ckpt['args'], 'test_clips': 2, 'test_crops': 2, 'mean': None, 'std': None})
    queries = datasets.eval_dataset(args, False, test_views=True)
    with torch.no_grad():
        by_hand = torch.stack([trunk(queries[i][0]).mean(0) for i in range(len(queries))])
    assert torch.allclose(feats['val_features'], by_hand, atol=1e-5)
    assert feats['val_labels'].tolist() == [0, 0, 1, 1]
    recall = json.loads((out / 'retrieval.json').read_text())['recall']
    expected = recall_at_k(feats['val_features'], feats['val_labels'], feats['train_features'], feats['train_labels'])
    assert recall == {f'R@{k}': pytest.approx(v) for k, v in expected.items()}


def test_video_options_that_contradict_are_one_line_errors(pretrained, videos, monkeypatch):
    root, _, last = pretrained
    assert_user_error(run_script('main_linear.py', '--ckpt', last, *data(videos), '--test', 'best',
                                 '--num_workers', '0', cwd=root / 'nothing'),
                      root / 'nothing', '--test best', 'does not exist', 'without --test first')
    import main_linear
    import main_sce
    for module, argv, needle in [
            (main_sce, ['--dataset', 'video', '--model', 'resnet18'], 'reads images'),
            (main_sce, ['--dataset', 'cifar10', '--recipe', 'r3d18_kinetics200'], 'reads videos'),
            (main_sce, ['--dataset', 'video', '--nmb_crops', '2', '2'], 'two clips'),
            (main_linear, ['--ckpt', str(last), '--dataset', 'video', '--protocol', 'sce'], '--protocol video'),
            (main_linear, ['--ckpt', str(last), '--dataset', 'cifar10'], 'reads videos'),
            (main_linear, ['--ckpt', str(last), '--dataset', 'video', '--warm'], '--warmup_epochs')]:
        monkeypatch.setattr(sys, 'argv', [module.__name__ + '.py', *argv])
        with pytest.raises(util.UserError, match=re.escape(needle)):
            module.parse_option()
