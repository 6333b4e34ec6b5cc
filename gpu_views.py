"""Device-side views of SCE's image and clip pipelines, and of images of varied sizes (decoded files).

Each builder takes the arguments of its CPU pipeline (augment.py, video_augment.py) and returns
gpu_augment.BatchView-like callables `view(images, g) -> float views`, drawn per sample from the
generator `g` (so a seed gives the same views, and a resumed run the same views as an unbroken one).
"""
import math

import torch
from torchvision.transforms.v2 import functional as TF2

import augment
import gpu_augment as ga


# ----------------------------------------------------------------------------- SCE, images

SCE_JITTER = (0.4, 0.4, 0.2, 0.1)  # augment.sce_transform's default (BYOL's)


def sce_device_views(nmb_crops, size_crops, min_scale_crops, max_scale_crops, mean, std):
    """augment.sce_views on the device: two global crops (blur p 1.0 / blur p 0.1 + solarize p 0.2),
    then the local crops (blur p 0.5, solarize p 0.2); jitter (0.4, 0.4, 0.2, 0.1) p 0.8, grayscale p 0.2."""
    return [ga.BatchView(size, mean, std, scale=scale, jitter=SCE_JITTER, gray_p=0.2, blur_p=blur_p,
                         solarize_p=solarize_p)
            for size, scale, blur_p, solarize_p in augment.sce_crops(nmb_crops, size_crops, min_scale_crops,
                                                                     max_scale_crops)]


def sce_cifar_device_views(size, mean, std):
    """augment.sce_cifar_views: a weak view (crop 20-100 %, flip) and a strong one (jitter
    (0.4, 0.4, 0.4, 0.1) p 0.8, grayscale p 0.2, blur p 0.5)."""
    weak = ga.BatchView(size, mean, std, jitter=None)
    strong = ga.BatchView(size, mean, std, jitter=(0.4, 0.4, 0.4, 0.1), gray_p=0.2, blur_p=0.5)
    return [weak, strong]


# ----------------------------------------------------------------------------- images of varied sizes

def crop_boxes_sized(heights, widths, scale, ratio, g, tries=10):
    """ga.crop_boxes for images of their own sizes (float tensors [n]): the same draws in the same
    order, the centre-crop fallback per image."""
    n = heights.numel()
    area = (heights * widths).view(-1, 1)
    target = area * ga.uniform(n * tries, scale, g).view(n, tries)
    aspect = torch.exp(ga.uniform(n * tries, (math.log(ratio[0]), math.log(ratio[1])), g)).view(n, tries)
    w, h = torch.sqrt(target * aspect).round(), torch.sqrt(target / aspect).round()
    fits = (w > 0) & (w <= widths.view(-1, 1)) & (h > 0) & (h <= heights.view(-1, 1))
    first = fits.float().argmax(1, keepdim=True)
    w, h, ok = w.gather(1, first)[:, 0], h.gather(1, first)[:, 0], fits.any(1)
    in_ratio = widths / heights
    lo, hi = min(ratio), max(ratio)
    fw = torch.where(in_ratio > hi, (heights * hi).round(), widths)
    fh = torch.where(in_ratio < lo, (widths / lo).round(), heights)
    w, h = torch.where(ok, w, fw), torch.where(ok, h, fh)
    top = torch.minimum((torch.rand(n, generator=g, device=g.device) * (heights - h + 1)).floor(), heights - h)
    left = torch.minimum((torch.rand(n, generator=g, device=g.device) * (widths - w + 1)).floor(), widths - w)
    top = torch.where(ok, top, ((heights - h) / 2).floor())
    left = torch.where(ok, left, ((widths - w) / 2).floor())
    return top, left, h, w


# ----------------------------------------------------------------------------- clips

class ClipBatchView:
    """video_augment.ClipView for a batch of clips uint8 [B, C, T, H, W] -> float [B, C, T, size, size]:
    one draw per clip (crop, jitter factors and order, grayscale, blur sigma, solarize, flip) applied
    to all its frames. Blur is torchvision's (kernel 10 % of the side, reflected borders), as the
    CPU clip views; jitter (0.8, 0.8, 0.4, 0.2) p 0.8, grayscale p 0.2, crop scale (0.2, 0.766)."""

    def __init__(self, size, mean, std, scale=(0.2, 0.766), jitter=(0.8, 0.8, 0.4, 0.2), jitter_p=0.8,
                 gray_p=0.2, blur_p=1.0, solarize_p=0.0, ratio=(3 / 4, 4 / 3)):
        self.size, self.scale, self.ratio, self.jitter = size, tuple(scale), ratio, jitter
        self.jitter_p, self.gray_p, self.blur_p, self.solarize_p = jitter_p, gray_p, blur_p, solarize_p
        self.blur_kernel = int(0.1 * size) // 2 * 2 + 1
        self.mean = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)

    def __call__(self, clips, g, box=None):
        """`box` (top, left, h, w), drawn by the caller, serves padded batches of varied sizes."""
        b, c, t, h, w = clips.shape
        top, left, ch, cw = ga.crop_boxes(b, h, w, self.scale, self.ratio, g) if box is None else box
        jittered, gray, blurred, solarized, flip = (ga.chance(b, p, g) for p in
                                                   (self.jitter_p, self.gray_p, self.blur_p, self.solarize_p, 0.5))
        factors, order = ga.jitter_params(b, self.jitter, True, g)
        sigma = ga.uniform(b, (0.1, 2.0), g)
        # frames into the batch, each carrying its clip's draws
        per_frame = lambda v: v.repeat_interleave(t, 0)
        frames = clips.permute(0, 2, 1, 3, 4).reshape(b * t, c, h, w)
        x = ga.resized_crop(frames, *(per_frame(v) for v in (top, left, ch, cw)), self.size, per_frame(flip))
        f, o = per_frame(factors), per_frame(order)
        x = ga.apply_where(per_frame(jittered), x, lambda x, i: ga.color_jitter(x, f[i], o[i], self.jitter))
        x = ga.apply_where(per_frame(gray), x, lambda x, i: ga.grayscale(x).expand_as(x))
        s = per_frame(sigma)
        x = ga.apply_where(per_frame(blurred), x, lambda x, i: reflect_blur(x, s[i], self.blur_kernel))
        x = ga.apply_where(per_frame(solarized), x, lambda x, i: torch.where(x >= 0.5, 1 - x, x))
        x = (x - self.mean.to(x.device)) / self.std.to(x.device)
        return x.view(b, t, c, self.size, self.size).permute(0, 2, 1, 3, 4)


def clip_device_views(size, mean, std):
    """video_augment.clip_views on the device: blur p 1.0; blur p 0.1 + solarize p 0.2."""
    return [ClipBatchView(size, mean, std, blur_p=1.0), ClipBatchView(size, mean, std, blur_p=0.1, solarize_p=0.2)]


def rho_clip_device_view(size, mean, std):
    """video_augment.rho_clip_view on the device (rhoSimCLR / rhoMoCo): jitter (0.6, 0.6, 0.6, 0.15)
    p 0.8, grayscale p 0.2, blur p 0.5, no solarize."""
    return ClipBatchView(size, mean, std, jitter=(0.6, 0.6, 0.6, 0.15), blur_p=0.5)


def reflect_blur(x, sigma, kernel):
    """torchvision's gaussian_blur (kernel taps, reflected borders) of [n, C, H, W] with sigma[i] per
    image: a separable blur as two grouped 1-D convolutions, kernel taps per pixel."""
    n, c, h, w = x.shape
    half = kernel // 2
    taps = torch.linspace(-half, half, kernel, device=x.device).view(1, -1)
    weights = torch.exp(-0.5 * (taps / sigma.view(-1, 1).to(x.device)) ** 2)
    weights = (weights / weights.sum(1, keepdim=True)).to(x.dtype).repeat_interleave(c, 0).view(n * c, 1, kernel)
    rows = torch.nn.functional.pad(x.reshape(1, n * c, h, w), (half, half, 0, 0), mode='reflect')
    x = torch.nn.functional.conv2d(rows, weights.view(n * c, 1, 1, kernel), groups=n * c)
    cols = torch.nn.functional.pad(x, (0, 0, half, half), mode='reflect')
    return torch.nn.functional.conv2d(cols, weights.view(n * c, 1, kernel, 1), groups=n * c).view(n, c, h, w)


def temporal_difference(clips, partners):
    """video_augment.temporal_difference of uint8 clip batches [B, C, T, H, W] on the device:
    (gray(frame) - gray(partner) + 255) / 2, kept on 3 channels."""
    gray = [TF2.rgb_to_grayscale(x.transpose(1, 2), num_output_channels=3).float() for x in (clips, partners)]
    return ((gray[0] - gray[1] + 255) / 2).round().clamp(0, 255).to(torch.uint8).transpose(1, 2).contiguous()
