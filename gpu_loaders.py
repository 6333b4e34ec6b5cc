"""Loaders whose workers only read (and decode) files, the views being drawn on the device: image
folders (ImageFolder / ImageNet / COCO-style) and video clips, batches of varied sizes.

A worker DataLoader (any sampler, e.g. datasets.SeededSampler) yields (list of uint8 [C, H, W]
images or file bytes, labels), or (list of per-view lists of uint8 clips [C, T, H, W], labels);
DeviceBatches moves each batch to the device, decodes JPEG bytes there when asked (nvJPEG), pads
the batch to its largest image and applies the views, each drawing its crop within every image's
own size. The draws come from one generator per epoch and rank, as gpu_augment.DeviceLoader's.
"""
import os

import numpy as np
import torch
import torchvision
from PIL import Image
from torchvision.io import ImageReadMode, decode_jpeg, read_file

import gpu_views
from util import UserError

IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.bmp', '.webp', '.tif', '.tiff', '.gif')


class DecodedFolder(torch.utils.data.Dataset):
    """Labelled image files; an item is (uint8 [3, H, W], label), or (the file's bytes, label) with
    decode=False, for decoding on the GPU. `samples` [(path, label)] or a class-per-folder root."""

    def __init__(self, samples, classes=None, decode=True):
        if isinstance(samples, str):
            if not os.path.isdir(samples):
                raise UserError(f'data folder {samples} does not exist: give --data_folder the folder of class folders')
            classes, index = torchvision.datasets.folder.find_classes(samples)
            samples = torchvision.datasets.folder.make_dataset(samples, index, IMAGE_EXTENSIONS)
        if not samples:
            raise UserError('no images found: the data folder needs one folder of images per class')
        self.samples, self.classes, self.decode = list(samples), classes, decode
        self.targets = [label for _, label in self.samples]

    def __len__(self):
        return len(self.samples)

    def __getitem__(self, i):
        i = i[0] if isinstance(i, tuple) else i  # datasets.SeededSampler's (index, seed): no draws here
        path, label = self.samples[i]
        try:
            if not self.decode:
                return read_file(path), label
            # PIL, as the CPU pipelines decode: the same pixels, 1.7x faster here than torchvision's
            # decoder, and channels-last (a [3, H, W] view of PIL's [H, W, 3]): torch's fast uint8 resize
            with Image.open(path) as img:
                pixels = np.array(img.convert('RGB'))
            return torch.from_numpy(pixels).permute(2, 0, 1), label
        except (OSError, RuntimeError) as e:
            raise UserError(f'cannot read image {path} ({str(e).splitlines()[0]}): remove or replace it') from None


def collate_list(batch):
    """(list of the items' tensors, labels): images of varied sizes cannot be stacked."""
    return [x for x, _ in batch], torch.as_tensor([label for _, label in batch], dtype=torch.long)


def raw_clip(clip):
    """The worker's clip transform for device views: uint8 [T, C, H, W] -> uint8 [C, T, H, W], as is."""
    return clip.permute(1, 0, 2, 3)


def collate_clip_views(batch):
    """Items ([clip per view], label) -> ([list of clips, per view], labels)."""
    views = len(batch[0][0])
    return [[x[v] for x, _ in batch] for v in range(views)], torch.as_tensor([y for _, y in batch], dtype=torch.long)


def epoch_generator(sampler, device):
    """The generator of an epoch's draws: gpu_augment.DeviceLoader's seeding (seed, epoch, rank)."""
    seed, epoch, rank = (getattr(sampler, k, 0) for k in ('seed', 'epoch', 'rank'))
    return torch.Generator(device).manual_seed(((seed * 1_000_003 + epoch) * 1009 + rank) % 2**63)


class DeviceBatches:
    """Batches of a worker DataLoader (collate_list / collate_clip_views), their views drawn on
    `device`: yields ([view, ...], labels) as the CPU loaders do. `views` are gpu_augment.BatchView
    (images) or gpu_views.ClipBatchView (clips: view k takes the k-th clip of every video).
    decode_on_device: items are JPEG bytes, decoded on the device (CUDA's nvJPEG)."""

    def __init__(self, loader, views, device, clips=False, decode_on_device=False):
        self.loader, self.views, self.device = loader, views, torch.device(device)
        self.clips, self.decode_on_device = clips, decode_on_device
        self.sampler = getattr(loader, 'sampler', None)

    def __len__(self):
        return len(self.loader)

    def __iter__(self):
        g = epoch_generator(self.sampler, self.device)
        for items, labels in self.loader:
            labels = labels.to(self.device, non_blocking=True)
            batches = [pad(self.to_device(c)) for c in items] if self.clips else [pad(self.to_device(items))] * len(self.views)
            yield [view(x, g, box=gpu_views.crop_boxes_sized(h, w, view.scale, view.ratio, g))
                   for view, (x, h, w) in zip(self.views, batches)], labels

    def to_device(self, items):
        if self.decode_on_device:
            return decode_jpeg(items, mode=ImageReadMode.RGB, device=self.device)
        return [x.to(self.device, non_blocking=True) for x in items]


def folder_batches(samples, classes, views, sampler, batch_size, drop_last, device, **loader_options):
    """DeviceBatches of the image files `samples` [(path, label)] in `sampler`'s order: workers read
    and decode (on a GPU, JPEG files are decoded there, by nvJPEG), `views` crop and colour on `device`."""
    device = torch.device(device)
    on_device = device.type == 'cuda' and all(path.lower().endswith(('.jpg', '.jpeg')) for path, _ in samples)
    folder = DecodedFolder(samples, classes, decode=not on_device)
    loader = torch.utils.data.DataLoader(folder, batch_size=batch_size, sampler=sampler, drop_last=drop_last,
                                         collate_fn=collate_list, **loader_options)
    return DeviceBatches(loader, views, device, decode_on_device=on_device)


def pad(items):
    """A list of uint8 [..., h_i, w_i] -> (uint8 [n, ..., H, W] zero-padded, heights, widths); images
    [3, h, w] held channels-last (DecodedFolder's) stay channels-last."""
    heights = torch.tensor([float(x.shape[-2]) for x in items], device=items[0].device)
    widths = torch.tensor([float(x.shape[-1]) for x in items], device=items[0].device)
    first, shape = items[0], (len(items), *items[0].shape[:-2], int(heights.max()), int(widths.max()))
    new = first.new_empty if len(set(x.shape for x in items)) == 1 else first.new_zeros
    if first.dim() == 3 and first.stride(0) == 1:
        out = new(shape[0], *shape[2:], shape[1]).permute(0, 3, 1, 2)
    else:
        out = new(shape)
    for i, x in enumerate(items):
        out[i, ..., :x.shape[-2], :x.shape[-1]] = x
    return out, heights, widths
