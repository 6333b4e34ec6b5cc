"""Views of video clips: the same random crop, flip, colour jitter, blur and solarize on every frame
of a clip (SCE's and rhoMoCo / rhoSimCLR's video pretraining, linear evaluation, fine-tuning), CLSA's
strong operations drawn once per clip, the random temporal difference, and the multi-clip,
multi-crop test views."""
import torch
from torchvision import transforms as T
from torchvision.transforms.v2 import functional as TF2

from augment import CLSA_OPS, StrongAugment, sample_crop_box
from gpu_augment import adjust_hue

# A clip arrives as decoded: uint8 [T, C, H, W]. Each transform below draws its random parameters
# once per clip (torch's RNG, like everything here) and applies them to all frames at once as
# tensor operations (torchvision's, and faster equivalents of its hue (gpu_augment) and blur), so every
# frame gets the same crop, flip, jitter and blur. Views leave as float [C, T, H, W] (the layout
# of networks/resnet3d.py), normalised.

def temporal_difference(frames, partners):
    """SCE's temporal difference (uint8 in and out): grayscale(frame) - grayscale(partner), the
    frame that follows it, mapped to [0, 255] as (d + 255) / 2 and kept on 3 channels."""
    gray = [TF2.rgb_to_grayscale(x, num_output_channels=3).float() for x in (frames, partners)]
    return ((gray[0] - gray[1] + 255) / 2).round().clamp(0, 255).to(torch.uint8)


def _to_view(clip, mean, std):
    """[T, C, H, W] (uint8, or float in [0, 1]) -> normalised float [C, T, H, W]."""
    clip = TF2.normalize(TF2.to_dtype(clip, torch.float32, scale=True), mean, std)
    return clip.permute(1, 0, 2, 3).contiguous()


def _coin(p):
    return torch.rand(()).item() < p


def _blur_matrix(n, weights):
    """[n, n] matrix m such that x @ m convolves the rows of x with `weights`, borders reflected."""
    half = len(weights) // 2
    src = (torch.arange(n)[:, None] + torch.arange(-half, half + 1)[None]).abs()
    src = torch.where(src > n - 1, 2 * (n - 1) - src, src)
    m = torch.zeros(n, n)
    m.index_put_((src, torch.arange(n)[:, None].expand_as(src)), weights.expand_as(src).contiguous(),
                 accumulate=True)
    return m


def gaussian_blur(x, kernel, sigma):
    """torchvision's gaussian_blur (reflected borders) of [..., H, W] as two matrix products: a
    separable blur in BLAS, 6x faster on the CPU than torchvision's full 2D kernel, same result to 1e-6."""
    half = kernel // 2
    weights = torch.exp(-0.5 * (torch.linspace(-half, half, kernel) / sigma) ** 2)
    weights = weights / weights.sum()
    return _blur_matrix(x.shape[-2], weights).T @ x @ _blur_matrix(x.shape[-1], weights)


def color_jitter(x, jitter):
    """A T.ColorJitter's brightness, contrast, saturation and hue, in its random order, one draw
    for a whole clip (float [..., 3, H, W] in [0, 1])."""
    order, b, c, s, h = T.ColorJitter.get_params(jitter.brightness, jitter.contrast, jitter.saturation, jitter.hue)
    adjust = {0: (TF2.adjust_brightness, b), 1: (TF2.adjust_contrast, c), 2: (TF2.adjust_saturation, s),
              3: (adjust_hue, h)}
    for k in order.tolist():
        fn, factor = adjust[k]
        if factor is not None:
            x = fn(x, factor)
    return x


class ClipView:
    """One view of SCE's video pretraining: random resized crop (scale (0.2, 0.766), the released
    value), colour jitter (p 0.8), grayscale (p 0.2), Gaussian blur (sigma 0.1-2, kernel 10% of
    the side: 23 px at 224, p blur_p), solarize (threshold 0.5, p solarize_p), flip, normalise.
    SCE's two views differ only in blur_p / solarize_p (1.0 / 0 and 0.1 / 0.2, clip_views)."""

    def __init__(self, size, mean, std, scale=(0.2, 0.766), jitter=(0.8, 0.8, 0.4, 0.2), jitter_p=0.8,
                 gray_p=0.2, blur_p=1.0, solarize_p=0.0):
        self.size, self.mean, self.std, self.scale = size, mean, std, tuple(scale)
        self.jitter = T.ColorJitter(*jitter)  # holds the factor ranges; drawn by its get_params
        self.jitter_p, self.gray_p, self.blur_p, self.solarize_p = jitter_p, gray_p, blur_p, solarize_p
        self.blur_kernel = int(0.1 * size) // 2 * 2 + 1

    def __call__(self, clip):
        return _to_view(self.augment(clip), self.mean, self.std)

    def augment(self, clip):
        """The view before normalisation: float [T, C, size, size] in [0, 1]."""
        box = sample_crop_box(clip.shape[-1], clip.shape[-2], self.scale)
        x = TF2.to_dtype(TF2.resized_crop(clip, *box, [self.size, self.size], antialias=True),
                         torch.float32, scale=True)
        if _coin(self.jitter_p):
            x = color_jitter(x, self.jitter)
        if _coin(self.gray_p):
            x = TF2.rgb_to_grayscale(x, num_output_channels=3)
        if _coin(self.blur_p):
            sigma = torch.empty(1).uniform_(0.1, 2.0).item()
            x = gaussian_blur(x, self.blur_kernel, sigma)
        if _coin(self.solarize_p):
            x = TF2.solarize(x, 0.5)
        if _coin(0.5):
            x = TF2.horizontal_flip(x)
        return x

    def __repr__(self):
        return f'{self.__class__.__name__}(size={self.size}, blur_p={self.blur_p}, solarize_p={self.solarize_p})'


def clip_views(size, mean, std):
    """SCE's two asymmetric clip views (one per sampled clip): blur p 1.0; blur p 0.1 + solarize p 0.2."""
    return [ClipView(size, mean, std, blur_p=1.0), ClipView(size, mean, std, blur_p=0.1, solarize_p=0.2)]


def rho_clip_view(size, mean, std):
    """The view of every clip of rhoMoCo / rhoSimCLR (PySlowFast's contrastive_ssl configs, MoCo v2's
    augmentation on clips): random resized crop of 20-76.6 % of the area, colour jitter (0.6, 0.6, 0.6,
    0.15) with p 0.8, grayscale p 0.2, Gaussian blur (sigma 0.1-2) p 0.5, flip. main_supcon,
    main_moco and main_clsa draw it once per clip."""
    return ClipView(size, mean, std, jitter=(0.6, 0.6, 0.6, 0.15), blur_p=0.5)


class StrongClipView:
    """CLSA's strong view of a clip: `view`'s augmentation, then CLSA's strong operations
    (augment.StrongAugment: `aug_times` operations and magnitudes) drawn once for the clip and
    applied to each of its frames, so the clip stays one consistent video."""

    def __init__(self, view, aug_times):
        self.view, self.strong = view, StrongAugment(aug_times)

    def __call__(self, clip):
        x = (self.view.augment(clip) * 255).round().to(torch.uint8)  # PIL's operations take 8-bit images
        ops = self.strong.sample()
        frames = []
        for frame in x:
            img = TF2.to_pil_image(frame)
            for name, v in ops:
                img = CLSA_OPS[name](img, v)
            frames.append(TF2.pil_to_tensor(img))
        return _to_view(torch.stack(frames), self.view.mean, self.view.std)


class WeakStrongClip:
    """CLSA on videos: one clip's weak and strong view, independent crops of the same clip (as an
    image's weak and strong crops are of the same image); returns (weak, strong)."""

    def __init__(self, size, mean, std, aug_times):
        self.weak = rho_clip_view(size, mean, std)
        self.strong = StrongClipView(rho_clip_view(size, mean, std), aug_times)

    def __call__(self, clip):
        return self.weak(clip), self.strong(clip)


class ClipScaleCropFlip:
    """Supervised training and linear evaluation on clips (the released recipe): short side
    scaled to a random length in [size / 0.875, size / 0.7] (256-320 at 224), random crop of
    `size`, flip, normalise. colour=True adds fine-tuning's colour jitter (0.4, 0.4, 0.4, 0.1)
    with p 0.8 and grayscale with p 0.2 before the flip, as the released fine-tuning does."""

    def __init__(self, size, mean, std, colour=False):
        self.size, self.mean, self.std = size, mean, std
        self.short_range = (round(size / 0.875), round(size / 0.7))
        self.jitter = T.ColorJitter(0.4, 0.4, 0.4, 0.1) if colour else None

    def __call__(self, clip):
        short = int(torch.randint(self.short_range[0], self.short_range[1] + 1, ()))
        clip = TF2.resize(clip, [short], antialias=True)
        h, w = clip.shape[-2:]
        top = int(torch.randint(0, h - self.size + 1, ()))
        left = int(torch.randint(0, w - self.size + 1, ()))
        clip = TF2.crop(clip, top, left, self.size, self.size)
        if self.jitter is not None:
            clip = TF2.to_dtype(clip, torch.float32, scale=True)
            if _coin(0.8):
                clip = color_jitter(clip, self.jitter)
            if _coin(0.2):
                clip = TF2.rgb_to_grayscale(clip, num_output_channels=3)
        if _coin(0.5):
            clip = TF2.horizontal_flip(clip)
        return _to_view(clip, self.mean, self.std)


class ClipEvalTransform:
    """Deterministic evaluation views of a clip: short side resized to `resize` (default
    size / 0.875: 256 at 224), then `crops` square crops of that side spread evenly along the long
    side (1: the centre; 3: both ends and the centre, the released test's 3 spatial crops).
    Returns [crops, C, T, resize, resize]."""

    def __init__(self, size, mean, std, crops=1, resize=None):
        if crops < 1:
            raise ValueError(f'--test_crops must be at least 1, got {crops}')
        self.side = resize or int(size / 0.875)
        self.crops, self.mean, self.std = crops, mean, std

    def __call__(self, clip):
        clip = TF2.resize(clip, [self.side], antialias=True)
        h, w = clip.shape[-2:]
        views = []
        for k in range(self.crops):
            at = 0.5 if self.crops == 1 else k / (self.crops - 1)  # along the long side
            top, left = round(at * (h - self.side)), round(at * (w - self.side))
            views.append(_to_view(TF2.crop(clip, top, left, self.side, self.side), self.mean, self.std))
        return torch.stack(views)
