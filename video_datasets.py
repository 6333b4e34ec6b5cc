"""Video datasets: videos decoded with PyAV (root/<class>/<video>.mp4, .avi, .mkv, .webm) or
folders of extracted frames (root/<class>/<video>/<frame>.jpg), Kinetics-style lists, UCF101 and
HMDB51 splits; clips sampled at random (training) or uniformly spread (evaluation).

Every random draw (clip starts, temporal difference, the transforms of augment.py) uses torch's
RNG, so datasets.SeededDataset makes a sample's clips a function of its seed, as for images. A
video that cannot be read (corrupt, truncated, no frame where a clip falls) is replaced by the next
readable one and named in a warning; a dataset where no video can be read is a UserError."""
import csv
import math
import os
import re
import sys

import av
import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from video_augment import temporal_difference
from util import UserError, is_main

VIDEO_DATASETS = ('video', 'kinetics', 'ucf101', 'hmdb51')
VIDEO_EXTENSIONS = ('.mp4', '.avi', '.mkv', '.webm')
FRAME_EXTENSIONS = ('.jpg', '.jpeg', '.png')
# Frame rates of the released frame folders, to place frames in time (--frame_rate overrides).
FRAME_RATE = {'video': 30, 'kinetics': 30, 'ucf101': 25, 'hmdb51': 30}
# Seconds: a clip that starts further than this after the previous one ends is reached by seeking,
# a nearer one by decoding on. About one key-frame interval (x264's default is 250 frames): a
# seek lands on the key frame before the clip, so seeking over less saves nothing.
SEEK_GAP = 10.0
EPS = 1e-6  # seconds: a frame stamped at a window's start belongs to it despite float rounding


# ----------------------------------------------------------------------------- clip sampling

def clip_windows(duration, clip_duration, n, random):
    """n [start, end) windows in seconds: random starts (training) or starts spread uniformly
    from 0 to duration - clip_duration (evaluation). A video shorter than a clip gives windows
    from 0 that run past its end."""
    span = max(duration - clip_duration, 0.0)
    if random:
        starts = [torch.rand(()).item() * span for _ in range(n)]
    else:
        starts = [span * k / max(n - 1, 1) for k in range(n)]
    return [(s, s + clip_duration) for s in starts]


def spread(count, num_frames):
    """Positions of num_frames frames spread uniformly over a window of count frames, first and
    last included (floor of linspace(0, count - 1, num_frames)); repeats when count < num_frames."""
    if num_frames == 1:
        return [0]
    return [k * (count - 1) // (num_frames - 1) for k in range(num_frames)]


def difference_pairs(positions, count):
    """(frame, partner) positions for the temporal difference of the frames at `positions`: each
    frame with the one after it; the last one, as in the released code, takes the difference of
    its predecessor with it."""
    pairs = []
    for j, p in enumerate(positions):
        a = p if j < len(positions) - 1 and p + 1 < count else max(p - 1, 0)
        pairs.append((a, min(a + 1, count - 1)))
    return pairs


# ----------------------------------------------------------------------------- decoding

def _video_duration(container, stream):
    if stream.duration:
        return float(stream.duration * stream.time_base)
    if container.duration:
        return container.duration / av.time_base
    raise ValueError('the container states no duration')


def _decode_windows(container, stream, windows):
    """The decoded frames of each window, seeking to the key frame before each group of nearby
    windows and decoding only up to the group's end."""
    tb, t0 = stream.time_base, stream.start_time or 0
    out = [[] for _ in windows]
    groups = []  # [start, end, window indices], windows sorted by start
    for w in sorted(range(len(windows)), key=lambda w: windows[w][0]):
        start, end = windows[w]
        if groups and start <= groups[-1][1] + SEEK_GAP:
            groups[-1][1] = max(groups[-1][1], end)
            groups[-1][2].append(w)
        else:
            groups.append([start, end, [w]])
    for start, end, members in groups:
        container.seek(t0 + max(int((start - EPS) / tb), 0), stream=stream)
        for frame in container.decode(stream):
            if frame.pts is None:
                raise ValueError('a frame has no timestamp')
            t = float((frame.pts - t0) * tb)
            if t >= end - EPS:
                break
            for w in members:
                if windows[w][0] - EPS <= t < windows[w][1] - EPS:
                    out[w].append(frame)
    return out


def _frame_tensor(frame):
    """A decoded av.VideoFrame as uint8 [C, H, W] RGB."""
    return torch.from_numpy(frame.to_ndarray(format='rgb24')).permute(2, 0, 1)


def _image_tensor(path):
    """An extracted frame (jpg, png) as uint8 [C, H, W] RGB."""
    with Image.open(path) as img:
        return torch.from_numpy(np.array(img.convert('RGB'))).permute(2, 0, 1)


def _natural_key(name):
    return [int(c) if c.isdigit() else c for c in re.split(r'(\d+)', name)]


def _folder_windows(path, frame_rate, windows):
    """The frame files of each window of a frame folder, whose k-th frame shows at k / frame_rate;
    windows(duration) gives the windows."""
    names = sorted((f for f in os.listdir(path) if f.lower().endswith(FRAME_EXTENSIONS)), key=_natural_key)
    out = []
    for start, end in windows(len(names) / frame_rate):
        first, stop = (math.ceil(t * frame_rate - EPS) for t in (start, end))
        out.append([os.path.join(path, name) for name in names[first:stop]])
    return out


class VideoClips(Dataset):
    """Labelled videos (files or frame folders), each item one or more clips of `clip_duration`
    seconds holding `num_frames` frames spread uniformly over it, as uint8 [T, C, H, W] given to
    the transforms (augment.py's clip transforms):

    - transform a list (pretraining): one random clip per transform; item ([view, ...], label);
    - transform a callable, clips None (supervised training): one random clip; item (view, label);
    - clips N (evaluation): N clips spread uniformly over the video, each through `transform`
      (which may return several crops); item ([N * crops, C, T, H, W], label), clip-major.

    With probability time_difference_p a clip is replaced by its temporal difference
    (video_augment.temporal_difference) before its transform: SCE's pretraining uses 0.2."""

    def __init__(self, samples, classes, transform, num_frames=8, clip_duration=2.56, clips=None,
                 frame_rate=30, time_difference_p=0.0, drop_unreadable=False):
        self.samples, self.classes = samples, classes
        self.targets = [label for _, label in samples]
        self.transform, self.clips = transform, clips
        self.num_frames, self.clip_duration, self.frame_rate = num_frames, clip_duration, frame_rate
        self.time_difference_p = time_difference_p
        self.unreadable = {}  # index -> reason, for the videos this process failed to read
        # evaluation: an unreadable video comes with label -1 (a neighbour's views stand in for its
        # shape) and evaluation.evaluate / extract_features leave it out, counting it
        self.drop_unreadable = drop_unreadable

    def __len__(self):
        return len(self.samples)

    def __getitem__(self, index):
        rng = torch.get_rng_state()
        found = []
        for k in range(len(self.samples)):
            i = (index + k) % len(self.samples)
            if i in self.unreadable:
                continue
            torch.set_rng_state(rng)  # the same draws whichever video ends up read
            try:
                clips = self.read_clips(self.samples[i][0])
            except Exception as e:  # corrupt, truncated or too short: the reason goes in the warning
                self.unreadable[i] = f'{type(e).__name__}: {e}'.strip().splitlines()[0]
                found.append(i)
                continue
            for j in found:
                print(f'warning: {"left out" if self.drop_unreadable else "skipped"} unreadable video '
                      f'{self.samples[j][0]} ({self.unreadable[j]}); {len(self.unreadable)} so far in this process',
                      file=sys.stderr, flush=True)
            dropped = self.drop_unreadable and i != index
            return self.apply_transform(clips), -1 if dropped else self.samples[i][1]
        path, reason = next((self.samples[j][0], r) for j, r in self.unreadable.items())
        raise UserError(f'none of the {len(self.samples)} videos could be read (e.g. {path}: {reason}); '
                        f'check that they are video files PyAV can decode')

    def apply_transform(self, clips):
        if isinstance(self.transform, (list, tuple)):
            return [t(c) for t, c in zip(self.transform, clips)]
        if self.clips is None:
            return self.transform(clips[0])
        views = [self.transform(c) for c in clips]
        return torch.cat([v.reshape(-1, *v.shape[-4:]) for v in views])

    def read_clips(self, path):
        """The clips of one video, uint8 [T, C, H, W] each."""
        n = len(self.transform) if isinstance(self.transform, (list, tuple)) else (self.clips or 1)

        def windows(duration):
            return clip_windows(duration, self.clip_duration, n, random=self.clips is None)

        if os.path.isdir(path):
            return self.assemble(_folder_windows(path, self.frame_rate, windows), _image_tensor)
        with av.open(path) as container:
            if not container.streams.video:
                raise ValueError('no video stream')
            stream = container.streams.video[0]
            stream.thread_count = 1  # one core per loader worker: the workers are the parallelism
            frames = _decode_windows(container, stream, windows(_video_duration(container, stream)))
            return self.assemble(frames, _frame_tensor)

    def assemble(self, windows, load):
        """Pick num_frames of each window's frames, load them (and their partners for a temporal
        difference) as uint8 [T, C, H, W]."""
        clips = []
        for frames in windows:
            if not frames:
                raise ValueError('no frame where a clip falls (empty or too short)')
            positions = spread(len(frames), self.num_frames)
            if self.time_difference_p > 0 and torch.rand(()).item() < self.time_difference_p:
                pairs = difference_pairs(positions, len(frames))
                clips.append(temporal_difference(torch.stack([load(frames[a]) for a, _ in pairs]),
                                                  torch.stack([load(frames[b]) for _, b in pairs])))
            else:
                clips.append(torch.stack([load(frames[p]) for p in positions]))
        return clips


# ----------------------------------------------------------------------------- listing videos

def class_folders(root):
    return sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d)))


def folder_samples(root, what, classes=None):
    """(path, label) of every root/<class>/<video file or frame folder>, and the classes (sorted
    sub-folder names, or `classes` when given: those of the training split)."""
    if not os.path.isdir(root):
        raise UserError(f'{what} {root} does not exist; it must hold one sub-folder of videos per class')
    found = class_folders(root)
    classes = classes or found
    index = {c: i for i, c in enumerate(classes)}
    samples = []
    for c in found:
        if c not in index:
            raise UserError(f'{what} {root} has a class {c!r} that the training split lacks')
        folder = os.path.join(root, c)
        for name in sorted(os.listdir(folder), key=_natural_key):
            path = os.path.join(folder, name)
            if os.path.isdir(path) or name.lower().endswith(VIDEO_EXTENSIONS):
                samples.append((path, index[c]))
    if not samples:
        raise UserError(f'{what} {root} holds no videos: expected <class>/<video>.mp4 (.avi, .mkv, .webm) '
                        f'or <class>/<video>/<frame>.jpg')
    return samples, classes


def resolve(root, rel):
    """The video file or frame folder that a list names, relative to root: as written, as a frame
    folder (the name without its extension), or with a video extension added; None if absent."""
    path = os.path.join(root, rel)
    stem = os.path.splitext(path)[0]
    for candidate in (path, stem, *(stem + ext for ext in VIDEO_EXTENSIONS)):
        if os.path.isfile(candidate) or os.path.isdir(candidate):
            return candidate
    return None


def present(entries, roots, what):
    """[(path, label)] of the (relative path, label) entries found under one of roots; the missing
    ones are reported once, and none found is a UserError."""
    samples, missing = [], []
    for rel, label in entries:
        path = next((p for p in (resolve(r, rel) for r in roots) if p), None)
        if path is None:
            missing.append(rel)
        else:
            samples.append((path, label))
    if not samples:
        raise UserError(f'none of the {len(entries)} videos of {what} exist under {" or ".join(roots)}')
    if missing and is_main():
        print(f'warning: {len(missing)} of the {len(entries)} videos of {what} are missing (first: {missing[0]}); '
              f'skipped', file=sys.stderr, flush=True)
    return samples


def read_video_list(path, classes=None):
    """A Kinetics-style list: '<video> <label>' per line (space or comma separated; a frame count
    may follow; the label a class index or name), or the official Kinetics CSV (header
    label,youtube_id,time_start,time_end,...; videos <label>/<youtube_id>_<start>_<end>.<ext>, the
    downloaders' naming). Returns ([(relative path, label index)], classes); class names index
    into `classes` when given (the training split's), else into their sorted set."""
    if not os.path.isfile(path):
        raise UserError(f'video list {path} does not exist')
    with open(path, newline='') as f:
        lines = [line.strip() for line in f if line.strip()]
    if lines and 'youtube_id' in lines[0]:
        rows = list(csv.DictReader(lines))
        rels = [os.path.join(r['label'], f"{r['youtube_id']}_{int(float(r['time_start'])):06d}_"
                                         f"{int(float(r['time_end'])):06d}") for r in rows]
        labels = [r['label'] for r in rows]
    else:
        parts = [[x.strip() for x in line.split(',')] if ',' in line else line.split() for line in lines]
        bad = next((line for line, p in zip(lines, parts) if len(p) < 2), None)
        if bad is not None:
            raise UserError(f'video list {path}: line {bad!r} is not "<video> <label>"')
        rels, labels = [p[0] for p in parts], [p[1] for p in parts]
    if not rels:
        raise UserError(f'video list {path} is empty')
    if all(label.isdigit() for label in labels):
        labels = [int(label) for label in labels]
        return list(zip(rels, labels)), classes or [str(c) for c in range(max(labels) + 1)]
    classes = classes or sorted(set(labels))
    index = {c: i for i, c in enumerate(classes)}
    unknown = next((label for label in labels if label not in index), None)
    if unknown is not None:
        raise UserError(f'video list {path}: class {unknown!r} is not a class of the training split')
    return [(rel, index[label]) for rel, label in zip(rels, labels)], classes


def ucf101_entries(split_dir, split_id, train):
    """UCF101's trainlist0N.txt / testlist0N.txt ('<class>/<video>.avi [label]'); the label is
    the class folder's line in classInd.txt ('<index> <class>', from 1)."""
    class_file = os.path.join(split_dir, 'classInd.txt')
    list_file = os.path.join(split_dir, f'{"train" if train else "test"}list0{split_id}.txt')
    for f in (class_file, list_file):
        if not os.path.isfile(f):
            raise UserError(f'UCF101 split file {f} does not exist; point --split_dir at ucfTrainTestlist/')
    with open(class_file) as f:
        numbered = sorted((int(i), name) for i, name in (line.split() for line in f if line.strip()))
    classes = [name for _, name in numbered]
    index = {c: i for i, c in enumerate(classes)}
    with open(list_file) as f:
        rels = [line.split()[0] for line in f if line.strip()]
    unknown = next((r for r in rels if os.path.dirname(r) not in index), None)
    if unknown is not None:
        raise UserError(f'{list_file}: {unknown} is in no class of {class_file}')
    return [(r, index[os.path.dirname(r)]) for r in rels], classes, list_file


def hmdb51_entries(split_dir, split_id, train):
    """HMDB51's <class>_test_splitN.txt files ('<video>.avi <0|1|2>': 1 training, 2 testing,
    0 unused); classes in sorted order."""
    suffix = f'_test_split{split_id}.txt'
    files = sorted(f for f in os.listdir(split_dir) if f.endswith(suffix)) if os.path.isdir(split_dir) else []
    if not files:
        raise UserError(f'no HMDB51 split files *{suffix} in {split_dir}; '
                        f'point --split_dir at testTrainMulti_7030_splits/')
    classes = [f[:-len(suffix)] for f in files]
    wanted, entries = '1' if train else '2', []
    for label, (c, f) in enumerate(zip(classes, files)):
        with open(os.path.join(split_dir, f)) as lines:
            entries += [(os.path.join(c, p[0]), label) for p in (line.split() for line in lines)
                        if len(p) == 2 and p[1] == wanted]
    return entries, classes, os.path.join(split_dir, f'*{suffix}')


def default_split_dir(args, name):
    """--split_dir, else the official folder name inside or beside --data_folder, else --data_folder."""
    if args.split_dir:
        return args.split_dir
    root = args.data_folder
    for candidate in (os.path.join(root, name), os.path.join(os.path.dirname(os.path.normpath(root)), name)):
        if os.path.isdir(candidate):
            return candidate
    return root


def kinetics_list(args, split):
    """--train_list / --val_list, else --data_folder/<split>.csv or .txt, else None (class folders)."""
    given = args.train_list if split == 'train' else args.val_list
    if given:
        return given
    found = [p for p in (os.path.join(args.data_folder, split + e) for e in ('.csv', '.txt')) if os.path.isfile(p)]
    return found[0] if found else None


def video_samples(args, train):
    """([(path, label)], classes) of the training or evaluation split of a video --dataset."""
    d, root = args.dataset, args.data_folder
    if d == 'video':
        if train:
            return folder_samples(root, '--data_folder')
        if args.test_folder is None:
            raise UserError('--dataset video needs --test_folder for evaluation')
        return folder_samples(args.test_folder, '--test_folder', class_folders(root) if os.path.isdir(root) else None)
    if d == 'kinetics':
        split = 'train' if train else 'val'
        listed, folder = kinetics_list(args, split), os.path.join(root, split)
        train_classes = None
        if not train:  # validation labels follow the training split's classes
            train_list = kinetics_list(args, 'train')
            if train_list:
                train_classes = read_video_list(train_list)[1]
            elif os.path.isdir(os.path.join(root, 'train')):
                train_classes = class_folders(os.path.join(root, 'train'))
        if listed is None:
            return folder_samples(folder, f'--data_folder/{split}', train_classes)
        entries, classes = read_video_list(listed, train_classes)
        return present(entries, [folder, root], listed), classes
    if d == 'ucf101':
        entries, classes, listed = ucf101_entries(default_split_dir(args, 'ucfTrainTestlist'), args.split_id, train)
    elif d == 'hmdb51':
        entries, classes, listed = hmdb51_entries(default_split_dir(args, 'testTrainMulti_7030_splits'),
                                                  args.split_id, train)
    else:
        raise UserError(f'{d!r} is not a video dataset; expected one of {", ".join(VIDEO_DATASETS)}')
    return present(entries, [root], listed), classes


def video_dataset(args, train, transform, clips=None, time_difference_p=0.0, drop_unreadable=False):
    """The training (train=True) or evaluation split of a video --dataset as VideoClips (see it
    for `transform`, `clips` and `drop_unreadable`): e.g. pretraining video_dataset(args, True,
    video_augment.clip_views(...), time_difference_p=0.2); testing video_dataset(args, False,
    video_augment.ClipEvalTransform(..., crops=args.test_crops), clips=args.test_clips, drop_unreadable=True)."""
    samples, classes = video_samples(args, train)
    frame_rate = args.frame_rate or FRAME_RATE[args.dataset]
    return VideoClips(samples, classes, transform, args.num_frames, args.clip_duration, clips, frame_rate,
                      time_difference_p, drop_unreadable)
