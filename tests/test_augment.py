"""augment.py: MoCo views, GaussianBlur, and the (constrained) multi-crop with AutoAugment."""
import random

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms as T

from util import UserError
from augment import (GaussianBlur, MultiCropTransform, TwoCropTransform, moco_transform,
                     sample_crop_box)

MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
REVISITING = dict(nmb_crops=[2, 4], size_crops=[160, 96], min_scale_crops=[0.2, 0.05],
                  max_scale_crops=[1.0, 0.14], mean=MEAN, std=STD)


def noise_image(width=200, height=150, seed=0):
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def overlap(a, b):
    """Intersection area of two (top, left, h, w) boxes."""
    rows = min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0])
    cols = min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1])
    return max(rows, 0) * max(cols, 0)


def covers(box, key, fraction=0.1):
    return overlap(box, key) >= fraction * box[2] * box[3]


# --- GaussianBlur and MoCo views ---------------------------------------------------------------

def test_gaussian_blur_sigma_range_and_effect():
    blur = GaussianBlur()
    torch.manual_seed(0)
    sigmas = torch.tensor([blur.sample_sigma() for _ in range(2000)])
    assert sigmas.min() >= 0.1 and sigmas.max() <= 2.0
    assert sigmas.min() < 0.15 and sigmas.max() > 1.95  # spans the whole range
    assert abs(sigmas.mean().item() - 1.05) < 0.05  # uniform
    img = noise_image(64, 48)
    out = blur(img)
    assert out.size == img.size and np.asarray(out).std() < np.asarray(img).std()
    with pytest.raises(ValueError, match='sigma'):
        GaussianBlur((2.0, 0.1))


@pytest.mark.parametrize('aug_plus', [True, False])
def test_moco_views(aug_plus):
    views = TwoCropTransform(moco_transform(32, MEAN, STD, aug_plus))(noise_image())
    assert len(views) == 2 and all(v.shape == (3, 32, 32) for v in views)
    assert not torch.equal(views[0], views[1])
    steps = moco_transform(32, MEAN, STD, aug_plus).transforms
    assert steps[0].scale == (0.2, 1.0)
    has_blur = any(isinstance(t, T.RandomApply) and isinstance(t.transforms[0], GaussianBlur) for t in steps)
    assert has_blur == aug_plus
    jitter = [t for t in steps if isinstance(t, T.ColorJitter)]  # v1 jitters always, v2 inside RandomApply
    assert bool(jitter) != aug_plus
    if jitter:
        assert jitter[0].hue == (-0.4, 0.4)


# --- multi-crop --------------------------------------------------------------------------------

@pytest.mark.parametrize('constrained', [False, True])
def test_multicrop_views_order_and_shapes(constrained):
    views = MultiCropTransform(**REVISITING, constrained=constrained, auto_augment=[0, 2, 3, 4, 5])(noise_image())
    assert [tuple(v.shape) for v in views] == [(3, 160, 160)] * 2 + [(3, 96, 96)] * 4
    assert all(v.dtype == torch.float32 for v in views)


def test_unconstrained_box_is_torchvisions_random_resized_crop():
    img = noise_image()
    for seed in range(20):
        torch.manual_seed(seed)
        ours = sample_crop_box(200, 150, (0.05, 0.14))
        torch.manual_seed(seed)
        assert ours == T.RandomResizedCrop.get_params(img, [0.05, 0.14], [3 / 4, 4 / 3])


def test_multicrop_deterministic_under_torch_seed_only():
    transform = MultiCropTransform(**REVISITING, constrained=True, auto_augment=[0, 2, 3, 4, 5])
    img = noise_image()

    def views(torch_seed, other_seed):
        # Python's and numpy's generators must play no part: only torch's seed decides.
        random.seed(other_seed)
        np.random.seed(other_seed)
        torch.manual_seed(torch_seed)
        return transform(img)

    first, again, other = views(0, 1), views(0, 2), views(1, 1)
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    assert not any(torch.equal(a, b) for a, b in zip(first, other))


def test_constrained_boxes_cover_the_key():
    """Small boxes (5-14 % area) against key boxes, overlap >= 10 % of the small box's area."""
    def fraction(key_scale, constrained, n=2000):
        torch.manual_seed(0)
        hits = 0
        for _ in range(n):
            key = sample_crop_box(200, 150, key_scale)
            box = sample_crop_box(200, 150, (0.05, 0.14), within=key if constrained else None)
            hits += covers(box, key)
        return hits / n

    # keys as the large crops (20-100 % area): measured 1.000 vs 0.867
    assert fraction((0.2, 1.0), True) >= 0.99
    assert fraction((0.2, 1.0), False) <= 0.92
    # the smallest keys (20 % area) make the difference plain: measured 0.999 vs 0.59
    assert fraction((0.2, 0.2), True) >= 0.99
    assert fraction((0.2, 0.2), False) <= 0.70


def test_multicrop_constrains_small_crops_on_key_crop():
    def fraction(constrained):
        transform = MultiCropTransform(**REVISITING, constrained=constrained)
        torch.manual_seed(0)
        hits = []
        for _ in range(500):
            boxes = transform.sample_boxes(200, 150)
            hits += [covers(box, boxes[1]) for box in boxes[2:]]
        return sum(hits) / len(hits)

    assert fraction(True) >= 0.99
    assert fraction(False) <= 0.92


def test_auto_augment_half_the_time_and_never_on_key(monkeypatch):
    # AutoAugment replaced by a solid image: a view that went through it is constant,
    # while MoCo v2's augmentation of a noise image never is.
    monkeypatch.setattr(T.AutoAugment, 'forward', lambda self, img: Image.new('RGB', img.size, (90, 60, 30)))
    options = dict(REVISITING, size_crops=[32, 16])
    img = noise_image(64, 48)
    for listed in ([0, 2, 3, 4, 5], []):
        transform = MultiCropTransform(**options, constrained=True, auto_augment=listed)
        torch.manual_seed(0)
        n = 300
        counts = [0] * 6
        for _ in range(n):
            for k, view in enumerate(transform(img)):
                counts[k] += bool((view.flatten(1).std(dim=1) == 0).all())
        for k in range(6):
            if k in listed:
                assert 0.4 < counts[k] / n < 0.6, (k, counts)
            else:
                assert counts[k] == 0, (k, counts)


@pytest.mark.parametrize('change, option', [
    (dict(size_crops=[160]), '--size_crops'),
    (dict(min_scale_crops=[0.2]), '--min_scale_crops'),
    (dict(max_scale_crops=[1.0, 0.14, 0.1]), '--max_scale_crops'),
    (dict(nmb_crops=[], size_crops=[], min_scale_crops=[], max_scale_crops=[]), '--nmb_crops'),
    (dict(nmb_crops=[1, 4]), '--nmb_crops'),
    (dict(nmb_crops=[2, 0]), '--nmb_crops'),
    (dict(size_crops=[160, 0]), '--size_crops'),
    (dict(min_scale_crops=[0.2, 0.5]), '--min_scale_crops'),
    (dict(min_scale_crops=[0.0, 0.05]), '--min_scale_crops'),
    (dict(max_scale_crops=[1.5, 0.14]), '--max_scale_crops'),
    (dict(auto_augment=[0, 1]), '--auto_augment'),
    (dict(auto_augment=[6]), '--auto_augment'),
    (dict(auto_augment=[-1]), '--auto_augment'),
])
def test_multicrop_option_errors(change, option):
    with pytest.raises(UserError, match=option):
        MultiCropTransform(**dict(REVISITING, **change))
