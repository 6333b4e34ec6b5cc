"""Images (clips) per second of the pipelines with device views, one core: the CPU transform per
sample (PIL / torch on one clip, what a loader worker does) against the device views on a batch
of CPU tensors (a GPU when there is one). `scripts/benchmark.py --views` prints these rows.

Inputs: CIFAR-10 images (benchmark.load_cifar10); JPEG files of 375 x 500 px made from them
(ImageNet's typical size; the PIL side opens and decodes each, the device side decodes in the
worker with torchvision.io and augments on the device); clips of 8 frames of 128 x 171 px (the
decoded clips of video_datasets, decoding excluded: it is the same work on both sides).
"""
import os
import tempfile
import time

import numpy as np
import torch
from PIL import Image

import augment
import gpu_augment
import gpu_loaders
import gpu_views
import video_augment
from augment import TwoCropTransform

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def images_per_s(fn, n, repeats=1):
    fn()  # warm-up
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return n * repeats / (time.perf_counter() - start)


def cpu_batch(transform, images):
    return lambda: [transform(im) for im in images]


def device_batch(views, batch, device):
    g = torch.Generator(device).manual_seed(0)
    batch = batch.to(device)

    def run():
        out = [v(batch, g) for v in views]
        if device.type == 'cuda':
            torch.cuda.synchronize()
        return out
    return run


def jpeg_files(pixels, n, root):
    """n JPEGs of 375 x 500 px (CIFAR images enlarged), in one class folder."""
    os.makedirs(os.path.join(root, 'c'), exist_ok=True)
    paths = []
    for i in range(n):
        path = os.path.join(root, 'c', f'{i}.jpg')
        Image.fromarray(pixels[i % len(pixels)]).resize((500, 375), Image.BILINEAR).save(path, quality=90)
        paths.append((path, 0))
    return paths


def rows(pixels, batch_size, device, batches=3):
    """[(pipeline, cpu images/s, device images/s)]."""
    out = []
    images = [Image.fromarray(p) for p in pixels[:batch_size]]
    batch = torch.from_numpy(pixels[:batch_size]).permute(0, 3, 1, 2).contiguous()
    configs = [
        ('SCE CIFAR weak + strong, 32 px', augment.sce_cifar_views(32, MEAN, STD),
         gpu_views.sce_cifar_device_views(32, MEAN, STD)),
        ('SCE multi-crop 2x32 + 4x16', augment.sce_views([2, 4], [32, 16], [0.2, 0.05], [1.0, 0.2], MEAN, STD),
         gpu_views.sce_device_views([2, 4], [32, 16], [0.2, 0.05], [1.0, 0.2], MEAN, STD)),
    ]
    for name, cpu, views in configs:
        out.append((name, images_per_s(cpu_batch(cpu, images), batch_size, batches),
                    images_per_s(device_batch(views, batch, device), batch_size, batches)))

    with tempfile.TemporaryDirectory() as root:  # ImageFolder JPEGs, SupCon two-crop at 224 px
        samples = jpeg_files(pixels, batch_size, root)
        two_crop = TwoCropTransform(augment.supcon_transform(224, MEAN, STD))

        def pil():
            return [two_crop(Image.open(p).convert('RGB')) for p, _ in samples]
        folder = gpu_loaders.DecodedFolder(samples, ['c'])
        loader = torch.utils.data.DataLoader(folder, batch_size=batch_size, collate_fn=gpu_loaders.collate_list)
        on_device = gpu_loaders.DeviceBatches(loader, [gpu_augment.supcon_view(224, MEAN, STD)] * 2, device)

        def ours():
            for views, _ in on_device:
                pass
            if device.type == 'cuda':
                torch.cuda.synchronize()
        out.append(('ImageFolder JPEG 375x500, SupCon 2x224', images_per_s(pil, batch_size, 1),
                    images_per_s(ours, batch_size, 1)))

    clips_n = max(4, batch_size // 8)  # clips: 2 views of 8 frames at 112 px
    rng = np.random.default_rng(0)
    frames = torch.from_numpy(np.stack([np.asarray(Image.fromarray(pixels[i]).resize((171, 128)))
                                        for i in rng.integers(0, len(pixels), 8)]))
    clip = frames.permute(0, 3, 1, 2).contiguous()  # [T, C, H, W], as decoded
    cpu_views = video_augment.clip_views(112, MEAN, STD)
    clip_batch = clip.permute(1, 0, 2, 3).unsqueeze(0).expand(clips_n, -1, -1, -1, -1).contiguous()
    out.append(('video SCE clips 2 x 8 x 112 px',
                images_per_s(lambda: [[v(clip) for v in cpu_views] for _ in range(clips_n)], clips_n, batches),
                images_per_s(device_batch(gpu_views.clip_device_views(112, MEAN, STD), clip_batch, device),
                             clips_n, batches)))
    return out


def report(pixels, batch_size, device):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        table = rows(pixels, batch_size, device)
    finally:
        torch.set_num_threads(threads)
    where = 'GPU' if device.type == 'cuda' else 'CPU tensors'
    print(f'\n{"pipeline":40} {"CPU/worker":>10} {"device":>9} {"ratio":>6}   (images/s, clips/s for video; '
          f'one thread; device views on {where})')
    for name, cpu, dev in table:
        print(f'{name:40} {cpu:>10.1f} {dev:>9.1f} {dev / cpu:>5.1f}x')
    return table
