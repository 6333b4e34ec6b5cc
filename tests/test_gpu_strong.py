"""--gpu_aug's strong pipelines (gpu_strong.py) against their CPU (PIL) pipelines of augment.py:
CLSA's strong operations, their draws and its views; MoCo's constrained multi-crop and AutoAugment,
drawn per image; the views repeat for a (seed, epoch) and differ across epochs; the scripts run and
resume exactly with them."""
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms as T
from torchvision.transforms import autoaugment

import augment
import gpu_augment as ga
import gpu_strong as gs
from conftest import SMALL, check_ok, load, only_file, run_script
from datasets import SeededSampler
from test_resume import check_resumed, epoch_losses
from test_speed_paths import MEAN, STD, as_batch, colour_image, gen, max_cdf_gap, unnormalise

# torchvision's tensor autocontrast rounds the rescaled values where PIL truncates, and its tensor
# equalize builds its table in its own arithmetic: at most one grey level apart (measured: 1 and 0).
ROUNDING_OPS = {'AutoContrast': 1, 'Equalize': 1}


def sample_images():
    """Smooth colour with noise, pure noise, a dark low-contrast one: uint8 HWC arrays."""
    rng = np.random.default_rng(5)
    return [colour_image(32, seed=1), rng.integers(0, 256, (32, 32, 3), dtype=np.uint8),
            (colour_image(32, seed=2) // 4 + 40).astype(np.uint8)]


def to_array(x):
    return x.permute(1, 2, 0).numpy().astype(int)


# --- single operations ---------------------------------------------------------------------------

@pytest.mark.parametrize('name', list(augment.CLSA_OPS))
def test_clsa_operations_are_pils(name):
    """Every magnitude (and sign) at once, one per image of the batch: each equals PIL's result."""
    values = [v for v in range(-9, 10) if v > 0 or (v < 0 and name in augment.SIGNED_OPS)]
    for pixels in sample_images():
        ours = gs.CLSA_BATCH_OPS[name](as_batch(pixels, len(values)), torch.tensor(values, dtype=torch.float64))
        for v, out in zip(values, ours):
            ref = np.asarray(augment.CLSA_OPS[name](Image.fromarray(pixels), v), dtype=int)
            assert np.abs(to_array(out) - ref).max() <= ROUNDING_OPS.get(name, 0), (name, v)


def test_autoaugment_operations_are_torchvision_s_on_pil():
    ops = gs.AutoAugmentOps()
    space = ops.reference._augmentation_space(10, (32, 32))
    for name in {name for policy in ops.policies for name, _, _ in policy}:  # the ImageNet policy's
        magnitudes, signed = space[name]
        values = magnitudes.tolist() if magnitudes.ndim else [0.0]
        values += [-m for m in values] if signed else []
        for pixels in sample_images():
            ours = gs._autoaugment_op(name, as_batch(pixels, len(values)), torch.tensor(values))
            for m, out in zip(values, ours):
                ref = np.asarray(autoaugment._apply_op(Image.fromarray(pixels), name, m,
                                                       T.InterpolationMode.NEAREST, None), dtype=int)
                assert np.abs(to_array(out) - ref).max() <= ROUNDING_OPS.get(name, 0), (name, m)


# --- CLSA's strong augmentation: draws and their application ----------------------------------------

def test_strong_draws_are_strong_augment_s():
    """Operations per image (binomial(5, 1/2)), each operation's share, magnitudes 1..9, signs:
    the distributions of augment.StrongAugment.sample."""
    n, names = 20000, list(augment.CLSA_OPS)
    op, v, applied = gs.StrongOps(5).sample(n, gen())
    torch.manual_seed(0)
    cpu = [augment.StrongAugment(5).sample() for _ in range(5000)]
    count = applied.sum(1).numpy()
    cpu_count = np.array([len(s) for s in cpu])
    for k in range(6):
        assert abs((count == k).mean() - (cpu_count == k).mean()) < 0.02, k
    chosen, magnitude = op[applied].numpy(), v[applied].numpy()
    cpu_ops = np.array([names.index(name) for s in cpu for name, _ in s])
    cpu_v = np.array([value for s in cpu for _, value in s])
    for k, name in enumerate(names):
        assert abs((chosen == k).mean() - 1 / 14) < 0.006 and abs((cpu_ops == k).mean() - 1 / 14) < 0.012, name
        signed = name in augment.SIGNED_OPS
        assert ((magnitude[chosen == k] < 0).mean() - 0.5 * signed) ** 2 < 0.03 ** 2, name
    assert max_cdf_gap(np.abs(magnitude), np.abs(cpu_v)) < 0.03
    assert set(np.abs(magnitude).tolist()) == set(range(1, 10))


def test_strong_ops_apply_what_they_draw_in_order():
    """Each image gets its own operations, in its drawn order, as PIL applies them (equal, but for
    AutoContrast / Equalize's rounding, which later operations can carry along)."""
    images = [p for p in sample_images() for _ in range(30)]
    batch = torch.stack([torch.from_numpy(p).permute(2, 0, 1) for p in images])
    ours = gs.StrongOps(5)(batch.clone(), gen(3))
    op, v, applied = gs.StrongOps(5).sample(len(images), gen(3))
    names = list(augment.CLSA_OPS)
    exact = 0
    for i, pixels in enumerate(images):
        steps = [(names[k], int(m)) for k, m, a in zip(op[i].tolist(), v[i].tolist(), applied[i].tolist()) if a]
        img = Image.fromarray(pixels)
        for name, m in steps:
            img = augment.CLSA_OPS[name](img, m)
        diff = np.abs(to_array(ours[i]) - np.asarray(img, dtype=int))
        if not {name for name, _ in steps} & set(ROUNDING_OPS):
            assert diff.max() == 0, steps
            exact += 1
        else:
            assert diff.mean() < 1.0, steps
    assert exact > 30  # most images draw neither rounding op


# --- AutoAugment, per image -------------------------------------------------------------------------

def test_autoaugment_draws_a_policy_per_image():
    policy, probs, signs = gs.AutoAugmentOps().sample(25000, gen())
    shares = np.bincount(policy.numpy(), minlength=25) / 25000
    assert np.abs(shares - 1 / 25).max() < 0.006  # 5 sigma
    assert max_cdf_gap(probs.flatten().numpy(), np.linspace(0, 1, 1001)) < 0.02
    assert abs(signs.float().mean().item() - 0.5) < 0.01
    assert len(set(policy[:64].tolist())) > 15  # torchvision's transform would give a batch one


def test_autoaugment_applies_each_image_s_draw_as_torchvision(monkeypatch):
    """torchvision's AutoAugment on each PIL image, made to draw what our sampler drew for it."""
    images = [p for p in sample_images() for _ in range(25)]
    batch = torch.stack([torch.from_numpy(p).permute(2, 0, 1) for p in images])
    ours = gs.AutoAugmentOps()(batch.clone(), gen(4))
    policy, probs, signs = gs.AutoAugmentOps().sample(len(images), gen(4))
    reference = T.AutoAugment(T.AutoAugmentPolicy.IMAGENET)
    for i, pixels in enumerate(images):
        monkeypatch.setattr(T.AutoAugment, 'get_params', staticmethod(
            lambda _: (int(policy[i]), probs[i], signs[i])))
        ref = np.asarray(reference(Image.fromarray(pixels)), dtype=int)
        names = {name for name, p, _ in reference.policies[int(policy[i])]}
        tolerance = 0 if not names & set(ROUNDING_OPS) else 255  # rounding ops: checked on average below
        diff = np.abs(to_array(ours[i]) - ref)
        assert diff.max() <= tolerance and diff.mean() < 1.0, reference.policies[int(policy[i])]


# --- constrained crops ------------------------------------------------------------------------------

@pytest.mark.parametrize('height, width, scale', [(32, 32, (0.05, 0.14)), (24, 40, (0.1, 0.4))])
def test_constrained_boxes_follow_sample_crop_box(height, width, scale):
    """Around the same key boxes, the constrained boxes have augment.sample_crop_box(within=key)'s
    area, aspect ratio, overlap with the key and distance to it."""
    n, ratio = 4000, (3 / 4, 4 / 3)
    key = ga.crop_boxes(n, height, width, (0.2, 1.0), ratio, gen(1))
    ours = np.stack([v.numpy() for v in gs.constrained_boxes(n, height, width, scale, ratio, key, gen(2))], 1)
    keys = np.stack([v.numpy() for v in key], 1)
    torch.manual_seed(0)
    ref = np.array([augment.sample_crop_box(width, height, scale, ratio, within=tuple(int(v) for v in k))
                    for k in keys])
    assert (ours[:, :2] >= 0).all() and (ours[:, 0] + ours[:, 2] <= height).all()
    assert (ours[:, 1] + ours[:, 3] <= width).all() and (ours == np.round(ours)).all()

    def features(boxes):
        overlap = np.array([augment._intersection(tuple(b), tuple(k)) for b, k in zip(boxes, keys)])
        centre = lambda b: (b[:, :2] + b[:, 2:] / 2)
        return {'area': boxes[:, 2] * boxes[:, 3], 'aspect': np.log(boxes[:, 3] / boxes[:, 2]),
                'overlap': overlap / (boxes[:, 2] * boxes[:, 3]),
                'distance': np.linalg.norm(centre(boxes) - centre(keys), axis=1)}
    for (name, a), b in zip(features(ours).items(), features(ref).values()):
        assert max_cdf_gap(a, b) < 0.045, name  # p = 0.001 if equal, 4000 draws each
    assert abs((features(ours)['overlap'] >= 0.1).mean() - (features(ref)['overlap'] >= 0.1).mean()) < 0.02


# --- whole views against the PIL pipelines ---------------------------------------------------------------

def view_stats(v):
    return {'brightness': v.mean((1, 2, 3)), 'colour': v.std(1).mean((1, 2)),
            'sharpness': (v[..., 1:] - v[..., :-1]).abs().mean((1, 2, 3)),
            'dark': (v.amax(1) < 0.02).float().mean((1, 2))}  # the black borders of rotations and shears


def clsa_strong():
    cpu = augment.CLSATransform(32, [1, 1], [32, 16], [0.2, 0.086], [1.0, 0.429], [0], [0], 5, MEAN, STD)
    ours = gs.clsa_device_views(32, [1, 1], [32, 16], [0.2, 0.086], [1.0, 0.429], [0], [0], 5, MEAN, STD)
    return lambda img: cpu(img)[2], lambda x, g: ours[2](x, g)


def moco_autoaugment():
    """Crop 0 of a multi-crop with AutoAugment on it: half MoCo v2's view, half flip + AutoAugment."""
    args = ([2], [32], [0.2], [1.0], MEAN, STD)
    cpu = augment.MultiCropTransform(*args, auto_augment=[0])
    ours = gs.multi_crop_device_views(*args, auto_augment=[0])
    return lambda img: cpu(img)[0], lambda x, g: ours[0](x, g)


@pytest.mark.parametrize('pipelines', [clsa_strong, moco_autoaugment])
def test_views_have_the_cpu_pipeline_statistics(pipelines):
    n, pixels = 2000, colour_image(32, seed=3)
    cpu, ours = pipelines()
    torch.manual_seed(0)
    pil = Image.fromarray(pixels)
    ref = unnormalise(torch.stack([cpu(pil) for _ in range(n)]))
    mine = unnormalise(ours(as_batch(pixels, n), gen()))
    for (name, a), b in zip(view_stats(mine).items(), view_stats(ref).values()):
        assert max_cdf_gap(a.numpy(), b.numpy()) < 0.065, name  # 0.062: p = 0.001 if equal


def test_constrained_multi_crop_views_are_drawn_around_the_key():
    """The loader calls the views in order: each local crop reads the key's boxes of this batch."""
    views = gs.multi_crop_device_views([2, 4], [32, 16], [0.2, 0.05], [1.0, 0.14], MEAN, STD, constrained=True)
    assert [v.key for v in views] == [None, None] + [views[1]] * 4
    images = torch.randint(0, 256, (500, 3, 32, 32), dtype=torch.uint8)
    out = [v(images, gen()) for v in views]
    assert [o.shape[-1] for o in out] == [32, 32, 16, 16, 16, 16]
    overlap = [augment._intersection(tuple(int(t) for t in b), tuple(int(t) for t in k)) / (b[2] * b[3]).item()
               for b, k in zip(zip(*views[2].box), zip(*views[1].box))]
    assert np.mean(np.array(overlap) >= 0.1) > 0.9  # the few others: no candidate fitted, a free box


# --- reproducibility ---------------------------------------------------------------------------------

@pytest.mark.parametrize('views', [
    lambda: gs.clsa_device_views(32, [1, 1], [32, 16], [0.2, 0.086], [1.0, 0.429], [0, 1], [0, 1], 5, MEAN, STD),
    lambda: gs.multi_crop_device_views([2, 2], [32, 16], [0.2, 0.05], [1.0, 0.14], MEAN, STD, constrained=True,
                                       auto_augment=[0, 2, 3]),
], ids=['clsa', 'moco-constrained-autoaugment'])
def test_views_repeat_for_an_epoch_and_differ_across_epochs(views):
    pixels = torch.randint(0, 256, (40, 3, 32, 32), dtype=torch.uint8)

    def epoch(e):
        sampler = SeededSampler(40, 7)
        sampler.set_epoch(e)
        return list(ga.DeviceLoader(None, pixels, list(range(40)), views(), sampler, 16, True, torch.device('cpu')))

    first = epoch(1)
    assert len(first) == 2 and len(first[0][0]) == len(views())
    assert all(torch.equal(a, b) for (va, _), (vb, _) in zip(first, epoch(1)) for a, b in zip(va, vb))
    assert not any(torch.equal(a, b) for a, b in zip(first[0][0], epoch(2)[0][0]))


# --- the scripts --------------------------------------------------------------------------------------

def test_clsa_on_the_device(tmp_path):
    proc = check_ok(run_script('main_clsa.py', '--dataset', 'digits', '--batch_size', '16', '--moco_k', '64',
                               '--gpu_aug', '--max_steps', '3', '--knn_freq', '0', *SMALL, cwd=tmp_path))
    assert 'timing: 1 steps after 2 warm-up' in proc.stdout


def test_moco_constrained_multi_crop_with_autoaugment_on_the_device(tmp_path):
    proc = check_ok(run_script('main_moco.py', '--dataset', 'digits', '--batch_size', '16', '--moco_k', '64',
                               '--nmb_crops', '2', '2', '--size_crops', '32', '16', '--min_scale_crops', '0.2',
                               '0.05', '--max_scale_crops', '1', '0.14', '--constrained_cropping', '--auto_augment',
                               '0', '2', '3', '--gpu_aug', '--max_steps', '3', '--knn_freq', '0', *SMALL,
                               cwd=tmp_path))
    assert 'timing: 1 steps after 2 warm-up' in proc.stdout


def test_clsa_gpu_aug_on_an_image_folder_resumes_exactly(shared_data, tmp_path):
    """CLSA's weak and strong views drawn on the device from the (seed, epoch) generator: a run
    resumed after epoch 1 ends with the weights, momentum encoder and queue of the unbroken run."""
    flags = ['main_clsa.py', '--dataset', 'path', '--data_folder', shared_data[0], '--batch_size', '8',
             '--moco_k', '16', '--bn_splits', '2', '--nmb_crops', '1',
             '1', '--size_crops', '32', '16', '--min_scale_crops', '0.2', '0.086', '--max_scale_crops', '1.0',
             '0.429', '--epochs', '3', '--save_freq', '1', '--knn_freq', '0', '--gpu_aug', *SMALL]
    full = check_ok(run_script(*flags, cwd=tmp_path))
    last = Path(only_file(tmp_path / 'save'))
    final, losses = load(last), epoch_losses(full.stdout)
    assert final['args']['gpu_aug'] and sorted(losses) == [1, 2, 3] and all(np.isfinite(list(losses.values())))
    shutil.copy(last.parent / 'ckpt_epoch_1.pth', last)
    check_resumed(check_ok(run_script(*flags, '--resume', cwd=tmp_path)), 1, losses)
    resumed = load(last)
    for part in ('model', 'momentum_encoder', 'queue'):
        assert all(torch.equal(final[part][k], resumed[part][k]) for k in final[part]), part
