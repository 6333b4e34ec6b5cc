"""CLSA's strong augmentation: its 14 operations on known images and their sampling frequencies
(augment.StrongAugment), and the CLSA views (augment.CLSATransform): which crops are made, drawn
from torch alone, bad options."""
import math
import random
import re
from collections import Counter

import numpy as np
import pytest
import torch
import torchvision.transforms.v2.functional as TF
from PIL import Image

import augment
from util import UserError


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
