"""View generation: the augmentation pipelines of each method, as torchvision transforms."""
from torchvision import transforms as T


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


def crop_flip_transform(size, mean, std):
    """Supervised training and linear evaluation: random resized crop (20-100%) and flip."""
    return T.Compose([
        T.RandomResizedCrop(size, scale=(0.2, 1.0)),
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
