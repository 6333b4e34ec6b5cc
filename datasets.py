"""Image datasets and their loaders: cifar10/cifar100/stl10 (torchvision), path (ImageFolder),
imagenet (ImageFolder train/ and val/), and digits (scikit-learn's bundled 8x8 digits, offline).

Training loaders draw every sample's augmentation from its own seed, a function of (run seed,
epoch, index): a run is reproducible whatever --num_workers or the number of processes."""
import os
import sys
import xml.etree.ElementTree as ET

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, Sampler
from torchvision import datasets as tvd

import gpu_loaders
from augment import eval_transform
from gpu_augment import DeviceLoader
from timing import TimedSteps
from util import UserError, is_main
from video_augment import ClipEvalTransform
from video_datasets import VIDEO_DATASETS, VideoClips, video_dataset

MEAN_STD = {
    'cifar10': ((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)),
    'cifar100': ((0.5071, 0.4867, 0.4408), (0.2675, 0.2565, 0.2761)),
    'stl10': ((0.4467, 0.4398, 0.4066), (0.2603, 0.2566, 0.2713)),
    'imagenet': ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    'digits': ((0.3049,) * 3, (0.3234,) * 3),
    # video: the Kinetics statistics the released SCE video code normalises every dataset with
    **{d: ((0.45,) * 3, (0.225,) * 3) for d in ('video', 'kinetics', 'ucf101', 'hmdb51')},
}

# Held in memory as uint8 pixels: --gpu_aug keeps them on the device (the other datasets are files).
IN_MEMORY = ('cifar10', 'cifar100', 'stl10', 'digits')


def mean_std(args):
    """--mean/--std when given, else the dataset's statistics (ImageNet's for a custom folder)."""
    if args.mean is not None:
        return args.mean, args.std
    if args.dataset == 'path':
        if is_main():
            print('note: --dataset path without --mean/--std: normalising with ImageNet statistics')
        return MEAN_STD['imagenet']
    return MEAN_STD[args.dataset]


def eval_view(args):
    """The evaluation transform of --dataset: ImageNet resizes to size/0.875 then centre-crops."""
    mean, std = mean_std(args)
    return eval_transform(args.size, mean, std, resize=int(args.size / 0.875) if args.dataset == 'imagenet' else None)


# ----------------------------------------------------------------------------- datasets

class Digits(Dataset):
    """scikit-learn's 1,797 handwritten 8x8 digits (shipped with the package, no download),
    upsampled to 32x32 RGB so they pass through the same pipelines as CIFAR. A fixed split:
    1,437 training and 360 test images."""
    classes = [str(d) for d in range(10)]

    def __init__(self, train=True, transform=None):
        from sklearn.datasets import load_digits
        digits = load_digits()
        order = np.random.default_rng(0).permutation(len(digits.target))
        order = order[:1437] if train else order[1437:]
        pixels = (digits.images[order] * (255 / 16)).astype(np.uint8)
        self.images = [Image.fromarray(p).resize((32, 32), Image.BILINEAR).convert('RGB') for p in pixels]
        self.targets = digits.target[order].tolist()
        self.transform = transform

    def __len__(self):
        return len(self.targets)

    def __getitem__(self, i):
        img = self.images[i]
        return (self.transform(img) if self.transform else img), self.targets[i]


def load_image(path):
    """ImageFolder's loader, with an unreadable file reported by name."""
    try:
        with Image.open(path) as img:
            return to_rgb(img)
    except (OSError, ValueError) as e:
        raise UserError(f'cannot read image {path}: {e}; remove or replace the file')


def to_rgb(img):
    """8-bit RGB. Pillow's convert('RGB') clips 16-bit and 32-bit pixels at 255 (a 16-bit PNG comes
    out nearly white): those are scaled to 8 bits instead; float images are taken as 0-1 when they
    lie within it, else as 0-255."""
    if img.mode not in ('I', 'F') and not img.mode.startswith('I;16'):
        return img.convert('RGB')
    pixels = np.asarray(img, dtype=np.float64)
    if img.mode == 'F':
        pixels = pixels * 255 if pixels.min() >= 0 and pixels.max() <= 1 else pixels
    elif img.mode.startswith('I;16') or pixels.max() > 255:  # 16-bit values (Pillow opens 16-bit PNGs as I)
        pixels = pixels / 257
    return Image.fromarray(np.clip(pixels + 0.5, 0, 255).astype(np.uint8), 'L').convert('RGB')


class UnlabelledFolder(Dataset):
    """The images directly inside a folder (COCO's train2017/, say), all with label 0: enough for
    self-supervised pretraining."""
    classes = ['unlabelled']

    def __init__(self, root, files, transform):
        self.samples = [os.path.join(root, f) for f in files]
        self.targets = [0] * len(files)
        self.transform = transform

    def __len__(self):
        return len(self.samples)

    def __getitem__(self, i):
        img = load_image(self.samples[i])
        return (self.transform(img) if self.transform else img), 0


def image_folder(root, transform, what):
    """ImageFolder (one sub-folder per class), or the loose images of a folder without any."""
    if os.path.isfile(root):
        raise UserError(f'{what} {root} is a file, not a folder of images')
    if not os.path.isdir(root):
        raise UserError(f'{what} {root} does not exist; it must hold images, or one sub-folder of images per class')
    try:
        return tvd.ImageFolder(root, transform=transform, loader=load_image)
    except FileNotFoundError as e:
        classes = sorted(d.name for d in os.scandir(root) if d.is_dir())
        empty = [c for c in classes if not any(f.lower().endswith(tvd.folder.IMG_EXTENSIONS)
                                               for _, _, files in os.walk(os.path.join(root, c)) for f in files)]
        if classes and len(empty) < len(classes):
            raise UserError(f'{what} {root}: the class folder {empty[0]} holds no images'
                            f'{f" (nor {len(empty) - 1} others)" if len(empty) > 1 else ""}; fill or remove it')
        files = sorted(f for f in os.listdir(root) if f.lower().endswith(tvd.folder.IMG_EXTENSIONS))
        if not files:
            raise UserError(f'{what} {root} holds no images: {e}')
        if is_main():
            print(f'note: {root} has no class sub-folders: {len(files)} unlabelled images')
        return UnlabelledFolder(root, files, transform)


def require_labels(dataset, why):
    """A UserError when `dataset` is a folder of loose images: `why` (SupCon, cross-entropy, the kNN
    monitor...) needs one sub-folder per class."""
    if isinstance(dataset, UnlabelledFolder):
        folder = os.path.dirname(dataset.samples[0])
        raise UserError(f'{why} needs labels, but {folder} holds loose images without class sub-folders; '
                        f'put each class in its own sub-folder')


def on_training_classes(dataset, train_root, what):
    """An evaluation ImageFolder labelled as the training folder labels its classes (by name): its
    own alphabetical order would give a subset or a renamed class other indices. A class the
    training folder lacks is an error."""
    require_labels(dataset, f'evaluation on {what}')
    try:
        classes, class_to_idx = tvd.folder.find_classes(train_root)
    except FileNotFoundError:
        raise UserError(f'{what} is evaluated against the training classes, but {train_root} has no class '
                        f'sub-folders (loose images have no labels)')
    unknown = [c for c in dataset.classes if c not in class_to_idx]
    if unknown:
        raise UserError(f'{what} has classes the training folder {train_root} lacks: {", ".join(unknown[:5])}'
                        f'{" ..." if len(unknown) > 5 else ""}')
    if dataset.classes != classes:
        dataset.samples = [(path, class_to_idx[dataset.classes[y]]) for path, y in dataset.samples]
        dataset.imgs, dataset.targets = dataset.samples, [y for _, y in dataset.samples]
        dataset.classes, dataset.class_to_idx = classes, class_to_idx
    return dataset


def torchvision_set(cls, args, transform, **split):
    name = cls.__name__
    try:
        return cls(args.data_folder, transform=transform, download=False, **split)
    except RuntimeError:
        pass  # not there yet
    if not args.download:
        raise UserError(f'{name} is not in {args.data_folder}; drop --no-download or point --data_folder at it')
    try:
        return cls(args.data_folder, transform=transform, download=True, **split)
    except Exception as e:  # no network, refused, disk full: all say the same to the user
        raise UserError(f'{name} is not in {args.data_folder} and downloading it failed '
                        f'({type(e).__name__}: {e}); copy it there or point --data_folder at it')


def image_dataset(args, train, transform):
    """The training (train=True) or evaluation split of --dataset with the given transform."""
    d = args.dataset
    if d == 'cifar10':
        return torchvision_set(tvd.CIFAR10, args, transform, train=train)
    if d == 'cifar100':
        return torchvision_set(tvd.CIFAR100, args, transform, train=train)
    if d == 'stl10':
        return torchvision_set(tvd.STL10, args, transform, split='train' if train else 'test')
    if d == 'digits':
        return Digits(train, transform)
    if d == 'imagenet':
        split = 'train' if train else 'val'
        dataset = image_folder(os.path.join(args.data_folder, split), transform, f'--data_folder/{split}')
        return dataset if train else on_training_classes(dataset, os.path.join(args.data_folder, 'train'),
                                                         f'--data_folder/{split}')
    if d == 'path':
        if train:
            return image_folder(args.data_folder, transform, '--data_folder')
        if args.test_folder is None:
            raise UserError('--dataset path needs --test_folder for evaluation')
        return on_training_classes(image_folder(args.test_folder, transform, '--test_folder'), args.data_folder,
                                   f'--test_folder {args.test_folder}')
    raise UserError(f'unknown dataset {d!r}')


def dataset_labels(dataset):
    return dataset.labels if hasattr(dataset, 'labels') else dataset.targets  # STL10 says labels


def num_classes(args, dataset):
    """Classes of the training split; --num_classes, when given, must agree."""
    n = len(dataset.classes) if hasattr(dataset, 'classes') else int(max(dataset_labels(dataset))) + 1
    given = getattr(args, 'num_classes', None)
    if given is not None and given != n:
        raise UserError(f'--num_classes {given} but {args.dataset} {args.data_folder} has {n} classes')
    return n


# PASCAL VOC 2007 (main_svm.py, main_transfer.py): image-level labels of the 20 classes
VOC_CLASSES = ['aeroplane', 'bicycle', 'bird', 'boat', 'bottle', 'bus', 'car', 'cat', 'chair', 'cow', 'diningtable',
               'dog', 'horse', 'motorbike', 'person', 'pottedplant', 'sheep', 'sofa', 'train', 'tvmonitor']


class VOC2007(Dataset):
    """Image-level labels of a VOC split: 1 where the class has a non-difficult object, else 0."""

    def __init__(self, root, split, transform):
        if os.path.isdir(os.path.join(root, 'VOCdevkit', 'VOC2007')):
            root = os.path.join(root, 'VOCdevkit', 'VOC2007')
        if not os.path.isdir(root):
            raise UserError(f'--data_folder {root} does not exist')
        ids_file = os.path.join(root, 'ImageSets', 'Main', f'{split}.txt')
        if not os.path.isfile(ids_file):
            raise UserError(f'{ids_file} is missing: the VOC 2007 folder must hold ImageSets/Main/{split}.txt, '
                                 f'Annotations/ and JPEGImages/ (VOCdevkit/VOC2007)')
        self.root, self.transform = root, transform
        self.ids = open(ids_file).read().split()
        if not self.ids:
            raise UserError(f'{ids_file} lists no images')
        self.targets = torch.stack([self._labels(i) for i in self.ids])

    def _labels(self, image_id):
        y = torch.zeros(len(VOC_CLASSES), dtype=torch.long)
        path = os.path.join(self.root, 'Annotations', f'{image_id}.xml')
        if not os.path.isfile(path):
            raise UserError(f'{path} is missing')
        for obj in ET.parse(path).findall('object'):
            if obj.findtext('difficult', '0').strip() != '1':
                y[VOC_CLASSES.index(obj.findtext('name').strip())] = 1
        return y

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, i):
        img = load_image(os.path.join(self.root, 'JPEGImages', f'{self.ids[i]}.jpg'))
        return self.transform(img), self.targets[i]


# ----------------------------------------------------------------------------- loaders

class SeededSampler(Sampler):
    """Shuffles (or not) once per epoch with a seed shared by every rank; rank r takes every
    world-th index, so the union of one step's per-rank batches is one contiguous slice of the
    global order. Yields (index, per-sample seed) pairs for SeededDataset."""

    def __init__(self, n, seed, shuffle=True, rank=0, world=1):
        self.n, self.seed, self.shuffle, self.rank, self.world = n, seed, shuffle, rank, world
        self.epoch = 0
        self.per_rank = -(-n // world)

    def set_epoch(self, epoch):
        self.epoch = epoch

    def __len__(self):
        return self.per_rank

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        order = torch.randperm(self.n, generator=g) if self.shuffle else torch.arange(self.n)
        order = torch.cat([order, order[:self.per_rank * self.world - self.n]])  # pad like DistributedSampler
        mine = order[self.rank::self.world].tolist()
        base = (self.seed * 1_000_003 + self.epoch) * self.n
        return iter([(i, (base + i) % 2**63) for i in mine])


class SeededDataset(Dataset):
    """Runs the wrapped dataset's transform under the sample's own seed."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, key):
        index, seed = key
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return self.dataset[index]


def train_loader(dataset, args, drop_last=False, device_views=None):
    """Shuffled, per-sample-seeded loader of the per-rank share of --batch_size. With --gpu_aug,
    `device_views` (gpu_augment views, one per output view) augment on the device, instead of the
    transform in workers, the in-memory pixels of `dataset`, or the images (an image folder) or
    clips (VideoClips, transform gpu_loaders.raw_clip per view) its workers decode. With
    --max_steps, the loader ends the run (see TimedSteps)."""
    sampler = SeededSampler(len(dataset), args.data_seed, True, args.rank, args.world_size)
    batch = args.batch_size // args.world_size
    if drop_last and len(sampler) < batch:
        raise UserError(f'{len(dataset)} training images do not fill one batch of {args.batch_size}')
    if args.gpu_aug:
        if device_views is None:
            raise UserError(f'--gpu_aug: {os.path.basename(sys.argv[0])} has no on-device version of its '
                            f'augmentation; drop --gpu_aug')
        if isinstance(dataset, VideoClips):  # workers decode the clips (transform gpu_loaders.raw_clip)
            loader = gpu_loaders.DeviceBatches(
                DataLoader(SeededDataset(dataset), batch_size=batch, sampler=sampler, drop_last=drop_last,
                           collate_fn=gpu_loaders.collate_clip_views, **_loader_kwargs(args)),
                device_views, args.device, clips=True)
        elif isinstance(dataset, (tvd.DatasetFolder, UnlabelledFolder)):  # files: workers only read and decode
            samples = ([(path, 0) for path in dataset.samples] if isinstance(dataset, UnlabelledFolder)
                       else dataset.samples)
            loader = gpu_loaders.folder_batches(samples, getattr(dataset, 'classes', None), device_views, sampler,
                                                batch, drop_last, args.device, **_loader_kwargs(args))
        else:
            loader = DeviceLoader(dataset, *in_memory_pixels(dataset, args), device_views, sampler, batch,
                                  drop_last, args.device)
    else:
        loader = DataLoader(SeededDataset(dataset), batch_size=batch, sampler=sampler, drop_last=drop_last,
                            **_loader_kwargs(args))
    return TimedSteps(loader, args) if args.max_steps is not None else loader


def in_memory_pixels(dataset, args):
    """(uint8 images [N, C, H, W], labels) of a dataset held in memory, for --gpu_aug."""
    if args.dataset in ('cifar10', 'cifar100'):
        pixels = torch.from_numpy(dataset.data).permute(0, 3, 1, 2)  # stored N, H, W, C
    elif args.dataset == 'stl10':
        pixels = torch.from_numpy(dataset.data)
    elif args.dataset == 'digits':
        pixels = torch.from_numpy(np.stack([np.asarray(img) for img in dataset.images])).permute(0, 3, 1, 2)
    else:
        raise UserError(f'--gpu_aug has no device-side loader for --dataset {args.dataset}: drop --gpu_aug')
    return pixels.contiguous(), dataset_labels(dataset)


class ShardSampler(Sampler):
    """Indices rank, rank+world, ... in order, without padding (evaluation)."""

    def __init__(self, n, rank=0, world=1):
        self.indices = list(range(rank, n, world))

    def __len__(self):
        return len(self.indices)

    def __iter__(self):
        return iter(self.indices)


def eval_dataset(args, train, test_views=False):
    """A split (train=True: the training split, e.g. a kNN or retrieval bank) through evaluation
    views: images through eval_view; videos as one clip and one crop (validation during training,
    the kNN monitor) or, with test_views, --test_clips clips spread over each video x --test_crops
    crops; a video's views come as one item [views, C, T, S, S]."""
    if args.dataset not in VIDEO_DATASETS:
        return image_dataset(args, train, eval_view(args))
    mean, std = mean_std(args)
    clips, crops = (args.test_clips, args.test_crops) if test_views else (1, 1)
    dataset = video_dataset(args, train, ClipEvalTransform(args.size, mean, std, crops=crops), clips=clips,
                            drop_unreadable=True)
    dataset.views = clips * crops  # read by eval_loader
    return dataset


def eval_loader(dataset, args):
    """Sharded, in order. --batch_size_val counts clips (images): a video with V test views
    (eval_dataset) takes V of them, its views staying in one batch."""
    batch = max(args.batch_size_val // args.world_size // getattr(dataset, 'views', 1), 1)
    return DataLoader(dataset, batch_size=batch, sampler=ShardSampler(len(dataset), args.rank, args.world_size),
                      **_loader_kwargs(args))


def _loader_kwargs(args):
    return dict(num_workers=args.num_workers, pin_memory=args.device.type == 'cuda',
                persistent_workers=args.num_workers > 0)


def knn_loaders(args):
    """(bank, test) loaders for the kNN monitor, or None when it is off (--knn_freq 0)."""
    if args.knn_freq <= 0:
        return None
    bank = eval_dataset(args, True)
    require_labels(bank, 'the kNN monitor (--knn_freq 0 turns it off)')
    return eval_loader(bank, args), eval_loader(eval_dataset(args, False), args)
