"""Device-side views of the strong pipelines: CLSA's weak and strong views (augment.CLSATransform) and
MoCo's multi-crop with Revisiting-Contrastive-SSL's constrained cropping and AutoAugment
(augment.MultiCropTransform).

The strong operations run on uint8 views, as PIL holds the image at that point, and follow PIL's
arithmetic: ImageEnhance's blends truncate, its grayscale is the integer ITU-R 601-2 luma, and the
geometric operations read the input pixel under each output pixel's centre (PIL's nearest-neighbour
affine transform, black outside), so they equal PIL's to the pixel. Equalize and autocontrast are
torchvision's tensor ops, which can differ from PIL's by rounding. Every draw is per sample, from
the epoch's generator `g`, as gpu_augment's views.
"""
import math

import torch
from torchvision.transforms import AutoAugment, AutoAugmentPolicy
from torchvision.transforms.v2 import functional as TF2

import augment
import gpu_augment as ga


# ----------------------------------------------------------------------------- PIL's operations, batched

def blend(degenerate, x, factor):
    """PIL's Image.blend(degenerate, x, factor) of uint8 images: truncated, clipped to 0..255."""
    out = degenerate.float() + factor.view(-1, 1, 1, 1).float() * (x.float() - degenerate.float())
    return out.clamp_(0, 255).floor_().to(torch.uint8)


def luma(x):
    """PIL's convert('L') of uint8 RGB [n, 3, H, W]: integer weights, rounded."""
    r, g, b = x.long().unbind(1)
    return ((r * 19595 + g * 38470 + b * 7471 + 0x8000) >> 16).unsqueeze(1)


def brightness(x, factor):
    return blend(torch.zeros_like(x), x, factor)


def color(x, factor):
    return blend(luma(x).expand_as(x), x, factor)


def contrast(x, factor):
    mean = (luma(x).double().mean((1, 2, 3), keepdim=True) + 0.5).floor()  # int(mean + 0.5)
    return blend(mean.expand_as(x), x, factor)


def sharpness(x, factor):
    """PIL's ImageFilter.SMOOTH (3x3, centre 5, the rest 1, / 13) as the degenerate, the border
    pixels left as they are."""
    n, c, h, w = x.shape
    kernel = torch.ones(c, 1, 3, 3, device=x.device)
    kernel[:, :, 1, 1] = 5
    smooth = torch.nn.functional.conv2d(x.float(), kernel / 13, groups=c)
    degenerate = x.clone()
    degenerate[..., 1:-1, 1:-1] = smooth.clamp_(0, 255).round_().to(torch.uint8)
    return blend(degenerate, x, factor)


def posterize(x, bits):
    mask = (255 << (8 - bits.long())) & 255
    return x & mask.view(-1, 1, 1, 1).to(torch.uint8)


def solarize(x, threshold):
    return torch.where(x.float() >= threshold.view(-1, 1, 1, 1), 255 - x, x)


def affine(x, coefficients):
    """PIL's img.transform(size, AFFINE, (a, b, c, d, e, f)) with nearest neighbour, per image
    (coefficients [n, 6]): output pixel (x, y) is the input pixel under (a X + b Y + c, d X + e Y + f),
    X = x + 0.5, Y = y + 0.5, black outside. PIL computes these in 16.16 fixed point (its affine_fixed),
    so does this, which puts points near a pixel edge where PIL puts them. torchvision's affine takes
    one matrix per call and samples at other pixel centres, hence this gather."""
    n, c, h, w = x.shape
    fixed = lambda v: (v * 65536 + 0.5).floor().long().view(-1, 1, 1)
    a, b, cc, d, e, f = coefficients.to(x.device, torch.float64).unbind(1)
    ys = torch.arange(h, device=x.device).view(1, -1, 1)
    xs = torch.arange(w, device=x.device).view(1, 1, -1)
    u = (fixed(cc + b * 0.5 + a * 0.5) + ys * fixed(b) + xs * fixed(a)) >> 16
    v = (fixed(f + e * 0.5 + d * 0.5) + ys * fixed(e) + xs * fixed(d)) >> 16
    inside = (u >= 0) & (u < w) & (v >= 0) & (v < h)
    index = (v.clamp(0, h - 1) * w + u.clamp(0, w - 1)).view(n, 1, -1).expand(-1, c, -1)
    return x.flatten(2).gather(2, index).view(n, c, h, w) * inside.unsqueeze(1)


def rotation(angle, h, w):
    """The coefficients of PIL's img.rotate(angle) (degrees, anticlockwise, about the centre) [n, 6]."""
    t = -angle.double() * math.pi / 180
    cos, sin = t.cos().round(decimals=15), t.sin().round(decimals=15)  # as PIL rounds them
    cx, cy = w / 2, h / 2
    return torch.stack([cos, sin, cx - cos * cx - sin * cy, -sin, cos, cy + sin * cx - cos * cy], 1)


def shear_translate(n, device, b=0.0, c=0.0, d=0.0, f=0.0):
    """Coefficients (1, b, c, d, 1, f) [n, 6] of a shear / translation; each a number or [n]."""
    one = torch.ones(n, dtype=torch.float64, device=device)
    return torch.stack([one, one * b, one * c, one * d, one, one * f], 1)


def equalize(x, _=None):
    return TF2.equalize(x)


def autocontrast(x, _=None):
    return TF2.autocontrast(x)


def invert(x, _=None):
    return 255 - x


# ----------------------------------------------------------------------------- CLSA's strong augmentation

def _enhance(op):
    return lambda x, v: op(x, v * 0.9 / 10 + 0.05)


# augment.CLSA_OPS on uint8 batches: name -> op(x, v) with v [m] float64 (1..9, signed for SIGNED_OPS),
# magnitudes by the same formulas in the same order of operations (int() truncates toward 0)
CLSA_BATCH_OPS = {
    'AutoContrast': autocontrast,
    'Brightness': _enhance(brightness),
    'Color': _enhance(color),
    'Contrast': _enhance(contrast),
    'Equalize': equalize,
    'Identity': lambda x, v: x,
    'Posterize': lambda x, v: posterize(x, (v * 4 / 10).trunc() + 4),
    'Rotate': lambda x, v: affine(x, rotation((v * 30 / 10).trunc(), *x.shape[-2:])),
    'Sharpness': _enhance(sharpness),
    'ShearX': lambda x, v: affine(x, shear_translate(len(x), x.device, b=v * 0.3 / 10)),
    'ShearY': lambda x, v: affine(x, shear_translate(len(x), x.device, d=v * 0.3 / 10)),
    'Solarize': lambda x, v: solarize(x, 256 - (v * 256 / 10).trunc()),
    'TranslateX': lambda x, v: affine(x, shear_translate(len(x), x.device, c=(v * 0.3 / 10 * x.shape[-1]).trunc())),
    'TranslateY': lambda x, v: affine(x, shear_translate(len(x), x.device, f=(v * 0.3 / 10 * x.shape[-2]).trunc())),
}
assert list(CLSA_BATCH_OPS) == list(augment.CLSA_OPS)  # the same pool, in the same order (the draws index it)


class StrongOps:
    """augment.StrongAugment of each image of a uint8 batch: `aug_times` operations drawn with
    replacement per image, each applied with probability 1/2 at a magnitude from 1..9 (the signed
    ones negated with probability 1/2). Images are grouped by operation at each of the steps."""

    def __init__(self, aug_times=5):
        self.aug_times = augment.StrongAugment(aug_times).aug_times  # checks the value

    def sample(self, n, g):
        """(operation index into CLSA_BATCH_OPS, signed magnitude, applied) [n, aug_times] each."""
        names, dev = list(CLSA_BATCH_OPS), g.device
        op = torch.randint(len(names), (n, self.aug_times), generator=g, device=dev)
        v = torch.randint(1, 10, (n, self.aug_times), generator=g, device=dev).double()
        applied = torch.rand(n, self.aug_times, generator=g, device=dev) < 0.5
        negative = torch.rand(n, self.aug_times, generator=g, device=dev) < 0.5
        signed = torch.tensor([name in augment.SIGNED_OPS for name in names], device=dev)[op]
        return op, torch.where(signed & negative, -v, v), applied

    def __call__(self, x, g):
        op, v, applied = (t.to(x.device) for t in self.sample(len(x), g))
        for step in range(self.aug_times):
            for k, name in enumerate(CLSA_BATCH_OPS):
                x = ga.apply_where(applied[:, step] & (op[:, step] == k), x,
                                   lambda x, i: CLSA_BATCH_OPS[name](x, v[i, step]))
        return x


def clsa_device_views(key_size, nmb_crops, size_crops, min_scale_crops, max_scale_crops, pick_weak, pick_strong,
                      aug_times, mean, std):
    """augment.CLSATransform on the device: the key (MoCo v2's view, 20-100 %), the picked weak crops
    (MoCo v2's view), the picked strong crops (MoCo v2's view, then StrongOps after the flip)."""
    cpu = augment.CLSATransform(key_size, nmb_crops, size_crops, min_scale_crops, max_scale_crops, pick_weak,
                                pick_strong, aug_times, mean, std)  # checks the options; its crops and picks
    view = lambda j, strong=None: ga.moco_v2_view(cpu.crops[j][0], mean, std, cpu.crops[j][1], strong)
    weak = [view(j) for j in cpu.pick_weak]
    strong = [view(j, StrongOps(aug_times)) for j in cpu.pick_strong]
    return [ga.moco_v2_view(key_size, mean, std), *weak, *strong]


# ----------------------------------------------------------------------------- AutoAugment, per image

def _autoaugment_op(name, x, magnitude):
    """torchvision's AutoAugment operation `name` (one of the ImageNet policy's) as it applies it to
    a PIL image, at a magnitude per image [m] (float, signed)."""
    if name == 'ShearX':  # torchvision's inverse matrix of a shear by atan(magnitude), about (0, 0)
        shear = torch.deg2rad(torch.rad2deg(torch.atan(magnitude.double()))).tan()
        return affine(x, shear_translate(len(x), x.device, b=shear))
    if name == 'Rotate':
        return affine(x, rotation(magnitude, *x.shape[-2:]))
    if name in ('Color', 'Contrast', 'Sharpness'):
        return {'Color': color, 'Contrast': contrast, 'Sharpness': sharpness}[name](x, 1.0 + magnitude)
    if name == 'Posterize':
        return posterize(x, magnitude.trunc())
    if name == 'Solarize':
        return solarize(x, magnitude)
    return {'AutoContrast': autocontrast, 'Equalize': equalize, 'Invert': invert}[name](x)


class AutoAugmentOps:
    """torchvision's AutoAugment (ImageNet policy) of each image of a uint8 batch: a sub-policy per
    image, each of its two operations applied with its probability, its sign drawn per image (its
    get_params, per image); images are grouped by sub-policy. The policies and magnitudes are
    torchvision's own tables."""

    def __init__(self):
        self.reference = AutoAugment(AutoAugmentPolicy.IMAGENET)
        self.policies = self.reference.policies

    def sample(self, n, g):
        """AutoAugment.get_params for n images: sub-policy [n], the probability draws [n, 2] (an
        operation applies where its draw <= its p) and signs [n, 2] (0: negated)."""
        return (torch.randint(len(self.policies), (n,), generator=g, device=g.device),
                torch.rand(n, 2, generator=g, device=g.device),
                torch.randint(2, (n, 2), generator=g, device=g.device))

    def __call__(self, x, g):
        space = self.reference._augmentation_space(10, tuple(x.shape[-2:]))
        policy, probs, signs = (t.to(x.device) for t in self.sample(len(x), g))
        for k, ops in enumerate(self.policies):
            for slot, (name, p, magnitude_id) in enumerate(ops):
                magnitudes, signed = space[name]
                magnitude = float(magnitudes[magnitude_id]) if magnitude_id is not None else 0.0
                m = torch.where((signs[:, slot] == 0) & signed, -magnitude, magnitude)
                x = ga.apply_where((policy == k) & (probs[:, slot] <= p), x,
                                   lambda x, i: _autoaugment_op(name, x, m[i]))
        return x


# ----------------------------------------------------------------------------- MoCo's multi-crop

def constrained_boxes(n, height, width, scale, ratio, within, g, min_overlap=0.1, tries=10):
    """augment.sample_crop_box(within=...) for n images: the first of `tries` candidates (area ~
    U(scale), log-aspect ~ U(log ratio), position uniform) that fits the image and overlaps its box
    of `within` (top, left, h, w tensors) by at least min_overlap times the area drawn for it; else
    a fresh unconstrained box."""
    area = height * width
    target = area * ga.uniform(n * tries, scale, g).view(n, tries)
    aspect = torch.exp(ga.uniform(n * tries, (math.log(ratio[0]), math.log(ratio[1])), g)).view(n, tries)
    w, h = torch.sqrt(target * aspect).round(), torch.sqrt(target / aspect).round()
    top = (torch.rand(n, tries, generator=g, device=g.device) * (height - h + 1)).floor()
    left = (torch.rand(n, tries, generator=g, device=g.device) * (width - w + 1)).floor()
    k_top, k_left, k_h, k_w = (v.view(-1, 1) for v in within)
    rows = (torch.minimum(top + h, k_top + k_h) - torch.maximum(top, k_top)).clamp(min=0)
    cols = (torch.minimum(left + w, k_left + k_w) - torch.maximum(left, k_left)).clamp(min=0)
    ok = (w > 0) & (w <= width) & (h > 0) & (h <= height) & (rows * cols >= min_overlap * target)
    first = ok.float().argmax(1, keepdim=True)
    fallback = ga.crop_boxes(n, height, width, scale, ratio, g, tries)
    found = ok.any(1)
    return tuple(torch.where(found, v.gather(1, first)[:, 0], f) for v, f in zip((top, left, h, w), fallback))


class MultiCropView:
    """Crop k of augment.MultiCropTransform: MoCo v2's augmentation of a crop of side `size`, area in
    `scale`; with `auto_augment`, instead flip -> AutoAugment for a random half of the images; with
    `key` (the key crop's MultiCropView, called first on the same batch), a box constrained to
    overlap the key's box."""

    def __init__(self, size, scale, mean, std, auto_augment=False, key=None, ratio=(3 / 4, 4 / 3)):
        self.size, self.scale, self.ratio, self.key = size, scale, ratio, key
        self.secondary = ga.moco_v2_view(size, mean, std, scale)
        self.auto = ga.BatchView(size, mean, std, scale, strong=AutoAugmentOps()) if auto_augment else None
        self.box = None

    def __call__(self, images, g, box=None):
        n, _, h, w = images.shape
        if self.key is not None:
            if box is not None:  # image folders' loader draws boxes in each image's size (main_moco refuses it)
                raise ValueError('constrained crops draw their own boxes, in one size for the batch')
            box = constrained_boxes(n, h, w, self.scale, self.ratio, self.key.box, g)
        elif box is None:
            box = ga.crop_boxes(n, h, w, self.scale, self.ratio, g)
        self.box = box  # the constrained crops after the key read it
        if self.auto is None:
            return self.secondary(images, g, box)
        on = lambda view: lambda i: view(images[i], g, tuple(v[i] for v in box))
        return either(ga.chance(n, 0.5, g).to(images.device), on(self.auto), on(self.secondary))


def either(mask, first, second):
    """first(indices) where mask, second(indices) elsewhere, per image. On CPU each runs on its own
    images only (half the work each); on an accelerator both on all of them, then selected (finding
    the chosen ones would make the host wait for the device), as gpu_augment.apply_where. On CPU the
    branches thus draw for their own images in turn: as reproducible, from another part of the stream."""
    if mask.device.type != 'cpu':
        return torch.where(mask.view(-1, 1, 1, 1), first(slice(None)), second(slice(None)))
    parts = [(i, f(i)) for i, f in ((mask.nonzero()[:, 0], first), ((~mask).nonzero()[:, 0], second)) if len(i)]
    out = parts[0][1].new_empty(len(mask), *parts[0][1].shape[1:])
    for i, x in parts:
        out[i] = x
    return out


def multi_crop_device_views(nmb_crops, size_crops, min_scale_crops, max_scale_crops, mean, std,
                            constrained=False, auto_augment=()):
    """augment.MultiCropTransform on the device, one MultiCropView per crop in output order."""
    cpu = augment.MultiCropTransform(nmb_crops, size_crops, min_scale_crops, max_scale_crops, mean, std,
                                     constrained, auto_augment)  # checks the options; its crops
    views = []
    for k, (size, scale) in enumerate(cpu.crops):
        key = views[1] if constrained and k >= cpu.n_large else None
        views.append(MultiCropView(size, scale, mean, std, k in cpu.auto_augment, key, cpu.ratio))
    return views
