"""Device views of SCE (images, clips) and of decoded files of varied sizes: the CPU pipelines'
distributions over thousands of samples, padding never read, same seed -> same views."""
import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms as T
from torchvision.io import encode_jpeg
from torchvision.transforms.v2 import functional as TF2

import gpu_augment as ga
import gpu_loaders as gl
import gpu_views as gv
import video_augment
from augment import GaussianBlur, sce_views
from test_speed_paths import MEAN, STD, as_batch, colour_image, gen, max_cdf_gap, unnormalise
from util import UserError


def stats(v):
    """Per-view brightness, colourfulness, sharpness, red-blue balance ([n, 3, H, W] in [0, 1])."""
    return {'brightness': v.mean((1, 2, 3)), 'colour': v.std(1).mean((1, 2)),
            'sharpness': (v[..., 1:] - v[..., :-1]).abs().mean((1, 2, 3)),
            'red_minus_blue': (v[:, 0] - v[:, 2]).mean((1, 2))}


def gray_share(v):
    return (v.std(1).amax((1, 2)) < 1e-3).float().mean().item()


def cpu_parameters(transform):
    """(crop scale, jitter strengths, jitter p, grayscale p, blur p, solarize p) of an augment.sce_transform."""
    out = {}
    for t in transform.transforms:
        if isinstance(t, T.RandomResizedCrop):
            out['scale'] = tuple(t.scale)
        elif isinstance(t, T.RandomApply) and isinstance(t.transforms[0], T.ColorJitter):
            j = t.transforms[0]
            out['jitter'] = (j.brightness[1] - 1, j.contrast[1] - 1, j.saturation[1] - 1, j.hue[1])
            out['jitter_p'] = t.p
        elif isinstance(t, T.RandomApply) and isinstance(t.transforms[0], GaussianBlur):
            out['blur_p'], out['blur_sigma'] = t.p, tuple(t.transforms[0].sigma)
        elif isinstance(t, T.RandomGrayscale):
            out['gray_p'] = t.p
        elif isinstance(t, T.RandomSolarize):
            out['solarize_p'] = t.p
    return out


def test_sce_device_views_are_the_cpu_views_parameters():
    args = ([2, 3], [32, 16], [0.2, 0.05], [1.0, 0.2], MEAN, STD)
    cpu, ours = sce_views(*args).transforms, gv.sce_device_views(*args)
    assert len(cpu) == len(ours) == 5
    for c, o in zip(cpu, ours):
        p = cpu_parameters(c)
        assert o.size == c.transforms[0].size[0] and o.scale == p['scale']
        assert tuple(round(v, 6) for v in o.jitter) == tuple(round(v, 6) for v in p['jitter'])
        assert (o.jitter_p, o.gray_p, o.blur_p, o.solarize_p) == (p['jitter_p'], p['gray_p'], p['blur_p'], p['solarize_p'])
        assert o.blur_sigma == p['blur_sigma'] and o.flip_p == 0.5
    with pytest.raises(UserError):
        gv.sce_device_views([1, 2], [32, 16], [0.2, 0.05], [1.0, 0.2], MEAN, STD)


@pytest.mark.parametrize('view', [1, 2])  # the second global view (solarize) and a local one
def test_sce_device_views_have_the_cpu_statistics(view):
    n, pixels = 2000, colour_image(32, seed=3)
    args = ([2, 1], [32, 32], [0.2, 0.05], [1.0, 0.3], MEAN, STD)
    torch.manual_seed(0)
    pil = Image.fromarray(pixels)
    cpu = sce_views(*args).transforms[view]
    ref = unnormalise(torch.stack([cpu(pil) for _ in range(n)]))
    mine = unnormalise(gv.sce_device_views(*args)[view](as_batch(pixels, n), gen()))
    for (name, a), b in zip(stats(mine).items(), stats(ref).values()):
        assert max_cdf_gap(a.numpy(), b.numpy()) < 0.07, name
    assert abs(gray_share(mine) - gray_share(ref)) < 0.035


def test_sized_crop_boxes_are_torchvision_s_per_image():
    n = 6000
    same = gv.crop_boxes_sized(torch.full((n,), 24.0), torch.full((n,), 40.0), (0.08, 1.0), (3 / 4, 4 / 3), gen())
    want = ga.crop_boxes(n, 24, 40, (0.08, 1.0), (3 / 4, 4 / 3), gen())
    assert all(torch.equal(a, b) for a, b in zip(same, want))  # one size: exactly gpu_augment's boxes
    # mixed sizes, the fallback included (very wide and very tall images at a scale that seldom fits)
    sizes = [(24, 40), (10, 100), (100, 10)]
    hs = torch.tensor([float(s[0]) for s in sizes]).repeat(n // 3)
    ws = torch.tensor([float(s[1]) for s in sizes]).repeat(n // 3)
    top, left, h, w = gv.crop_boxes_sized(hs, ws, (0.5, 1.0), (3 / 4, 4 / 3), gen())
    assert (top >= 0).all() and (left >= 0).all() and (top + h <= hs).all() and (left + w <= ws).all()
    torch.manual_seed(0)
    for k, (H, W) in enumerate(sizes):
        ref = np.array([T.RandomResizedCrop.get_params(torch.empty(3, H, W), (0.5, 1.0), (3 / 4, 4 / 3))
                        for _ in range(n // 3)], float)
        mine = np.stack([t[k::3].numpy() for t in (top, left, h, w)], 1)
        for col in range(4):
            assert max_cdf_gap(mine[:, col], ref[:, col]) < 0.05, (H, W, col)


def jpeg_folder(root, sizes):
    for i, (h, w) in enumerate(sizes):
        d = root / f'class{i % 2}'
        d.mkdir(exist_ok=True)
        pixels = torch.from_numpy(colour_image(max(h, w), seed=i)[:h, :w].copy()).permute(2, 0, 1).contiguous()
        (d / f'{i}.jpg').write_bytes(bytes(encode_jpeg(pixels, quality=95).numpy()))
    return str(root)


class Sampler(torch.utils.data.Sampler):
    def __init__(self, n, seed=0, epoch=0):
        self.n, self.seed, self.epoch, self.rank = n, seed, epoch, 0

    def __iter__(self):
        return iter(range(self.n))

    def __len__(self):
        return self.n


def test_folder_loader_decodes_in_workers_and_augments_reproducibly(tmp_path):
    root = jpeg_folder(tmp_path, [(40, 30), (24, 56), (48, 48), (20, 36), (33, 41)])
    data = gl.DecodedFolder(root)
    assert data.classes == ['class0', 'class1'] and data[0][0].dtype == torch.uint8

    def epoch(seed, epoch=0):
        loader = torch.utils.data.DataLoader(data, batch_size=3, sampler=Sampler(len(data), seed, epoch),
                                             collate_fn=gl.collate_list)
        views = gv.sce_device_views([2], [16], [0.2], [1.0], MEAN, STD)
        return list(gl.DeviceBatches(loader, views, 'cpu'))

    first = epoch(1)
    assert [len(v) for v, _ in first] == [2, 2] and first[0][0][0].shape == (3, 3, 16, 16)
    assert torch.cat([y for _, y in first]).tolist() == data.targets
    again, other = epoch(1), epoch(1, epoch=1)
    assert all(torch.equal(a, b) for (va, _), (vb, _) in zip(first, again) for a, b in zip(va, vb))
    assert not torch.equal(first[0][0][0], other[0][0][0])
    with pytest.raises(UserError):
        gl.DecodedFolder(str(tmp_path / 'missing'))


def test_padding_is_never_read():
    small, large = as_batch(colour_image(20, seed=1), 1)[0], as_batch(colour_image(40, seed=2), 1)[0]
    padded, h, w = gl.pad([small, large])
    garbage = padded.clone()
    garbage[0, :, 20:, :] = 255
    garbage[0, :, :, 20:] = 255
    view = ga.moco_v2_view(16, MEAN, STD)
    a = view(padded, gen(), box=gv.crop_boxes_sized(h, w, view.scale, view.ratio, gen()))
    b = view(garbage, gen(), box=gv.crop_boxes_sized(h, w, view.scale, view.ratio, gen()))
    assert torch.equal(a, b)



def test_decoded_images_are_pils_pixels_and_stay_channels_last(tmp_path, monkeypatch):
    root = jpeg_folder(tmp_path, [(80, 70), (66, 90), (72, 72)])  # over 64 px: torch's uint8 resize per box
    data = gl.DecodedFolder(root)
    for (path, _), (image, _) in zip(data.samples, (data[i] for i in range(len(data)))):
        assert torch.equal(image, torch.from_numpy(np.array(Image.open(path).convert('RGB'))).permute(2, 0, 1))
    images = [data[i][0] for i in range(len(data))]
    padded, h, w = gl.pad(images)
    assert padded.is_contiguous(memory_format=torch.channels_last)
    planar, _, _ = gl.pad([x.contiguous() for x in images])
    assert planar.is_contiguous() and torch.equal(padded, planar)
    monkeypatch.setattr(ga, 'CACHE_PIXELS', 1)  # one image at a time
    view = ga.supcon_view(32, MEAN, STD)
    a = view(padded, gen(), box=gv.crop_boxes_sized(h, w, view.scale, view.ratio, gen()))
    b = view(planar, gen(), box=gv.crop_boxes_sized(h, w, view.scale, view.ratio, gen()))
    assert torch.equal(a, b)


@pytest.mark.filterwarnings('error')  # e.g. writing into grayscale's expanded view
@pytest.mark.parametrize('gray_p', [0.2, 1.0])  # 1.0: every image of a chunk grey, then some blurred
def test_a_view_does_not_depend_on_the_images_augmented_with_it(monkeypatch, gray_p):
    images = torch.stack([as_batch(colour_image(40, seed=s), 1)[0] for s in range(6)])
    views = []
    for pixels in (2 ** 20, 16 * 16, 2 * 16 * 16):  # the whole batch at once, one by one, in pairs
        monkeypatch.setattr(ga, 'CACHE_PIXELS', pixels)
        view = ga.BatchView(16, MEAN, STD, jitter=(0.4, 0.4, 0.4, 0.1), gray_p=gray_p, blur_p=0.5)
        views.append(view(images, gen()))
    assert torch.allclose(views[0], views[1], atol=1e-5) and torch.allclose(views[0], views[2], atol=1e-5)

# --- clips ------------------------------------------------------------------------------------------

def clip_batch(n, t=2, size=32):
    frames = [torch.from_numpy(colour_image(size, seed=s)).permute(2, 0, 1) for s in range(t)]
    return torch.stack(frames, 1).unsqueeze(0).expand(n, -1, -1, -1, -1).contiguous()  # [n, C, T, H, W]


def test_reflect_blur_is_torchvision_s():
    x = torch.rand(3, 3, 20, 24)
    sigma = torch.tensor([0.1, 0.9, 2.0])
    want = torch.stack([TF2.gaussian_blur(x[i], [5, 5], [float(s)] * 2) for i, s in enumerate(sigma)])
    assert torch.allclose(gv.reflect_blur(x, sigma, 5), want, atol=1e-5)


@pytest.mark.parametrize('view', [0, 1])
def test_clip_device_views_have_the_cpu_statistics_and_one_draw_per_clip(view):
    n = 1500
    clips = clip_batch(n)
    torch.manual_seed(0)
    cpu = video_augment.clip_views(32, MEAN, STD)[view]
    ref = torch.stack([cpu(c.permute(1, 0, 2, 3)) for c in clips[:n]])  # [n, C, T, H, W]
    mine = gv.clip_device_views(32, MEAN, STD)[view](clips, gen())
    assert mine.shape == ref.shape == (n, 3, 2, 32, 32)
    frame = lambda v, k: unnormalise(v[:, :, k])
    for k in range(2):
        for (name, a), b in zip(stats(frame(mine, k)).items(), stats(frame(ref, k)).values()):
            assert max_cdf_gap(a.numpy(), b.numpy()) < 0.075, (name, k)
    # one draw per clip: both frames grayscale together, flipped together
    g0, g1 = ((frame(mine, k).std(1).amax((1, 2)) < 1e-3) for k in range(2))
    assert torch.equal(g0, g1) and abs(g0.float().mean().item() - gray_share(frame(ref, 0))) < 0.04


def test_clip_views_are_reproducible_and_temporal_difference_is_the_cpu_one():
    clips = clip_batch(4, t=3, size=24)
    views = gv.clip_device_views(16, MEAN, STD)
    assert torch.equal(views[1](clips, gen(5)), views[1](clips, gen(5)))
    partners = clips.roll(1, 2)
    want = torch.stack([video_augment.temporal_difference(c.transpose(0, 1), p.transpose(0, 1)).transpose(0, 1)
                        for c, p in zip(clips, partners)])
    assert torch.equal(gv.temporal_difference(clips, partners), want)


def test_clip_loader_pads_videos_of_varied_sizes():
    clips = [clip_batch(1, t=2, size=s)[0] for s in (24, 32, 28)]
    items = [([c, c], label) for c, label in zip(clips, (0, 1, 0))]
    loader = torch.utils.data.DataLoader(items, batch_size=3, collate_fn=gl.collate_clip_views)
    (views, labels), = list(gl.DeviceBatches(loader, gv.clip_device_views(16, MEAN, STD), 'cpu', clips=True))
    assert [v.shape for v in views] == [(3, 3, 2, 16, 16)] * 2 and labels.tolist() == [0, 1, 0]
    assert gl.raw_clip(torch.zeros(2, 3, 5, 6, dtype=torch.uint8)).shape == (3, 2, 5, 6)


def test_large_images_on_cpu_are_resized_as_the_dense_weights_do():
    images = torch.from_numpy(np.stack([colour_image(96, seed=s)[:80] for s in range(6)])).permute(0, 3, 1, 2).contiguous()
    top, left, h, w = ga.crop_boxes(6, 80, 96, (0.1, 1.0), (3 / 4, 4 / 3), gen())
    flip = torch.tensor([True, False] * 3)
    fast = ga.resized_crop(images, top, left, h, w, 48, flip)  # torch's uint8 resize per box
    rows, cols = ga.resize_weights(top, h, 80, 48), ga.resize_weights(left, w, 96, 48)
    cols = torch.where(flip.view(-1, 1, 1), cols.flip(1), cols)
    dense = rows.unsqueeze(1) @ (images.float() / 255) @ cols.transpose(1, 2).unsqueeze(1)
    assert (fast - dense).abs().max() <= 1.01 / 255  # uint8 rounding
