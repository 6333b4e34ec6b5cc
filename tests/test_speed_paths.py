"""The fast paths: --gpu_aug draws the CPU pipelines' distributions (crop area and aspect ratio,
jitter factors and order, flip / jitter / grayscale / blur / solarize probabilities) and computes
the same operations; training with the fast paths gives the loss curve of the plain
configuration; --max_steps times a run and writes nothing. No timing is asserted here
(scripts/benchmark.py prints figures)."""
import itertools
import re
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image, ImageFilter, ImageOps
from torchvision import transforms as T
from torchvision.transforms import functional as F

import gpu_augment as ga
import options
from augment import moco_transform, supcon_transform
from conftest import SMALL, assert_user_error, check_ok, load, only_file, run_script, step_losses
from datasets import SeededSampler, TimedSteps
from test_resume import check_resumed, epoch_losses, interrupted_after
from util import UserError, unwrap

MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)


def colour_image(size=32, seed=0):
    """Smooth colour gradients plus noise: every operation changes it visibly."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size] / size
    base = np.stack([x, y, 1 - x * y], -1) * 200 + rng.integers(0, 55, (size, size, 3))
    return base.astype(np.uint8)


def as_batch(pixels, n):
    return torch.from_numpy(pixels).permute(2, 0, 1).unsqueeze(0).expand(n, -1, -1, -1).contiguous()


def max_cdf_gap(a, b):
    """Kolmogorov-Smirnov distance between two samples."""
    a, b = np.sort(np.asarray(a, float)), np.sort(np.asarray(b, float))
    grid = np.concatenate([a, b])
    return np.abs(np.searchsorted(a, grid, 'right') / len(a) - np.searchsorted(b, grid, 'right') / len(b)).max()


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


# --- crop boxes and resizing --------------------------------------------------------------------

@pytest.mark.parametrize('height, width, scale', [(32, 32, (0.2, 1.0)), (24, 40, (0.08, 1.0)), (96, 96, (0.05, 0.14))])
def test_crop_boxes_follow_torchvision_random_resized_crop(height, width, scale):
    n, ratio = 8000, (3 / 4, 4 / 3)
    top, left, h, w = (t.double().numpy() for t in ga.crop_boxes(n, height, width, scale, ratio, gen()))
    assert (h >= 1).all() and (w >= 1).all() and (top >= 0).all() and (left >= 0).all()
    assert (top + h <= height).all() and (left + w <= width).all()
    assert all((v == np.round(v)).all() for v in (top, left, h, w))  # whole pixels
    torch.manual_seed(0)
    ref = np.array([T.RandomResizedCrop.get_params(torch.empty(3, height, width), scale, ratio) for _ in range(n)])
    area = h * w / (height * width)
    assert max_cdf_gap(area, ref[:, 2] * ref[:, 3] / (height * width)) < 0.03
    assert max_cdf_gap(np.log(w / h), np.log(ref[:, 3] / ref[:, 2])) < 0.03
    # position: the box centre is spread as torchvision's
    assert max_cdf_gap(left + w / 2, ref[:, 1] + ref[:, 3] / 2) < 0.03


def test_resize_matches_pil_resized_crop_within_rounding():
    pixels = colour_image(40)
    pil, batch = Image.fromarray(pixels), as_batch(pixels, 1).float()
    rng = np.random.default_rng(1)
    for out in (32, 16, 48):  # shrinking (antialiased), both, enlarging
        for _ in range(20):
            h, w = rng.integers(4, 41, 2)
            top, left = rng.integers(0, 41 - h), rng.integers(0, 41 - w)
            ref = np.asarray(F.resized_crop(pil, int(top), int(left), int(h), int(w), [out, out]), dtype=float)
            as_t = lambda v: torch.tensor([float(v)])
            rows, cols = ga.resize_weights(as_t(top), as_t(h), 40, out), ga.resize_weights(as_t(left), as_t(w), 40, out)
            ours = (rows.unsqueeze(1) @ batch @ cols.transpose(1, 2).unsqueeze(1))[0].permute(1, 2, 0).numpy()
            assert np.abs(ours - ref).max() <= 1.01  # PIL rounds to uint8 after each pass


# --- colour operations ----------------------------------------------------------------------------

def test_colour_operations_match_torchvision_and_pil():
    x = torch.rand(6, 3, 12, 12)
    f = torch.linspace(0.6, 1.4, 6)
    for ours, ref in ((ga.adjust_brightness, F.adjust_brightness), (ga.adjust_contrast, F.adjust_contrast),
                      (ga.adjust_saturation, F.adjust_saturation)):
        want = torch.stack([ref(x[i], float(f[i])) for i in range(6)])
        # we weigh red 0.299 as PIL (our CPU pipelines), torchvision's tensor functions 0.2989
        assert torch.allclose(ours(x.clone(), f.view(-1, 1, 1, 1)), want, atol=2e-4)
    hue = torch.linspace(-0.5, 0.5, 6)
    x[:, :, 0] = 0.5  # grey: no hue
    x[:, 1, 1], x[:, 2, 2], x[:, 2, 3] = x[:, 0, 1], x[:, 1, 2], x[:, 0, 3]  # two channels equal (ties for the largest)
    x[:, :, 4] = (x[:, :, 4] * 255).round() / 255  # values of uint8 images
    want = torch.stack([F.adjust_hue(x[i], float(hue[i])) for i in range(6)])
    assert torch.allclose(ga.adjust_hue(x, hue.view(-1, 1, 1, 1)), want, atol=1e-5)

    pixels = colour_image(32)
    img, t = Image.fromarray(pixels), as_batch(pixels, 1).float()
    gray = np.asarray(img.convert('L'), dtype=float)
    assert np.abs(ga.grayscale(t)[0, 0].numpy() - gray).max() <= 0.51
    solarized = np.asarray(ImageOps.solarize(img, 128), dtype=float)
    ours = torch.where(t / 255 >= 128 / 255, 1 - t / 255, t / 255) * 255  # BatchView's solarize
    assert np.abs(ours[0].permute(1, 2, 0).numpy() - solarized).max() < 1e-3
    for sigma in (0.1, 0.7, 2.0):  # PIL's three box blurs, to its uint8 rounding
        ref = np.asarray(img.filter(ImageFilter.GaussianBlur(sigma)), dtype=float)
        ours = ga.gaussian_blur(t, torch.tensor([sigma]), 2.0)[0].permute(1, 2, 0).numpy()
        assert np.abs(ours - ref).max() <= 3.5 and np.abs(ours - ref).mean() < 1.1


def test_jitter_factors_and_order_are_torchvision_s():
    n = 24000
    factors, order = ga.jitter_params(n, (0.4, 0.3, 0.2, 0.1), True, gen())
    for k, (lo, hi) in enumerate([(0.6, 1.4), (0.7, 1.3), (0.8, 1.2), (-0.1, 0.1)]):
        u = (factors[:, k].numpy() - lo) / (hi - lo)  # uniform on [0, 1]
        assert u.min() >= 0 and u.max() <= 1 and max_cdf_gap(u, np.linspace(0, 1, 1001)) < 0.02
    counts = {p: 0 for p in itertools.permutations(range(4))}
    for row in order.tolist():
        counts[tuple(row)] += 1
    assert all(abs(c / n - 1 / 24) < 0.008 for c in counts.values())  # every order equally likely
    fixed = ga.jitter_params(5, (0.4, 0.4, 0.4, 0.1), False, gen())[1]
    assert (fixed == torch.arange(4)).all()

    # each image is adjusted in its own order, as torchvision applies its fn_idx
    x = torch.rand(2, 3, 8, 8)
    f = torch.tensor([[1.3, 0.7, 1.2, 0.05], [0.8, 1.25, 0.65, -0.08]])
    perms = torch.tensor([[3, 1, 0, 2], [2, 0, 3, 1]])
    funcs = (F.adjust_brightness, F.adjust_contrast, F.adjust_saturation, F.adjust_hue)
    for i in range(2):
        want = x[i]
        for k in perms[i].tolist():
            want = funcs[k](want, float(f[i, k]))
        got = ga.color_jitter(x, f, perms, (0.4, 0.4, 0.4, 0.1))[i]
        assert torch.allclose(got, want, atol=5e-4)  # luma weights as above


# --- whole views against the PIL pipelines ------------------------------------------------------------

def unnormalise(views):
    return views * torch.tensor(STD).view(1, 3, 1, 1) + torch.tensor(MEAN).view(1, 3, 1, 1)


@pytest.mark.parametrize('p_name, view', [
    ('flip_p', dict(flip_p=0.5)),
    ('jitter_p', dict(flip_p=0.0, jitter=(0.4, 0.4, 0.4, 0.1), jitter_p=0.8)),
    ('gray_p', dict(flip_p=0.0, gray_p=0.2)),
    ('blur_p', dict(flip_p=0.0, blur_p=0.5)),
    ('solarize_p', dict(flip_p=0.0, solarize_p=0.2)),
])
def test_each_operation_is_applied_with_its_probability(p_name, view):
    n, pixels = 4000, colour_image(32)
    images = as_batch(pixels, n)
    # the whole image as the crop: an untouched view is the image itself
    views = unnormalise(ga.BatchView(32, MEAN, STD, scale=(1.0, 1.0), ratio=(1.0, 1.0), **view)(images, gen()))
    original = torch.from_numpy(pixels).permute(2, 0, 1).float() / 255
    changed = (views - original).abs().flatten(1).amax(1) > 1e-5
    if p_name == 'flip_p':
        assert torch.allclose(views[changed], original.flip(-1).expand_as(views[changed]), atol=1e-5)
    if p_name == 'gray_p':
        assert (views[changed].std(1) < 1e-5).all()
    assert abs(changed.float().mean().item() - view[p_name]) < 0.025


@pytest.mark.parametrize('ours, cpu', [(ga.supcon_view, supcon_transform),
                                       (ga.moco_v2_view, lambda *a: moco_transform(*a, aug_plus=True))])
def test_views_have_the_cpu_pipeline_statistics(ours, cpu):
    """Per-view brightness, colourfulness, sharpness and the grayscale share: same distributions
    as the PIL pipeline's (the crop, jitter, grayscale, blur and flip all move them)."""
    n, pixels = 2500, colour_image(32, seed=3)
    torch.manual_seed(0)
    pil = Image.fromarray(pixels)
    ref = unnormalise(torch.stack([cpu(32, MEAN, STD)(pil) for _ in range(n)]))
    mine = unnormalise(ours(32, MEAN, STD)(as_batch(pixels, n), gen()))

    def stats(v):
        return {'brightness': v.mean((1, 2, 3)), 'colour': v.std(1).mean((1, 2)),
                'sharpness': (v[..., 1:] - v[..., :-1]).abs().mean((1, 2, 3)),
                'red_minus_blue': (v[:, 0] - v[:, 2]).mean((1, 2))}
    for (name, a), b in zip(stats(mine).items(), stats(ref).values()):
        assert max_cdf_gap(a.numpy(), b.numpy()) < 0.065, name  # 0.055: p = 0.001 if equal
    gray = lambda v: (v.std(1).amax((1, 2)) < 1e-3).float().mean().item()
    assert abs(gray(mine) - 0.2) < 0.03 and abs(gray(ref) - 0.2) < 0.03


def test_device_loader_serves_every_image_once_per_epoch_reproducibly():
    pixels = torch.randint(0, 256, (50, 3, 16, 16), dtype=torch.uint8)
    labels = list(range(50))

    def epoch(e, seed=7):
        sampler = SeededSampler(50, seed)
        sampler.set_epoch(e)
        loader = ga.DeviceLoader(None, pixels, labels, [ga.supcon_view(8, MEAN, STD)] * 2, sampler, 16, False,
                                 torch.device('cpu'))
        batches = list(loader)
        assert len(batches) == len(loader) == 4 and len(batches[0][0]) == 2
        assert batches[0][0][0].shape == (16, 3, 8, 8)
        return batches

    first = epoch(1)
    assert sorted(torch.cat([y for _, y in first]).tolist()) == labels
    assert all(torch.equal(a, b) for (va, _), (vb, _) in zip(first, epoch(1)) for a, b in zip(va, vb))
    assert not torch.equal(first[0][0][0], epoch(2)[0][0][0])
    assert not torch.equal(first[0][0][0], first[0][0][1])  # the two views differ


# --- end to end: loss curves, --max_steps ----------------------------------------------------------------

TIMED = ['--dataset', 'digits', '--batch_size', '32', '--epochs', '1', '--knn_freq', '0', '--max_steps', '8',
         *SMALL, '--print_freq', '1']
CONFIGS = {
    'plain': ['--no-channels_last', '--no-fused_optimizer'],
    'fast': ['--channels_last'],  # and the default fused optimiser step
    'ours': ['--amp', 'bf16', '--channels_last', '--gpu_aug'],  # the benchmark's fast configuration
}


@pytest.fixture(scope='module')
def timed_runs(tmp_path_factory):
    """name -> (finished process, its working folder)"""
    runs = {}
    for name, extra in CONFIGS.items():
        cwd = tmp_path_factory.mktemp(name)
        runs[name] = check_ok(run_script('main_supcon.py', *TIMED, *extra, cwd=cwd)), cwd
    return runs


def test_fast_paths_give_the_plain_loss_curve(timed_runs):
    losses = {name: np.array(step_losses(p.stdout)) for name, (p, _) in timed_runs.items()}
    assert all(len(v) == 8 and np.isfinite(v).all() for v in losses.values())
    # layout and fused step change only rounding; --gpu_aug draws other views of the same
    # distribution (and bf16 rounds more), so that curve agrees within the augmentation's noise
    assert np.allclose(losses['fast'], losses['plain'], rtol=2e-3)
    assert abs(losses['ours'].mean() - losses['plain'].mean()) < 0.15
    assert np.abs(losses['ours'] - losses['plain']).max() < 0.4


def test_max_steps_prints_the_timings_and_writes_nothing(timed_runs):
    for name, (proc, cwd) in timed_runs.items():
        line = [text for text in proc.stdout.splitlines() if text.startswith('timing: ')]
        assert len(line) == 1 and '6 steps after 2 warm-up' in line[0] and 'images/s' in line[0], proc.stdout
        assert 'data ' in line[0] and 'compute ' in line[0] and 'MiB' in line[0]
        assert 'epoch 1, total time' not in proc.stdout  # stopped inside the epoch
        assert not [p for p in cwd.rglob('*') if p.is_file()]  # no checkpoint, no TensorBoard log


def test_moco_multi_crop_on_the_device(tmp_path):
    proc = check_ok(run_script('main_moco.py', '--dataset', 'digits', '--batch_size', '16', '--moco_k', '64',
                               '--nmb_crops', '2', '2', '--size_crops', '32', '16', '--min_scale_crops', '0.2',
                               '0.05', '--max_scale_crops', '1', '0.14', '--gpu_aug', '--max_steps', '3',
                               '--knn_freq', '0', *SMALL, cwd=tmp_path))
    assert 'timing: 1 steps after 2 warm-up' in proc.stdout


def test_gpu_aug_on_an_image_folder_resumes_exactly(shared_data, tmp_path):
    """Workers decode the folder's files, SCE's views are drawn on the device from the (seed, epoch)
    generator: a run resumed after epoch 1 ends with the weights of the unbroken run."""
    flags = ['main_sce.py', '--dataset', 'path', '--data_folder', shared_data[0], '--batch_size', '8',
             '--recipe', 'cifar', '--bn_splits', '4', '--queue_size', '16', '--epochs', '3', '--save_freq', '1',
             '--knn_freq', '0', '--gpu_aug', *SMALL]
    full = check_ok(run_script(*flags, cwd=tmp_path))
    last = only_file(tmp_path / 'save')
    final, losses = load(last), epoch_losses(full.stdout)
    assert final['args']['gpu_aug'] and sorted(losses) == [1, 2, 3] and all(np.isfinite(list(losses.values())))
    interrupted_after(Path(last).parent, 1)
    check_resumed(check_ok(run_script(*flags, '--resume', cwd=tmp_path)), 1, losses)
    resumed = load(last)
    assert all(torch.equal(final['model'][k], resumed['model'][k]) for k in final['model'])
    assert torch.equal(final['queue']['keys'], resumed['queue']['keys'])


def test_supcon_gpu_aug_on_an_image_folder_then_linear_eval(shared_data, tmp_path):
    train, test = shared_data
    check_ok(run_script('main_supcon.py', '--dataset', 'path', '--data_folder', train, '--batch_size', '8',
                        '--epochs', '1', '--knn_freq', '0', '--gpu_aug', *SMALL, cwd=tmp_path))
    proc = check_ok(run_script('main_linear.py', '--ckpt', only_file(tmp_path / 'save'), '--dataset', 'path',
                               '--data_folder', train, '--test_folder', test, '--batch_size', '8', '--epochs', '1',
                               *SMALL, cwd=tmp_path / 'linear'))
    assert re.search(r'^best accuracy: [\d.]+ \(top-5', proc.stdout, re.M), proc.stdout


@pytest.mark.parametrize('script, extra, needles', [
    ('main_moco.py', ['--dataset', 'path', '--data_folder', 'DATA', '--moco_k', '64', '--constrained_cropping',
                      '--gpu_aug'], ['--gpu_aug', 'in-memory datasets', '--constrained_cropping']),
    ('main_sce.py', ['--dataset', 'digits', '--queue_size', '64'], ['--batch_size 8 over --bn_splits 8']),
    ('main_ce.py', ['--dataset', 'digits', '--gpu_aug'], ['--gpu_aug', 'main_ce.py']),
    ('main_moco.py', ['--dataset', 'digits', '--moco_k', '64', '--gpu_aug'], ['--gpu_aug', '--aug_plus']),
])
def test_speed_options_that_cannot_run_say_so(script, extra, needles, tiny_folders, tmp_path):
    extra = [tiny_folders[0] if a == 'DATA' else a for a in extra]
    proc = run_script(script, *extra, '--batch_size', '8', '--epochs', '1', *SMALL, cwd=tmp_path)
    assert_user_error(proc, tmp_path, *needles)


def test_device_views_are_the_default_on_cuda_only():
    def resolved(given, device, available=True):
        args = SimpleNamespace(gpu_aug=given, device=torch.device(device))
        return options.gpu_aug_on(args, available), args.gpu_aug

    assert resolved(None, 'cuda') == (True, True) and resolved(None, 'cpu') == (False, False)
    assert resolved(None, 'cuda', available=False) == (False, False)  # e.g. MoCo v1's augmentation
    assert resolved(False, 'cuda') == (False, False) and resolved(True, 'cpu') == (True, True)


def test_max_steps_must_exceed_the_warm_up():
    with pytest.raises(UserError, match='--max_steps must exceed the 2 warm-up steps'):
        TimedSteps([], SimpleNamespace(max_steps=2))


def test_unwrap_sees_through_compile():
    model = torch.nn.Linear(2, 2)
    assert unwrap(torch.compile(model)) is model  # compiling happens at the first call, not here
