"""Clips per second that one data-loading worker produces from real videos: decoding alone, and
decoding with the clip transforms of pretraining and of the multi-view test.

    python scripts/benchmark_video_decode.py                 # ../shared/data/videos, 8 and 16 frames
    python scripts/benchmark_video_decode.py --folder DIR --frames 16 --size 224

One worker = this process with one torch thread, as in a DataLoader worker (PyAV decodes on one
thread there too); clips/cpu-s is the rate per CPU second of the process, what the worker does on
a core of its own when the machine is busy. Each video is read once per pipeline, in order; the figure counts clips (a
pretraining item holds 2, a test item test_clips x test_crops views of test_clips clips).
`clips_per_second` is importable for other benchmarks.
"""
import argparse
import os
import sys
import time

import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
import video_augment  # noqa: E402  (after the path: the repository's modules)
from video_datasets import VIDEO_EXTENSIONS, VideoClips  # noqa: E402

SHARED_VIDEOS = os.path.join(REPO, '..', 'shared', 'data', 'videos')
MEAN, STD = (0.45,) * 3, (0.225,) * 3


def clips_per_second(dataset, clips_per_item, items=None):
    """(clips per wall second, clips per CPU second of this process, items read) of reading
    dataset[0..items) with a fixed seed. The worker is one thread, so clips per CPU second is what
    it would do on a core of its own, however busy the machine."""
    items = min(items or len(dataset), len(dataset))
    torch.manual_seed(0)
    wall, cpu = time.perf_counter(), time.process_time()
    for i in range(items):
        dataset[i]
    clips = clips_per_item * items
    return clips / (time.perf_counter() - wall), clips / (time.process_time() - cpu), items


def video_files(folder):
    return sorted(os.path.join(d, f) for d, _, files in os.walk(folder) for f in files
                  if f.lower().endswith(VIDEO_EXTENSIONS))


def main():
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--folder', default=SHARED_VIDEOS, help='videos below it, any layout')
    p.add_argument('--frames', type=int, nargs='+', default=[8, 16])
    p.add_argument('--size', type=int, default=224)
    p.add_argument('--clip_duration', type=float, default=2.56)
    p.add_argument('--test_clips', type=int, default=10)
    p.add_argument('--test_crops', type=int, default=3)
    p.add_argument('--items', type=int, default=None, help='videos read per pipeline (default all)')
    o = p.parse_args()
    files = video_files(o.folder) if os.path.isdir(o.folder) else []
    if not files:
        print(f'no videos in {o.folder}: nothing to measure (the shared data is absent in a plain checkout)')
        return
    torch.set_num_threads(1)
    samples = [(f, 0) for f in files]
    print(f'{len(files)} videos in {os.path.normpath(o.folder)}, one worker (1 thread), '
          f'{o.clip_duration} s clips, size {o.size}')
    print(f'{"pipeline":<44}{"frames":>7}{"clips/s":>10}{"clips/cpu-s":>13}{"videos":>8}')
    for frames in o.frames:
        common = dict(num_frames=frames, clip_duration=o.clip_duration)
        pipelines = [
            ('decode 2 random clips (pretraining)', VideoClips(samples, ['x'], [lambda c: c] * 2, **common), 2),
            ('decode + SCE views, p(td) 0.2 (pretraining)',
             VideoClips(samples, ['x'], video_augment.clip_views(o.size, MEAN, STD), time_difference_p=0.2, **common), 2),
            ('decode + scale/crop/flip (linear, fine-tune)',
             VideoClips(samples, ['x'], video_augment.ClipScaleCropFlip(o.size, MEAN, STD), **common), 1),
            (f'decode {o.test_clips} spread clips (test)',
             VideoClips(samples, ['x'], lambda c: c, clips=o.test_clips, **common), o.test_clips),
            (f'decode + {o.test_crops} crops each (test)',
             VideoClips(samples, ['x'], video_augment.ClipEvalTransform(o.size, MEAN, STD, o.test_crops),
                        clips=o.test_clips, **common), o.test_clips),
        ]
        for name, dataset, clips in pipelines:
            speed, cpu_speed, n = clips_per_second(dataset, clips, o.items)
            print(f'{name:<44}{frames:>7}{speed:>10.1f}{cpu_speed:>13.1f}{n:>8}', flush=True)


if __name__ == '__main__':
    main()
