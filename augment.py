"""View generation: the augmentation pipelines of each method, as torchvision transforms."""
import math

import torch
from PIL import ImageFilter
from torchvision import transforms as T
from torchvision.transforms import functional as F


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
                raise ValueError('--auto_augment: crop 1 is the key and never gets AutoAugment')
            if not 0 <= k < len(self.crops):
                raise ValueError(f'--auto_augment: crop index {k} is outside 0..{len(self.crops) - 1}')
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
        raise ValueError('--nmb_crops: give at least one group of crops')
    for name, values in (('--size_crops', size_crops), ('--min_scale_crops', min_scale_crops),
                         ('--max_scale_crops', max_scale_crops)):
        if len(values) != len(nmb_crops):
            raise ValueError(f'{name}: {len(values)} values given, but --nmb_crops has {len(nmb_crops)} groups')
    if any(n < 1 for n in nmb_crops):
        raise ValueError(f'--nmb_crops: every group needs at least one crop, got {list(nmb_crops)}')
    if nmb_crops[0] < 2:
        raise ValueError('--nmb_crops: the first group needs at least 2 crops (query and key)')
    if any(s < 1 for s in size_crops):
        raise ValueError(f'--size_crops: sizes must be positive, got {list(size_crops)}')
    for g, (lo, hi) in enumerate(zip(min_scale_crops, max_scale_crops)):
        if not 0 < lo <= 1:
            raise ValueError(f'--min_scale_crops: {lo} (group {g}) must lie in (0, 1]')
        if not 0 < hi <= 1:
            raise ValueError(f'--max_scale_crops: {hi} (group {g}) must lie in (0, 1]')
        if lo > hi:
            raise ValueError(f'--min_scale_crops: {lo} exceeds --max_scale_crops {hi} (group {g})')
