"""Augmentation on the device (--gpu_aug): the views of augment.py's pipelines, drawn per sample but
applied to a whole batch at once, for datasets held in memory as uint8 pixels (cifar10/100, stl10,
digits). The pixels go to the device once; each step indexes a batch and augments it there, so
no worker decodes or augments anything and a GPU is not left waiting for PIL.

The distributions are the PIL pipelines': the crop box is drawn by torchvision's RandomResizedCrop
rule (10 tries of area ~ U(scale) and log-aspect ~ U(log ratio), then the centre-crop fallback), and
resized with PIL's bilinear filter (antialiased when shrinking, never reading outside the box);
ColorJitter draws its four factors and a random order per image as torchvision does; grayscale,
blur (sigma ~ U(0.1, 2), edges replicated as PIL) and solarize (threshold 128) are applied with
their probabilities. Values stay in float in [0, 1] between operations, where PIL rounds to uint8.
All random draws come from one torch.Generator per epoch and rank (seeded from --seed, the epoch
and the rank), so a run is reproducible and resumes exactly; the same code runs on CPU tensors.
"""
import math

import torch

GRAY = (0.299, 0.587, 0.114)  # ITU-R 601-2 luma, as PIL's convert('L')
CACHE_PIXELS = 2 ** 16  # output pixels of the views a CPU augments at once: one 224-px view, 64 of 32 px


class BatchView:
    """One augmented view of every image of a batch. Order: crop + resize, flip, colour jitter
    (probability jitter_p), grayscale (gray_p), Gaussian blur (blur_p), solarize (solarize_p),
    normalise. Flip commutes with the rest, so MoCo v2's flip-last pipeline is the same view.
    `strong(uint8 views, g) -> uint8 views` (gpu_strong: CLSA's strong augmentation, AutoAugment)
    comes last, after the flip as in its CPU pipeline, on the views rounded to uint8 as PIL holds them."""

    def __init__(self, size, mean, std, scale=(0.2, 1.0), ratio=(3 / 4, 4 / 3), flip_p=0.5,
                 jitter=None, jitter_p=0.8, random_order=True, gray_p=0.0, blur_p=0.0,
                 blur_sigma=(0.1, 2.0), solarize_p=0.0, strong=None):
        self.strong = strong
        self.size, self.scale, self.ratio, self.flip_p = size, scale, ratio, flip_p
        self.jitter, self.jitter_p, self.random_order = jitter, jitter_p, random_order
        self.gray_p, self.blur_p, self.blur_sigma, self.solarize_p = gray_p, blur_p, blur_sigma, solarize_p
        self.mean = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)

    def __call__(self, images, g, box=None):
        """uint8 images [B, C, H, W] on any device -> normalised float views [B, C, size, size].
        `box` (top, left, h, w), drawn by the caller, serves padded batches of varied sizes (gpu_views)."""
        n, _, h, w = images.shape
        # Every random parameter first, for the whole batch: an image's draws do not depend on
        # which other images an operation ends up applied to.
        top, left, ch, cw = crop_boxes(n, h, w, self.scale, self.ratio, g) if box is None else box
        draws = {'top': top, 'left': left, 'ch': ch, 'cw': cw, 'flip': chance(n, self.flip_p, g)}
        for name, p in (('jittered', self.jitter_p), ('gray', self.gray_p), ('blurred', self.blur_p),
                        ('solarized', self.solarize_p)):
            draws[name] = chance(n, p, g)
        if self.jitter is not None:
            draws['factors'], draws['order'] = jitter_params(n, self.jitter, self.random_order, g)
        draws['sigma'] = uniform(n, self.blur_sigma, g)
        if images.device.type == 'cpu':
            # a few images at a time, so that each operation's operands stay in the cache: 2-4x
            chunk = max(1, CACHE_PIXELS // self.size ** 2)
            parts = (self.augment(images[i:i + chunk], {k: v[i:i + chunk] for k, v in draws.items()})
                     for i in range(0, n, chunk))
        else:
            parts = [self.augment(images, draws)]
        if self.strong is None:
            return torch.cat([self.normalise(x) for x in parts])
        x = torch.cat(list(parts))
        return self.normalise(self.strong((x * 255).round_().to(torch.uint8), g).float() / 255)

    def normalise(self, x):
        return (x - self.mean.to(x.device)) / self.std.to(x.device)

    def augment(self, images, d):
        """The views of `images` in [0, 1] before the strong operations, by the draws `d` of __call__."""
        x = resized_crop(images, d['top'], d['left'], d['ch'], d['cw'], self.size, d['flip'])
        if self.jitter is not None and self.jitter_p > 0:
            x = apply_where(d['jittered'], x, lambda x, i: color_jitter(x, d['factors'][i], d['order'][i], self.jitter))
        if self.gray_p > 0:
            x = apply_where(d['gray'], x, lambda x, i: grayscale(x).expand_as(x))
        if self.blur_p > 0:
            x = apply_where(d['blurred'], x, lambda x, i: gaussian_blur(x, d['sigma'][i], self.blur_sigma[1]))
        if self.solarize_p > 0:
            x = apply_where(d['solarized'], x, lambda x, i: torch.where(x >= 128 / 255, 1 - x, x))
        return x


def supcon_view(size, mean, std):
    """augment.supcon_transform: crop 20-100 %, flip, jitter (0.4, 0.4, 0.4, 0.1) p 0.8, grayscale p 0.2."""
    return BatchView(size, mean, std, jitter=(0.4, 0.4, 0.4, 0.1), gray_p=0.2)


def moco_v2_view(size, mean, std, scale=(0.2, 1.0), strong=None):
    """augment.moco_transform(aug_plus=True) and the multi-crops' secondary augmentation:
    jitter p 0.8, grayscale p 0.2, blur p 0.5, flip (then `strong`: CLSA's strong views)."""
    return BatchView(size, mean, std, scale=scale, jitter=(0.4, 0.4, 0.4, 0.1), gray_p=0.2, blur_p=0.5,
                     strong=strong)


# ----------------------------------------------------------------------------- random draws

def uniform(n, bounds, g):
    lo, hi = bounds
    return torch.rand(n, generator=g, device=g.device) * (hi - lo) + lo


def chance(n, p, g):
    """n coin flips that come up True with probability p."""
    return torch.rand(n, generator=g, device=g.device) < p


def crop_boxes(n, height, width, scale, ratio, g, tries=10):
    """n boxes (top, left, h, w) as float tensors, drawn as torchvision's RandomResizedCrop.get_params:
    the first of `tries` candidates that fits the image, else the centre crop at the nearest
    allowed aspect ratio."""
    area = height * width
    target = area * uniform(n * tries, scale, g).view(n, tries)
    aspect = torch.exp(uniform(n * tries, (math.log(ratio[0]), math.log(ratio[1])), g)).view(n, tries)
    # Python's round() halves to even, as torch.round does
    w = torch.sqrt(target * aspect).round()
    h = torch.sqrt(target / aspect).round()
    fits = (w > 0) & (w <= width) & (h > 0) & (h <= height)
    first = fits.float().argmax(1, keepdim=True)  # index of the first candidate that fits
    w, h, ok = w.gather(1, first)[:, 0], h.gather(1, first)[:, 0], fits.any(1)
    # centre-crop fallback
    in_ratio = width / height
    if in_ratio < min(ratio):
        fw, fh = width, round(width / min(ratio))
    elif in_ratio > max(ratio):
        fw, fh = round(height * max(ratio)), height
    else:
        fw, fh = width, height
    w = torch.where(ok, w, torch.full_like(w, fw))
    h = torch.where(ok, h, torch.full_like(h, fh))
    top = (torch.rand(n, generator=g, device=g.device) * (height - h + 1)).floor().clamp(max=height - h)
    left = (torch.rand(n, generator=g, device=g.device) * (width - w + 1)).floor().clamp(max=width - w)
    top = torch.where(ok, top, (height - h) // 2)
    left = torch.where(ok, left, (width - w) // 2)
    return top, left, h, w


# ----------------------------------------------------------------------------- operations

def resize_weights(start, length, in_size, out_size):
    """[n, out_size, in_size] matrices that crop [start, start + length) out of in_size pixels and
    resize it to out_size with PIL's bilinear filter: a triangle widened by the shrink factor when
    shrinking (antialiasing), taps outside the box dropped and the rest renormalised."""
    scale = (length / out_size).view(-1, 1, 1)
    support = scale.clamp(min=1.0)
    centre = (torch.arange(out_size, device=start.device) + 0.5).view(1, -1, 1) * scale
    pixel = torch.arange(in_size, device=start.device).view(1, 1, -1) - start.view(-1, 1, 1)
    weights = (1 - ((pixel + 0.5 - centre) / support).abs()).clamp(min=0)
    weights = weights * ((pixel >= 0) & (pixel < length.view(-1, 1, 1)))
    return weights / weights.sum(2, keepdim=True)


def resized_crop(images, top, left, ch, cw, size, flip):
    """uint8 [n, C, H, W] -> float [n, C, size, size] in [0, 1]: each image's box resized as PIL's
    bilinear filter does, mirrored where flip. Small images (CIFAR) and accelerators: two batched
    matrix products (resize_weights). Large images on a CPU: torch's uint8 antialiased resize per
    box (SIMD, PIL's filter and rounding), which reads only the box: 10x fewer operations, and 4x
    faster again on channels-last images (decoded files: gpu_loaders.pad keeps their layout)."""
    n, _, h, w = images.shape
    if max(h, w) > 64 and images.device.type == 'cpu':
        out = torch.empty(n, images.shape[1], size, size)
        for i, (t, l, bh, bw, f) in enumerate(zip(*(v.long().tolist() for v in (top, left, ch, cw, flip)))):
            box = images[i:i + 1, :, t:t + bh, l:l + bw]
            x = torch.nn.functional.interpolate(box, (size, size), mode='bilinear', antialias=True, align_corners=False)
            out[i] = x[0].flip(-1) if f else x[0]  # to float and channels-first in one copy
        return out.div_(255)
    rows = resize_weights(top, ch, h, size)
    cols = resize_weights(left, cw, w, size)
    cols = torch.where(flip.view(-1, 1, 1), cols.flip(1), cols)  # mirrored columns = flipped view
    return (rows.unsqueeze(1) @ (images.float() / 255) @ cols.transpose(1, 2).unsqueeze(1)).clamp_(0, 1)


def apply_where(mask, x, op):
    """x with op(images, their indices) applied where mask is True. On CPU op runs on the chosen
    images only, written into x in place (x is always an intermediate of a view: copying it at
    each of a jitter's 16 steps cost more than the jitter); on an accelerator on all of them, then
    selected: finding the chosen ones (nonzero) would make the host wait for the device."""
    if x.device.type == 'cpu':
        idx = mask.nonzero()[:, 0]
        if idx.numel() == 0:
            return x
        if idx.numel() == len(x):  # all of them (BatchView's chunks of one image): nothing to gather
            return op(x, slice(None)).contiguous()  # a later op writes into it: not grayscale's expanded view
        x[idx] = op(x[idx], idx)
        return x
    return torch.where(mask.view(-1, 1, 1, 1), op(x, slice(None)), x)


def grayscale(x):
    """[n, 3, H, W] -> [n, 1, H, W] luma."""
    r, gr, b = x.split(1, dim=1)
    return (r * GRAY[0]).add_(gr, alpha=GRAY[1]).add_(b, alpha=GRAY[2])


def jitter_params(n, strengths, random_order, g):
    """torchvision's ColorJitter(brightness, contrast, saturation, hue) draws for n images:
    factors [n, 4] from [1 - s, 1 + s] (hue from [-hue, hue]) and the order [n, 4] of the four
    operations, a uniform permutation per image with random_order, else the listed order."""
    factors = torch.stack([uniform(n, (c - s, c + s), g) for s, c in zip(strengths, (1, 1, 1, 0))], 1)
    if random_order:
        order = torch.rand(n, 4, generator=g, device=g.device).argsort(1)
    else:
        order = torch.arange(4, device=g.device).expand(n, 4)
    return factors, order


def color_jitter(x, factors, order, strengths):
    """Brightness, contrast, saturation and hue adjusted in each image's order (see jitter_params);
    an operation of strength 0 is skipped, as torchvision does."""
    ops = (adjust_brightness, adjust_contrast, adjust_saturation, adjust_hue)
    x = x.clone()  # apply_where writes in place on CPU; the caller's x stays as it was
    for position in range(4):
        for k, op in enumerate(ops):
            if strengths[k]:
                x = apply_where(order[:, position] == k, x, lambda x, i: op(x, factors[i, k].view(-1, 1, 1, 1)))
    return x


def adjust_brightness(x, f):
    return (x * f).clamp_(0, 1)


def adjust_contrast(x, f):
    mean = grayscale(x).mean((1, 2, 3), keepdim=True)
    return torch.lerp(mean, x, f).clamp_(0, 1)  # f x + (1 - f) mean in one operation


def adjust_saturation(x, f):
    return torch.lerp(grayscale(x), x, f).clamp_(0, 1)


# (centre, slope, offset) of each channel's share of the hue's colour: r, g, b = the ramps
# clamp(|h - 1/2| 6 - 1), clamp(2 - |h - 1/3| 6), clamp(2 - |h - 2/3| 6) of h in [0, 1) turns
HUE_RAMPS = ((0.5, 6.0, -1.0), (1 / 3, -6.0, 2.0), (2 / 3, -6.0, 2.0))


def adjust_hue(x, f):
    """torchvision's adjust_hue (the HSV hue rotated by f turns, f in [-0.5, 0.5]) of float
    [..., 3, H, W] in [0, 1]; f a number or a tensor that broadcasts over [..., 1, H, W]. Value and
    saturation are kept, so each channel is min + (max - min) * its ramp of the new hue: about 20
    operations on one-channel planes, 5x faster on a CPU than the HSV round trip (same result to 1e-6)."""
    r, gr, b = x.split(1, dim=-3)
    maxc = torch.maximum(torch.maximum(r, gr), b)
    minc = torch.minimum(torch.minimum(r, gr), b)
    delta = maxc - minc
    inv = delta.clamp(min=1e-12).reciprocal_()  # grey pixels: every difference below is 0
    # hue in sixths by the largest channel (r first on ties, then g); 1 - sign() masks, not where(): 10x faster on a CPU
    is_r, is_g = 1 - torch.sign(maxc - r), 1 - torch.sign(maxc - gr)
    h = (r - gr).mul_(inv).add_(4)
    h = h.addcmul_(is_g, (b - r).mul_(inv).add_(2).sub_(h))
    h = h.addcmul_(is_r, (gr - b).mul_(inv).sub_(h))
    h = h.mul_(1 / 6).add_(f)
    h = h.sub_(h.floor())
    return torch.cat([(h - centre).abs_().mul_(slope).add_(offset).clamp_(0, 1).mul_(delta).add_(minc)
                      for centre, slope, offset in HUE_RAMPS], dim=-3)


def gaussian_blur(x, sigma, max_sigma):
    """PIL's GaussianBlur(radius=sigma[i]) of each image: three passes of a box blur whose
    fractional radius gives the Gaussian's variance, edge pixels replicated at every pass, along
    rows then columns. Each pass is a matrix; the three-pass blur is their product. sigma <= max_sigma."""
    n, _, h, w = x.shape
    # PIL's _gaussian_blur_radius(sigma, 3 passes): box of radius l + a (a: weight of the taps at +-(l + 1))
    var = sigma.double() ** 2 / 3
    l = ((torch.sqrt(12 * var + 1) - 1) / 2).floor()
    a = (2 * l + 1) * (l * (l + 1) - 3 * var) / (6 * (var - (l + 1) ** 2))
    reach = int((math.sqrt(4 * max_sigma ** 2 + 1) - 1) // 2) + 1  # the largest l + 1
    taps = torch.arange(-reach, reach + 1, device=x.device, dtype=torch.float64).view(1, -1)
    kernel = torch.where(taps.abs() <= l.view(-1, 1), 1.0,
                         torch.where(taps.abs() == l.view(-1, 1) + 1, a.view(-1, 1), 0.0))
    kernel = (kernel / kernel.sum(1, keepdim=True)).to(x.dtype)  # [n, taps]

    def blur_matrix(size):
        # out[i] = sum_t kernel[t] in[clamp(i + t)], taps off the edge folded onto the edge pixel
        m = torch.zeros(n, size, size, device=x.device, dtype=x.dtype)
        src = (torch.arange(size, device=x.device).view(-1, 1) + taps.long()).clamp(0, size - 1)
        m.scatter_add_(2, src.expand(n, -1, -1), kernel.view(n, 1, -1).expand(-1, size, -1))
        return m @ m @ m

    return blur_matrix(h).unsqueeze(1) @ x @ blur_matrix(w).transpose(1, 2).unsqueeze(1)


# ----------------------------------------------------------------------------- loader

class DeviceLoader:
    """The training loader of --gpu_aug: the pixels [N, C, H, W] (uint8) and labels moved to the
    device once; each batch, in the sampler's order, comes out as ([view(batch) for view in views],
    labels), as the CPU loader's TwoCropTransform batches do. `sampler` is datasets.SeededSampler;
    its seed, epoch and rank seed the generator of the epoch's draws."""

    def __init__(self, dataset, pixels, labels, views, sampler, batch_size, drop_last, device):
        self.dataset, self.views, self.sampler = dataset, views, sampler
        self.batch_size, self.drop_last, self.device = batch_size, drop_last, device
        self.pixels = pixels.to(device)
        self.labels = torch.as_tensor(labels, dtype=torch.long).to(device)

    def __len__(self):
        n = len(self.sampler)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def __iter__(self):
        s = self.sampler
        g = torch.Generator(self.device).manual_seed(((s.seed * 1_000_003 + s.epoch) * 1009 + s.rank) % 2**63)
        order = torch.tensor([i for i, _ in s], dtype=torch.long).to(self.device)
        for b in range(len(self)):
            idx = order[b * self.batch_size:(b + 1) * self.batch_size]
            yield self.augment(self.pixels[idx], g), self.labels[idx]

    def augment(self, images, g):
        if self.device.type != 'cpu':
            return [view(images, g) for view in self.views]
        # On CPU, one thread: these small operations gain little from more, and each parallel
        # region waits for every thread, which costs 20x on a busy machine (measured).
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            return [view(images, g) for view in self.views]
        finally:
            torch.set_num_threads(threads)
