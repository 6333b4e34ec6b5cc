"""CLSA: BatchKeysMoCoLoss and CLSALoss against plain-Python references; the strong augmentation's 14
operations on known images and its sampling frequencies; the CLSA views; main_clsa.py end to end (the
the four commands of CLSA's README shrunk, CLSA's linear protocol, two processes, resume, user errors)."""
import math
import os
import random
import re
import shutil
import subprocess
import sys
from collections import Counter

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision.transforms.v2.functional as TF
from PIL import Image

import augment
import classifier
from util import UserError
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


# ----------------------------------------------------------------------------- strong augmentation

def coded_image(width=20, height=12):
    """R = 10 x + 5 (column, modulo 256), G = 10 y + 5 (row), B = 50."""
    a = np.zeros((height, width, 3), np.uint8)
    a[..., 0] = (np.arange(width)[None, :] * 10 + 5) % 256  # distinct for width <= 128, never black
    a[..., 1] = np.arange(height)[:, None] * 10 + 5
    a[..., 2] = 50
    return Image.fromarray(a), a.astype(float)


def apply(name, img, v):
    return np.asarray(augment.CLSA_OPS[name](img, v)).astype(float)


def pil_luma(a):
    """ITU-R 601-2 luma as PIL's convert('L') computes it (fixed point, rounded)."""
    a = a.astype(np.int64)
    return ((a[..., 0] * 19595 + a[..., 1] * 38470 + a[..., 2] * 7471 + 0x8000) >> 16).astype(float)


def test_the_pool_is_the_released_one():
    assert list(augment.CLSA_OPS) == ['AutoContrast', 'Brightness', 'Color', 'Contrast', 'Equalize', 'Identity',
                                      'Posterize', 'Rotate', 'Sharpness', 'ShearX', 'ShearY', 'Solarize',
                                      'TranslateX', 'TranslateY']
    assert augment.SIGNED_OPS == {'Rotate', 'ShearX', 'ShearY', 'TranslateX', 'TranslateY'}


def test_colour_operations_at_known_magnitudes():
    img, a = coded_image()
    # AutoContrast: each channel stretched to 0..255 (R spans 5..195, G 5..115); constant B kept
    out = apply('AutoContrast', img, 7)
    assert np.abs(out[..., 0] - (a[..., 0] - 5) * 255 / 190).max() < 1
    assert np.abs(out[..., 1] - (a[..., 1] - 5) * 255 / 110).max() < 1
    assert (out[..., 2] == 50).all()
    # enhance factor 0.05 + 0.09 v: Brightness blends with black, Color with the grey image,
    # Contrast with the grey image's mean (PIL rounds or truncates: one level of tolerance)
    assert np.abs(apply('Brightness', img, 5) - 0.5 * a).max() <= 1
    luma = pil_luma(a)[..., None]
    assert np.abs(apply('Color', img, 1) - (luma + 0.14 * (a - luma))).max() <= 1
    assert np.abs(apply('Contrast', img, 9) - (luma.mean() + 0.86 * (a - luma.mean()))).max() <= 1
    # Sharpness blends with PIL's 3x3 smooth filter (weights 1, centre 5, sum 13; borders untouched)
    dot_img = np.zeros((7, 7, 3), np.uint8)
    dot_img[3, 3] = 130
    out = apply('Sharpness', Image.fromarray(dot_img), 9)[..., 0]
    expected = np.zeros((7, 7))
    expected[2:5, 2:5] = 10 + 0.86 * (0 - 10)   # smoothed: 130 / 13
    expected[3, 3] = 50 + 0.86 * (130 - 50)     # smoothed: 130 * 5 / 13
    assert np.abs(out - expected).max() <= 1
    # Posterize v -> bits {4,4,5,5,6,6,6,7,7}[v - 1]: the low bits cleared
    for v, bits in ((1, 4), (2, 4), (3, 5), (4, 5), (5, 6), (7, 6), (8, 7), (9, 7)):
        mask = 0xFF & ~((1 << (8 - bits)) - 1)
        assert (apply('Posterize', img, v) == (a.astype(np.uint8) & mask)).all(), v
    # Solarize v: pixels >= 256 - int(25.6 v) inverted; v = 5 -> 128, v = 9 -> 26
    for v, threshold in ((5, 128), (9, 26)):
        assert (apply('Solarize', img, v) == np.where(a >= threshold, 255 - a, a)).all(), v
    # Equalize as torchvision's tensor implementation of PIL's algorithm; Identity does nothing
    noise = np.random.default_rng(0).integers(0, 80, (16, 16, 3)).astype(np.uint8)
    equalized = TF.equalize(torch.from_numpy(noise).permute(2, 0, 1)).permute(1, 2, 0).numpy()
    assert (apply('Equalize', Image.fromarray(noise), 4) == equalized).all()
    assert (apply('Identity', img, 9) == a).all()


def shifted(a, dx, dy):
    """out[y, x] = a[y + dy, x + dx], black outside."""
    h, w = a.shape[:2]
    out = np.zeros_like(a)
    for y in range(h):
        for x in range(w):
            if 0 <= x + dx < w and 0 <= y + dy < h:
                out[y, x] = a[y + dy, x + dx]
    return out


def test_geometric_operations_at_known_magnitudes():
    img, a = coded_image()
    # Shear ±0.03 v, nearest neighbour at pixel centres: out(x, y) reads x + floor(0.5 + s (y + 0.5))
    for v in (5, -5):
        s = 0.03 * v
        out = apply('ShearX', img, v)
        for y in range(a.shape[0]):
            row = shifted(a, math.floor(0.5 + s * (y + 0.5)), 0)[y]
            assert (out[y] == row).all(), (v, y)
        out = apply('ShearY', img.transpose(Image.Transpose.TRANSPOSE), v)  # the same, along y
        assert (out == np.transpose(apply('ShearX', img, v), (1, 0, 2))).all()
    # Translate ±int(v * 0.3 / 10 * size): the released order of operations gives 26 px at v 9 on
    # 100 px (0.03 * 9 * 100 would give 27)
    wide, b = coded_image(width=100, height=4)
    assert (apply('TranslateX', wide, 9) == shifted(b, 26, 0)).all()
    assert (apply('TranslateX', wide, -9) == shifted(b, -26, 0)).all()
    tall = wide.transpose(Image.Transpose.TRANSPOSE)
    assert (apply('TranslateY', tall, 9) == np.transpose(shifted(b, 26, 0), (1, 0, 2))).all()
    assert (apply('TranslateX', img, 3) == shifted(a, 1, 0)).all()  # int(0.09 * 20) = 1
    # Rotate ±3v degrees about the centre, counter-clockwise for +v: follow a bright 3x3 blob
    blob = np.zeros((41, 41, 3), np.uint8)
    blob[19:22, 34:37] = 255  # 15 px right of the centre (20.5, 20.5 in pixel-centre coordinates)
    for v in (9, -9):
        out = apply('Rotate', Image.fromarray(blob), v)[..., 0]
        ys, xs = np.nonzero(out > 127)
        angle = math.radians(3 * v)
        assert xs.mean() == pytest.approx(20 + 15 * math.cos(angle), abs=1)
        assert ys.mean() == pytest.approx(20 - 15 * math.sin(angle), abs=1)  # image rows grow downwards


def test_strong_augment_sampling_frequencies():
    """aug_times draws with replacement, uniform over the 14 ops; each applied with probability 1/2,
    magnitude uniform on 1..9; the geometric ones with a random sign."""
    torch.manual_seed(0)
    strong, n = augment.StrongAugment(5), 20000
    draws = [strong.sample() for _ in range(n)]
    applied = [op for ops in draws for op in ops]
    assert np.mean([len(ops) for ops in draws]) == pytest.approx(2.5, abs=0.04)  # binomial(5, 1/2): sd/sqrt(n) 0.008
    counts = Counter(name for name, _ in applied)
    assert counts.keys() == augment.CLSA_OPS.keys()
    for name, c in counts.items():  # each op applied 5/28 times per image: 0.1786, sd/sqrt(n) 0.003
        assert c / n == pytest.approx(5 / 28, abs=0.015), name
    magnitudes = Counter(abs(v) for _, v in applied)
    assert sorted(magnitudes) == list(range(1, 10))
    for v, c in magnitudes.items():
        assert c / len(applied) == pytest.approx(1 / 9, abs=0.007), v
    signed = [v for name, v in applied if name in augment.SIGNED_OPS]
    assert np.mean([v < 0 for v in signed]) == pytest.approx(0.5, abs=0.02)
    assert all(v > 0 for name, v in applied if name not in augment.SIGNED_OPS)
    # with replacement: of k applied ops, two coincide with probability 1 - prod_{i<k} (1 - i/14);
    # over k ~ binomial(5, 1/2) that is 0.162 (sd/sqrt(n) 0.003)
    repeated = np.mean([len({name for name, _ in ops}) < len(ops) for ops in draws])
    assert repeated == pytest.approx(0.162, abs=0.015)


def test_strong_augment_applies_what_it_samples():
    img, _ = coded_image()
    strong = augment.StrongAugment(5)
    torch.manual_seed(3)
    ops = strong.sample()
    expected = img
    for name, v in ops:
        expected = augment.CLSA_OPS[name](expected, v)
    torch.manual_seed(3)
    assert np.array_equal(np.asarray(strong(img)), np.asarray(expected))
    assert np.array_equal(np.asarray(augment.StrongAugment(0)(img)), np.asarray(img))


# ----------------------------------------------------------------------------- views

MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)


def test_views_generate_only_the_picked_crops(monkeypatch):
    calls = Counter()
    sample = augment.StrongAugment.sample
    monkeypatch.setattr(augment.StrongAugment, 'sample', lambda self: calls.update(['strong']) or sample(self))
    crop = augment.T.RandomResizedCrop.get_params
    monkeypatch.setattr(augment.T.RandomResizedCrop, 'get_params',
                        staticmethod(lambda *a: calls.update(['crop']) or crop(*a)))
    img, _ = coded_image(60, 50)
    # multi crop: groups of 1 1 2 1; weak crops 3 and 0 (and 0 again), strong crops 1, 2 and 4
    views = augment.CLSATransform(36, [1, 1, 2, 1], [32, 28, 24, 16], [0.2, 0.1, 0.1, 0.05],
                                  [1.0, 0.8, 0.6, 0.4], [3, 0, 0], [4, 1, 2], 5, MEAN, STD)
    assert (views.pick_weak, views.pick_strong) == ([0, 3], [1, 2, 4])
    out = views(img)
    assert [tuple(v.shape) for v in out] == [(3, 36, 36), (3, 32, 32), (3, 24, 24), (3, 28, 28), (3, 24, 24),
                                             (3, 16, 16)]
    assert calls == {'crop': 6, 'strong': 3}  # key + 2 weak + 3 strong crops; strong ops on strong crops only
    # the single-crop recipe: weak crop 0 at 224 px, strong crop 1 at 96 px (here 32 and 16)
    single = augment.CLSATransform(32, [1, 1], [32, 16], [0.2, 0.086], [1.0, 0.429], [0], [1], 5, MEAN, STD)
    assert [tuple(v.shape) for v in single(img)] == [(3, 32, 32), (3, 32, 32), (3, 16, 16)]


def test_views_draw_from_torch_alone():
    img, _ = coded_image(60, 50)
    views = augment.CLSATransform(32, [1, 1], [32, 16], [0.2, 0.086], [1.0, 0.429], [0, 1], [0, 1], 5, MEAN, STD)
    torch.manual_seed(0)
    first = views(img)
    random.seed(1)
    np.random.seed(1)
    torch.manual_seed(0)
    assert all(torch.equal(a, b) for a, b in zip(first, views(img)))  # other RNGs do not matter
    torch.manual_seed(1)
    assert not any(torch.equal(a, b) for a, b in zip(first, views(img)))


@pytest.mark.parametrize('kwargs, message', [
    (dict(pick_weak=[2]), '--pick_weak: crop index 2 is outside 0..1'),
    (dict(pick_strong=[-1]), '--pick_strong: crop index -1'),
    (dict(pick_weak=[]), '--pick_weak: pick at least one'),
    (dict(nmb_crops=[0, 1]), '--nmb_crops: every group needs at least one crop'),
    (dict(size_crops=[32]), '--size_crops: 1 values given'),
    (dict(min_scale_crops=[0.5, 0.5], max_scale_crops=[0.4, 0.5]), '--min_scale_crops: 0.5 exceeds'),
    (dict(aug_times=-1), '--aug_times'),
])
def test_view_option_errors(kwargs, message):
    options = dict(key_size=32, nmb_crops=[1, 1], size_crops=[32, 16], min_scale_crops=[0.2, 0.086],
                   max_scale_crops=[1.0, 0.429], pick_weak=[0], pick_strong=[1], aug_times=5, mean=MEAN, std=STD)
    with pytest.raises(UserError, match=re.escape(message)):
        augment.CLSATransform(**{**options, **kwargs})


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
