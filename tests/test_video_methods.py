"""Every method on videos: rhoSimCLR (main_supcon.py), rhoMoCo (main_moco.py) and CLSA (main_clsa.py)
on tiny videos made here (R3D-18 of width 4, 2 frames, 32 px, rho = 3 clips): pretraining, the
checkpoint through the video linear protocol and retrieval, the clips' times (decoded from the
frames' grey values), rhoMoCo's loss by hand, CLSA's strong operations once per clip, resume,
bad inputs, and two processes against one."""
import re
import shutil
import sys

import pytest
import torch

import checkpoints
import util
import video_augment
from conftest import assert_user_error, check_ok, load, run_script, step_losses
from losses import MoCoLoss
from networks.resnet3d import ResNet3d
from test_video import frame_ids, make_video, raw, still_clip

MEAN, STD = (0.45,) * 3, (0.225,) * 3
TINY = ['--model', 'r3d18', '--width', '4', '--size', '32', '--num_frames', '2', '--num_workers', '0',
        '--seed', '0', '--num_clips', '3']
# SimCLR: batch 6 = the 6 training videos, one step per epoch, sync-BN. MoCo and CLSA: batch 2, 3
# steps per epoch, BatchNorm over single clips (MoCo's --bn_splits 2 on one process, one clip per
# rank on two), so shuffle-BN gives the same keys whatever the shuffle, and two processes can repeat one.
METHODS = {
    'SimCLR': ['main_supcon.py', '--method', 'SimCLR', '--syncBN', '--batch_size', '6'],
    'MoCo': ['main_moco.py', '--mlp', '--moco_k', '16', '--moco_m_cos', '--batch_size', '2'],
    'CLSA': ['main_clsa.py', '--moco_k', '8', '--aug_times', '2', '--batch_size', '2'],
}
STEPS = {'SimCLR': 2, 'MoCo': 6, 'CLSA': 6}


def data(videos):
    return ['--dataset', 'video', '--data_folder', videos[1], '--test_folder', videos[2]]


def flags(method, videos, *extra, processes=1):
    """The command of a 2-epoch run; one process splits the keys' BatchNorm in 2 (shuffle-BN)."""
    script, *options = METHODS[method]
    if method != 'SimCLR' and processes == 1:
        options += ['--bn_splits', '2']
    return [script, *data(videos), *options, '--epochs', '2', '--save_freq', '1',
            '--print_freq', '1', '--knn_freq', '2', *TINY, *extra]


@pytest.fixture(scope='module')
def pretrained(videos):
    """Each method's 2-epoch run (kNN monitor on), made once: method -> (process, run folder)."""
    done = {}

    def run(method):
        if method not in done:
            cwd = videos[0] / method
            proc = check_ok(run_script(*flags(method, videos, '--save_root', cwd / 'save'), cwd=cwd))
            done[method] = proc, next((cwd / 'save').rglob('last.pth')).parent
        return done[method]
    return run


# ----------------------------------------------------------------------------- end to end

@pytest.mark.parametrize('method', METHODS)
def test_pretraining_then_video_linear_and_retrieval(pretrained, videos, method):
    proc, folder = pretrained(method)
    assert re.search(r'^epoch 0, kNN accuracy [\d.]+$', proc.stdout, re.M)  # the random trunk
    assert re.search(r'^epoch 2, kNN accuracy [\d.]+$', proc.stdout, re.M)
    assert not re.search(r'^epoch 1, kNN', proc.stdout, re.M)
    assert re.search(r'_clips_3_frames_2(_cosine)?_width_4$', folder.name), folder.name
    ckpt = load(folder / 'last.pth')
    a = ckpt['args']
    assert (ckpt['method'], a['model'], a['num_clips'], a['num_frames'], a['dataset']) == \
        (method, 'r3d18', 3, 2, 'video')
    if method != 'SimCLR':  # every key clip is enqueued (rhoMoCo: 2 per video), one per video (CLSA)
        keys_per_step = {'MoCo': 2 * 2, 'CLSA': 2}[method]
        assert int(ckpt['queue']['ptr']) == 6 * keys_per_step % ckpt['queue']['keys'].shape[0]
    trunk = checkpoints.pretrained_trunk(ckpt, 'ckpt')
    assert isinstance(trunk, ResNet3d) and trunk.feat_dim == 32

    if method == 'SimCLR':  # the probe rebuilds the trunk as retrieval does: one method suffices
        cmd = ['main_linear.py', '--ckpt', folder / 'last.pth', *data(videos), '--batch_size', '4', '--epochs', '1',
               '--num_workers', '0', '--seed', '0']
        linear = check_ok(run_script(*cmd, cwd=folder.parent / 'linear'))
        assert re.search(r'^epoch 1, .* val acc [\d.]+ \(top-5 [\d.]+\), best [\d.]+$', linear.stdout, re.M)
        probe = load(next((folder.parent / 'linear').rglob('last.pth')))
        assert probe['args']['protocol'] == 'video' and probe['args']['num_frames'] == 2
    retrieval = check_ok(run_script('main_retrieval.py', '--ckpt', folder / 'last.pth', '--test_clips', '2',
                                    '--test_crops', '1', '--batch_size', '8', '--num_workers', '0',
                                    cwd=folder.parent))
    assert 'extracted 6 bank and 4 query features of dimension 32' in retrieval.stdout
    assert re.search(r'R@1', retrieval.stdout)


# ----------------------------------------------------------------------------- pieces by hand

def parse(module, argv, monkeypatch):
    monkeypatch.setattr(sys, 'argv', [module.__name__ + '.py', *argv])
    return module.parse_option()


def test_rho_clips_are_drawn_at_distinct_times(tmp_path, monkeypatch):
    """Each script's training set samples --num_clips clips of every video, each from its own start."""
    import main_clsa
    import main_moco
    import main_supcon
    from datasets import SeededDataset
    from video_datasets import video_dataset
    make_video(tmp_path / 'train' / 'a' / 'v.mp4', frames=30, fps=5)  # 6 s
    argv = ['--dataset', 'video', '--data_folder', str(tmp_path / 'train'), '--num_clips', '3', '--model', 'r3d18',
            '--num_frames', '4', '--clip_duration', '2.0', '--batch_size', '1']
    queue = ['--bn_splits', '1', '--moco_k', '6']
    for module, extra in ((main_supcon, []), (main_moco, queue), (main_clsa, queue)):
        args = parse(module, argv + extra, monkeypatch)
        assert args.num_clips == 3 and args.num_frames == 4
    args.data_seed, args.rank, args.world_size = 0, 0, 1
    clips = SeededDataset(video_dataset(args, True, raw(3)))
    starts, distinct = set(), 0
    for seed in range(8):
        views, _ = clips[0, seed]
        ids = [frame_ids(v) for v in views]
        assert len(ids) == 3 and all(i == sorted(i) and i[-1] - i[0] <= 10 for i in ids), ids  # each within 2 s
        distinct += len({i[0] for i in ids}) == 3  # independent times (two may fall on one frame by chance)
        starts |= {i[0] for i in ids}
    assert distinct >= 5 and len(starts) >= 10  # 8 draws of 3 starts among 21 frames


def test_moco_loss_of_rho_clips_is_the_mean_over_the_keys():
    import main_moco
    torch.manual_seed(0)
    unit = lambda *shape: torch.nn.functional.normalize(torch.randn(*shape), dim=1)
    q, k1, k2, queue = unit(4, 8), unit(4, 8), unit(4, 8), unit(16, 8)
    criterion = MoCoLoss(0.2)
    rho = main_moco.pairs_loss(criterion, q, torch.cat([k1, k2]), queue, 1, 2)

    def two_view(k):  # InfoNCE by hand: -log of the positive's softmax among [k, queue]
        logits = torch.cat([(q * k).sum(1, keepdim=True), q @ queue.T], 1) / 0.2
        return (logits.logsumexp(1) - logits[:, 0]).mean()
    assert rho == pytest.approx(((two_view(k1) + two_view(k2)) / 2).item(), abs=1e-6)
    # images: every query crop against the one key
    q3 = unit(12, 8)
    assert main_moco.pairs_loss(criterion, q3, k1, queue, 3, 1) == pytest.approx(
        criterion(q3, k1.repeat(3, 1), queue).item(), abs=1e-6)


def test_clsa_strong_operations_are_drawn_once_per_clip():
    view = video_augment.StrongClipView(video_augment.rho_clip_view(24, MEAN, STD), aug_times=5)
    changed = 0
    for seed in range(6):
        torch.manual_seed(seed)
        weak = view.view(still_clip())
        torch.manual_seed(seed)
        strong = view(still_clip())
        assert strong.shape == weak.shape == (3, 6, 24, 24)
        assert torch.allclose(strong, strong[:, :1].expand_as(strong), atol=1e-6)  # every frame alike
        changed += not torch.allclose(strong, weak, atol=2 / 255 / STD[0])
    assert changed >= 3
    weak, strong = video_augment.WeakStrongClip(24, MEAN, STD, 2)(still_clip())
    assert weak.shape == strong.shape == (3, 6, 24, 24)


# ----------------------------------------------------------------------------- resume

def test_moco_resume_restores_weights_and_queue(pretrained, videos, tmp_path):
    _, folder = pretrained('MoCo')
    full = load(folder / 'last.pth')
    out = tmp_path / 'resumed'
    shutil.copytree(folder, out)
    shutil.copy(out / 'ckpt_epoch_1.pth', out / 'last.pth')  # as if stopped after epoch 1
    proc = check_ok(run_script(*flags('MoCo', videos, '--output_dir', out, '--resume'), cwd=tmp_path))
    assert re.search(r'^resumed from .*\(epoch 1\)$', proc.stdout, re.M), proc.stdout
    resumed = load(out / 'last.pth')
    for part in ('model', 'momentum_encoder', 'queue'):
        for name, value in full[part].items():
            assert torch.equal(value, resumed[part][name]), (part, name)


# ----------------------------------------------------------------------------- bad inputs

def test_video_options_that_do_not_apply_are_one_line_errors(videos, monkeypatch):
    import main_clsa
    import main_moco
    import main_supcon
    video = ['--dataset', 'video', '--data_folder', videos[1], '--model', 'r3d18']
    for module, argv, needle in [
            (main_supcon, ['--dataset', 'video', '--data_folder', videos[1], '--model', 'resnet18'], 'reads images'),
            (main_moco, ['--dataset', 'cifar10', '--model', 'r3d18'], 'reads videos'),
            (main_clsa, ['--dataset', 'cifar10', '--model', 'r3d50'], 'reads videos'),
            (main_supcon, ['--dataset', 'cifar10', '--num_clips', '3'], '--num_clips: a video option'),
            (main_moco, ['--dataset', 'imagenet', '--num_frames', '4'], '--num_frames: a video option'),
            (main_supcon, [*video, '--num_clips', '1'], 'at least 2'),
            (main_supcon, [*video, '--momentum_encoder'], '--momentum_encoder'),
            (main_moco, [*video, '--nmb_crops', '2', '2'], '--nmb_crops: an option of image views'),
            (main_moco, [*video, '--constrained_cropping'], '--constrained_cropping: an option of image views'),
            (main_moco, [*video, '--auto_augment', '0'], '--auto_augment: an option of image views'),
            (main_moco, [*video, '--aug_plus'], '--aug_plus: an option of image views'),
            (main_supcon, [*video, '--trust_coefficient', '0.01'], "it is LARS's"),
            (main_clsa, [*video, '--pick_weak', '0'], '--pick_weak: a video run takes a weak and a strong view'),
            (main_clsa, [*video, '--size_crops', '32', '16'], '--size_crops')]:
        with pytest.raises(util.UserError, match=re.escape(needle)):
            parse(module, argv, monkeypatch)


def test_bad_video_data_and_device_views_are_one_line_errors(videos, tmp_path):
    empty = tmp_path / 'empty'
    empty.mkdir()
    proc = run_script(*flags('MoCo', videos, '--data_folder', empty), cwd=tmp_path)
    assert_user_error(proc, tmp_path, str(empty))
    proc = run_script(*flags('CLSA', videos, '--gpu_aug'), cwd=tmp_path)
    assert_user_error(proc, tmp_path, '--gpu_aug', 'main_clsa.py has no on-device version')


@pytest.mark.parametrize('method', ['SimCLR', 'MoCo'])
def test_rho_clips_with_device_views(videos, tmp_path, method):
    """--gpu_aug: workers decode the rho clips, the device draws each clip's view (on CPU tensors here)."""
    proc = check_ok(run_script(*flags(method, videos, '--gpu_aug', '--epochs', '1'), cwd=tmp_path))
    losses = step_losses(proc.stdout)
    assert len(losses) == STEPS[method] // 2 and all(0 <= v < 100 for v in losses), proc.stdout  # MoCo starts near 0
    assert load(next(tmp_path.rglob('last.pth')))['args']['gpu_aug']


# ----------------------------------------------------------------------------- two processes

@pytest.mark.parametrize('method', METHODS)
def test_two_processes_match_one(pretrained, videos, tmp_path, method):
    """Each rank takes half of every step's videos: the same global batches and losses, and after
    epoch 1 the same weights and queue up to float rounding (which training amplifies later on).
    Under shuffle-BN each rank keeps its own BatchNorm running statistics (one process: the splits'
    mean), so those buffers are not compared."""
    one_proc, folder = pretrained(method)
    two_proc = check_ok(run_script(*flags(method, videos, processes=2), cwd=tmp_path, torchrun=True))
    one = load(folder / 'ckpt_epoch_1.pth')
    two = load(next(tmp_path.rglob('ckpt_epoch_1.pth')))
    assert two['args']['world_size'] == 2 and len(two['rng']) == 2
    losses_one, losses_two = step_losses(one_proc.stdout), step_losses(two_proc.stdout)
    assert len(losses_one) == len(losses_two) == STEPS[method]
    assert losses_two == pytest.approx(losses_one, abs=2e-3)
    for part in ('model',) if method == 'SimCLR' else ('model', 'momentum_encoder', 'queue'):
        for name, value in one[part].items():
            if method != 'SimCLR' and 'running_' in name:
                continue
            if value.is_floating_point():
                assert torch.allclose(value, two[part][name], rtol=0, atol=1e-4), (part, name)
            else:
                assert torch.equal(value, two[part][name]), (part, name)
