"""View generation: the augmentation pipelines of each method, as torchvision transforms."""
import math

import torch
from PIL import Image, ImageEnhance, ImageFilter, ImageOps
from torchvision import transforms as T
from torchvision.transforms import functional as F

from util import UserError


class TwoCropTransform:
    """Two independently augmented views of one image."""

    def __init__(self, transform):
        self.transform = transform

    def __call__(self, x):
        return [self.transform(x), self.transform(x)]


def supcon_transform(size, mean, std):
    """SupContrast / SimCLR views: crop of 20-100% area, flip, colour jitter, grayscale."""
    return T.Compose([
        T.RandomResizedCrop(size, scale=(0.2, 1.0)),
        T.RandomHorizontalFlip(),
        T.RandomApply([T.ColorJitter(0.4, 0.4, 0.4, 0.1)], p=0.8),
        T.RandomGrayscale(p=0.2),
        T.ToTensor(),
        T.Normalize(mean, std),
    ])


def crop_flip_transform(size, mean, std, min_scale=0.2):
    """Supervised training and linear evaluation: random resized crop (min_scale-100% of the
    area; SupContrast 20%, MoCo's linear protocol torchvision's 8%) and flip."""
    return T.Compose([
        T.RandomResizedCrop(size, scale=(min_scale, 1.0)),
        T.RandomHorizontalFlip(),
        T.ToTensor(),
        T.Normalize(mean, std),
    ])


def eval_transform(size, mean, std, resize=None):
    """Deterministic view for evaluation: resize the short side to `resize` (default `size`),
    centre crop `size`. Images already of that size pass through unchanged."""
    return T.Compose([
        T.Resize(resize or size),
        T.CenterCrop(size),
        T.ToTensor(),
        T.Normalize(mean, std),
    ])


# Below: MoCo v1/v2 and the multi-crop of Revisiting-Contrastive-SSL (Van Gansbeke et al. 2021).
# Every random draw uses torch's global RNG, never `random` or numpy: our loaders seed torch per
# sample (datasets.SeededDataset), and only torch's draws are reproduced. For that reason
# torchvision's RandomChoice / RandomOrder (which use `random`) are not used here.


class GaussianBlur:
    """PIL Gaussian blur with radius sigma ~ U(sigma) (MoCo v2, SimCLR)."""

    def __init__(self, sigma=(0.1, 2.0)):
        if not 0 < sigma[0] <= sigma[1]:
            raise ValueError(f'GaussianBlur: sigma must be (min, max) with 0 < min <= max, got {sigma}')
        self.sigma = tuple(sigma)

    def sample_sigma(self):
        return torch.empty(1).uniform_(*self.sigma).item()

    def __call__(self, img):
        return img.filter(ImageFilter.GaussianBlur(radius=self.sample_sigma()))

    def __repr__(self):
        return f'{self.__class__.__name__}(sigma={self.sigma})'


def moco_secondary_transform(mean, std):
    """MoCo v2's augmentation after the crop: jitter (p 0.8), grayscale, blur (p 0.5), flip."""
    return T.Compose([
        T.RandomApply([T.ColorJitter(0.4, 0.4, 0.4, 0.1)], p=0.8),
        T.RandomGrayscale(p=0.2),
        T.RandomApply([GaussianBlur((0.1, 2.0))], p=0.5),
        T.RandomHorizontalFlip(),
        T.ToTensor(),
        T.Normalize(mean, std),
    ])


def moco_transform(size, mean, std, aug_plus=True):
    """One MoCo view (wrap in TwoCropTransform): v2 (`--aug_plus`) or v1 (InstDisc's)."""
    crop = T.RandomResizedCrop(size, scale=(0.2, 1.0))
    if aug_plus:
        return T.Compose([crop, *moco_secondary_transform(mean, std).transforms])
    return T.Compose([
        crop,
        T.RandomGrayscale(p=0.2),
        T.ColorJitter(0.4, 0.4, 0.4, 0.4),
        T.RandomHorizontalFlip(),
        T.ToTensor(),
        T.Normalize(mean, std),
    ])


class MultiViewTransform:
    """One view per transform, in order (SCE's asymmetric views: each has its own pipeline)."""

    def __init__(self, transforms):
        self.transforms = list(transforms)

    def __call__(self, x):
        return [t(x) for t in self.transforms]

    def __repr__(self):
        return f'{self.__class__.__name__}({len(self.transforms)} views)'


def sce_transform(size, mean, std, scale=(0.2, 1.0), blur_p=0.5, solarize_p=0.0, jitter=(0.4, 0.4, 0.2, 0.1)):
    """One view of SCE's ImageNet pipeline (BYOL's): crop, flip, colour jitter (p 0.8), grayscale
    (p 0.2), Gaussian blur (sigma 0.1-2, p blur_p), solarize (threshold 128, p solarize_p)."""
    return T.Compose([
        T.RandomResizedCrop(size, scale=scale),
        T.RandomHorizontalFlip(),
        T.RandomApply([T.ColorJitter(*jitter)], p=0.8),
        T.RandomGrayscale(p=0.2),
        T.RandomApply([GaussianBlur((0.1, 2.0))], p=blur_p),
        T.RandomSolarize(128, p=solarize_p),
        T.ToTensor(),
        T.Normalize(mean, std),
    ])


def sce_crops(nmb_crops, size_crops, min_scale_crops, max_scale_crops):
    """(size, scale range, blur p, solarize p) of each of SCE's ImageNet crops: the two global
    crops (blur p 1.0 / blur p 0.1 + solarize p 0.2), then the local crops of the later groups
    (blur p 0.5, solarize p 0.2)."""
    _check_crop_options(nmb_crops, size_crops, min_scale_crops, max_scale_crops)
    if nmb_crops[0] != 2:
        raise UserError(f'--nmb_crops: SCE takes exactly 2 global crops first, got {nmb_crops[0]}')
    return [(size, (lo, hi), *(((1.0, 0.0), (0.1, 0.2))[c] if group == 0 else (0.5, 0.2)))
            for group, (n, size, lo, hi) in enumerate(zip(nmb_crops, size_crops, min_scale_crops, max_scale_crops))
            for c in range(n)]


def sce_views(nmb_crops, size_crops, min_scale_crops, max_scale_crops, mean, std):
    """SCE's ImageNet views, one per sce_crops() entry."""
    return MultiViewTransform([sce_transform(size, mean, std, scale, blur_p, solarize_p) for size, scale, blur_p,
                               solarize_p in sce_crops(nmb_crops, size_crops, min_scale_crops, max_scale_crops)])


def sce_cifar_views(size, mean, std):
    """SCE's CIFAR recipe: a weak view (crop, flip) for the momentum encoder, a strong one
    (crop, flip, jitter (0.4, 0.4, 0.4, 0.1) p 0.8, grayscale p 0.2, blur p 0.5) for the online one."""
    weak = crop_flip_transform(size, mean, std, min_scale=0.2)
    strong = sce_transform(size, mean, std, blur_p=0.5, jitter=(0.4, 0.4, 0.4, 0.1))
    return MultiViewTransform([weak, strong])


def _intersection(a, b):
    """Overlapping area of two (top, left, h, w) boxes."""
    rows = min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0])
    cols = min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1])
    return max(rows, 0) * max(cols, 0)


def sample_crop_box(width, height, scale, ratio=(3 / 4, 4 / 3), within=None, min_overlap=0.1, tries=10):
    """A random-resized-crop box (top, left, h, w) of a width x height image.

    Unconstrained (`within` None) it draws exactly as torchvision's RandomResizedCrop.get_params
    (same torch draws, same result; centre crop after `tries` misfits). Constrained, a candidate
    is kept only if its intersection with the box `within` is at least `min_overlap` times the
    area drawn for it (scale * width * height, before rounding h and w), as the released
    constrained cropping does; candidates that do not fit the image count as tries too. After
    `tries` rejected candidates, a fresh unconstrained box is returned.
    """
    area = width * height
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(tries):
        target_area = area * torch.empty(1).uniform_(*scale).item()
        aspect = math.exp(torch.empty(1).uniform_(*log_ratio).item())
        w = int(round(math.sqrt(target_area * aspect)))
        h = int(round(math.sqrt(target_area / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = int(torch.randint(0, height - h + 1, (1,)))
            left = int(torch.randint(0, width - w + 1, (1,)))
            box = (top, left, h, w)
            if within is None or _intersection(box, within) >= min_overlap * target_area:
                return box
    if within is not None:
        return sample_crop_box(width, height, scale, ratio, tries=tries)
    # Centre crop at the nearest allowed aspect ratio (torchvision's fallback).
    if width / height < min(ratio):
        w, h = width, int(round(width / min(ratio)))
    elif width / height > max(ratio):
        w, h = int(round(height * max(ratio))), height
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


class MultiCropTransform:
    """Multi-scale crops of Revisiting-Contrastive-SSL, as a list of tensors.

    Crops come group by group (`nmb_crops[g]` crops of side `size_crops[g]`, area fraction in
    [min_scale_crops[g], max_scale_crops[g]]): index 0 is the query and index 1 the key, as
    MoCo's two views, then the smaller crops. Each crop gets MoCo v2's secondary augmentation;
    a crop listed in `auto_augment` instead gets, with probability 1/2, flip -> AutoAugment
    (ImageNet policy) -> ToTensor -> Normalize. With `constrained`, every crop after the first
    group must cover the key crop (see sample_crop_box) so that small crops show part of it.
    """

    def __init__(self, nmb_crops, size_crops, min_scale_crops, max_scale_crops, mean, std,
                 constrained=False, auto_augment=(), ratio=(3 / 4, 4 / 3), min_overlap=0.1):
        _check_crop_options(nmb_crops, size_crops, min_scale_crops, max_scale_crops)
        self.crops = [(size, (lo, hi)) for n, size, lo, hi
                      in zip(nmb_crops, size_crops, min_scale_crops, max_scale_crops) for _ in range(n)]
        self.n_large = nmb_crops[0]
        for k in auto_augment:
            if k == 1:
                raise UserError('--auto_augment: crop 1 is the key and never gets AutoAugment')
            if not 0 <= k < len(self.crops):
                raise UserError(f'--auto_augment: crop index {k} is outside 0..{len(self.crops) - 1}')
        self.auto_augment = frozenset(auto_augment)
        self.constrained = constrained
        self.ratio = tuple(ratio)
        self.min_overlap = min_overlap
        self.secondary = moco_secondary_transform(mean, std)
        self.strong = T.Compose([
            T.RandomHorizontalFlip(),
            T.AutoAugment(T.AutoAugmentPolicy.IMAGENET),
            T.ToTensor(),
            T.Normalize(mean, std),
        ])

    def sample_boxes(self, width, height):
        """(top, left, h, w) of every crop, in output order."""
        boxes = []
        for k, (_, scale) in enumerate(self.crops):
            key = boxes[1] if self.constrained and k >= self.n_large else None
            boxes.append(sample_crop_box(width, height, scale, self.ratio, within=key,
                                         min_overlap=self.min_overlap))
        return boxes

    def __call__(self, img):
        views = []
        for k, ((size, _), box) in enumerate(zip(self.crops, self.sample_boxes(*img.size))):
            view = F.resized_crop(img, *box, [size, size], interpolation=T.InterpolationMode.BILINEAR)
            # the coin is drawn from torch's RNG (T.RandomChoice would use Python's `random`)
            strong = k in self.auto_augment and torch.rand(()).item() < 0.5
            views.append(self.strong(view) if strong else self.secondary(view))
        return views

    def __repr__(self):
        sizes = [size for size, _ in self.crops]
        return (f'{self.__class__.__name__}(sizes={sizes}, constrained={self.constrained}, '
                f'auto_augment={sorted(self.auto_augment)})')


def _check_crop_options(nmb_crops, size_crops, min_scale_crops, max_scale_crops):
    """ValueError naming the option when the multi-crop options disagree."""
    if len(nmb_crops) == 0:
        raise UserError('--nmb_crops: give at least one group of crops')
    for name, values in (('--size_crops', size_crops), ('--min_scale_crops', min_scale_crops),
                         ('--max_scale_crops', max_scale_crops)):
        if len(values) != len(nmb_crops):
            raise UserError(f'{name}: {len(values)} values given, but --nmb_crops has {len(nmb_crops)} groups')
    if any(n < 1 for n in nmb_crops):
        raise UserError(f'--nmb_crops: every group needs at least one crop, got {list(nmb_crops)}')
    if nmb_crops[0] < 2:
        raise UserError('--nmb_crops: the first group needs at least 2 crops (query and key)')
    if any(s < 1 for s in size_crops):
        raise UserError(f'--size_crops: sizes must be positive, got {list(size_crops)}')
    for g, (lo, hi) in enumerate(zip(min_scale_crops, max_scale_crops)):
        if not 0 < lo <= 1:
            raise UserError(f'--min_scale_crops: {lo} (group {g}) must lie in (0, 1]')
        if not 0 < hi <= 1:
            raise UserError(f'--max_scale_crops: {hi} (group {g}) must lie in (0, 1]')
        if lo > hi:
            raise UserError(f'--min_scale_crops: {lo} exceeds --max_scale_crops {hi} (group {g})')


# Below: CLSA, Contrastive Learning with Stronger Augmentations (Wang & Qi 2021). Its strong
# augmentation is the released RandAugment variant over FixMatch's pool of 14 operations: `aug_times`
# operations drawn with replacement, each applied with probability 1/2 at a magnitude v drawn from
# 1..9; rotations, shears and translations also take a random sign. The magnitudes follow the
# released formula (max * v / 10 + bias, truncated to int where it says so), in its order of
# operations, since int() of a product can fall on either side of an integer. Draws use torch's RNG.

def _enhance(enhancer):
    return lambda img, v: enhancer(img).enhance(v * 0.9 / 10 + 0.05)  # factor 0.14 .. 0.86


def _affine(img, coefficients):
    """PIL's affine map (output (x, y) reads input (a x + b y + c, d x + e y + f)); nearest
    neighbour, black outside the image, as the released code."""
    return img.transform(img.size, Image.AFFINE, coefficients)


# name -> op(PIL image, v): v in 1..9, or -9..-1 for the signed operations
CLSA_OPS = {
    'AutoContrast': lambda img, v: ImageOps.autocontrast(img),
    'Brightness': _enhance(ImageEnhance.Brightness),
    'Color': _enhance(ImageEnhance.Color),
    'Contrast': _enhance(ImageEnhance.Contrast),
    'Equalize': lambda img, v: ImageOps.equalize(img),
    'Identity': lambda img, v: img,
    'Posterize': lambda img, v: ImageOps.posterize(img, int(v * 4 / 10) + 4),        # bits 4,4,5,5,6,6,6,7,7
    'Rotate': lambda img, v: img.rotate(int(v * 30 / 10)),                           # ±3v degrees
    'Sharpness': _enhance(ImageEnhance.Sharpness),
    'ShearX': lambda img, v: _affine(img, (1, v * 0.3 / 10, 0, 0, 1, 0)),           # ±0.03v
    'ShearY': lambda img, v: _affine(img, (1, 0, 0, v * 0.3 / 10, 1, 0)),
    'Solarize': lambda img, v: ImageOps.solarize(img, 256 - int(v * 256 / 10)),      # threshold 256 - int(25.6v)
    'TranslateX': lambda img, v: _affine(img, (1, 0, int(v * 0.3 / 10 * img.size[0]), 0, 1, 0)),  # ±0.03v of the width
    'TranslateY': lambda img, v: _affine(img, (1, 0, 0, 0, 1, int(v * 0.3 / 10 * img.size[1]))),
}
SIGNED_OPS = frozenset({'Rotate', 'ShearX', 'ShearY', 'TranslateX', 'TranslateY'})


class StrongAugment:
    """CLSA's strong augmentation of a PIL image (see CLSA_OPS)."""

    def __init__(self, aug_times=5):
        if aug_times < 0:
            raise UserError(f'--aug_times must be >= 0, got {aug_times}')
        self.aug_times = aug_times

    def sample(self):
        """The operations one call applies, in order: [(name, signed v)]."""
        names = list(CLSA_OPS)
        applied = []
        for i in torch.randint(len(names), (self.aug_times,)).tolist():
            v = int(torch.randint(1, 10, ()))
            if torch.rand(()).item() < 0.5:
                if names[i] in SIGNED_OPS and torch.rand(()).item() < 0.5:
                    v = -v
                applied.append((names[i], v))
        return applied

    def __call__(self, img):
        for name, v in self.sample():
            img = CLSA_OPS[name](img, v)
        return img

    def __repr__(self):
        return f'{self.__class__.__name__}(aug_times={self.aug_times})'


class CLSATransform:
    """CLSA's views of one image, as a list of tensors: the key crop (`key_size`, 20-100 % of the
    area, MoCo v2 augmentation) for the momentum encoder, then the picked weak crops, then the
    picked strong crops. Crop j is the j-th of the --nmb_crops groups (side size_crops[g], area in
    [min_scale_crops[g], max_scale_crops[g]]); weak crop j and strong crop j are drawn independently.
    Weak = MoCo v2's augmentation; strong = the same with StrongAugment after the flip. Only picked
    crops are generated (in crop order, each index once)."""

    def __init__(self, key_size, nmb_crops, size_crops, min_scale_crops, max_scale_crops, pick_weak,
                 pick_strong, aug_times, mean, std):
        if not nmb_crops or min(nmb_crops) < 1:
            raise UserError(f'--nmb_crops: every group needs at least one crop, got {list(nmb_crops)}')
        # MoCo's checks, with the key counted into the first group (MoCo's first group holds query and key)
        _check_crop_options([nmb_crops[0] + 1, *nmb_crops[1:]], size_crops, min_scale_crops, max_scale_crops)
        crops = [(size, (lo, hi)) for n, size, lo, hi
                 in zip(nmb_crops, size_crops, min_scale_crops, max_scale_crops) for _ in range(n)]
        for name, pick in (('--pick_weak', pick_weak), ('--pick_strong', pick_strong)):
            outside = [j for j in pick if not 0 <= j < len(crops)]
            if outside:
                raise UserError(f'{name}: crop index {outside[0]} is outside 0..{len(crops) - 1}')
        if not pick_weak:
            raise UserError('--pick_weak: pick at least one weak crop (the InfoNCE queries)')
        self.pick_weak, self.pick_strong = sorted(set(pick_weak)), sorted(set(pick_strong))
        self.crops = crops  # (side, area range) of crop j, for the device views (gpu_strong)

        self.key = moco_transform(key_size, mean, std)
        secondary = moco_secondary_transform(mean, std).transforms  # ..., flip, ToTensor, Normalize
        crop = lambda j: T.RandomResizedCrop(crops[j][0], scale=crops[j][1])
        self.weak = [T.Compose([crop(j), *secondary]) for j in self.pick_weak]
        self.strong = [T.Compose([crop(j), *secondary[:-2], StrongAugment(aug_times), *secondary[-2:]])
                       for j in self.pick_strong]

    def __call__(self, img):
        return [self.key(img), *(t(img) for t in self.weak), *(t(img) for t in self.strong)]

    def __repr__(self):
        return f'{self.__class__.__name__}(weak={self.pick_weak}, strong={self.pick_strong})'
