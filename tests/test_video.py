"""Video: R3D trunks (shapes, hand-counted parameters), clip sampling on videos made here with
PyAV (frame k is a flat grey of value 20 + 7k, so the decoded pixels say which frames were read),
containers, frame folders, unreadable videos, list files, and the clip transforms."""
import argparse
import os

import av
import numpy as np
import pytest
import torch
import torchvision.transforms.v2.functional as TF2
from PIL import Image

import options
import checkpoints
import video_augment
from datasets import SeededDataset
from networks.resnet3d import BasicBlock3d, Bottleneck3d, ResNet3d, build_video_trunk
from networks.resnet_big import build_trunk
from util import UserError
from video_options import add_video_options
from video_datasets import (VideoClips, difference_pairs, folder_samples, read_video_list,
                            spread, video_dataset, video_samples)

MEAN, STD = (0.45,) * 3, (0.225,) * 3
CODECS = {'.mp4': ('libx264', {'crf': '0'}), '.avi': ('mpeg4', {'qscale': '1'}), '.mkv': ('ffv1', {}),
          '.webm': ('libvpx', {'crf': '4', 'b': '1M'})}


def value(k):
    return 20 + 7 * k


def make_video(path, frames=30, fps=10, size=(32, 32)):
    """frames flat grey frames at fps; frame k has value 20 + 7k."""
    codec, options = CODECS[os.path.splitext(path)[1]]
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with av.open(str(path), 'w') as container:
        stream = container.add_stream(codec, rate=fps, options=options)
        stream.width, stream.height, stream.pix_fmt = size[0], size[1], 'yuv420p'
        for k in range(frames):
            pixels = np.full((size[1], size[0], 3), value(k), np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(pixels, format='rgb24')):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return str(path)


def frame_ids(clip):
    """The frame index each frame of a uint8 [T, C, H, W] clip shows."""
    return [round((float(f.float().mean()) - 20) / 7) for f in clip]


def raw(n):
    """n identity transforms: the dataset hands back the sampled uint8 clips."""
    return [lambda clip: clip] * n


# ----------------------------------------------------------------------------- R3D trunks

def conv(c_in, c_out, *kernel):
    return c_in * c_out * int(np.prod(kernel))


def bn(c):
    return 2 * c  # weight and bias (running statistics are buffers)


def r3d18_params(w):
    n = conv(3, w, 1, 7, 7) + bn(w)
    c_in = w
    for planes, kt in zip((w, 2 * w, 4 * w, 8 * w), (1, 1, 3, 3)):
        for b in range(2):
            n += conv(c_in, planes, kt, 3, 3) + bn(planes) + conv(planes, planes, 1, 3, 3) + bn(planes)
            if b == 0 and c_in != planes:
                n += conv(c_in, planes, 1, 1, 1) + bn(planes)
            c_in = planes
    return n


def r3d50_params(w):
    n = conv(3, w, 1, 7, 7) + bn(w)
    c_in = w
    for planes, blocks, kt in zip((w, 2 * w, 4 * w, 8 * w), (3, 4, 6, 3), (1, 1, 3, 3)):
        for b in range(blocks):
            n += (conv(c_in, planes, kt, 1, 1) + bn(planes) + conv(planes, planes, 1, 3, 3) + bn(planes)
                  + conv(planes, 4 * planes, 1, 1, 1) + bn(4 * planes))
            if b == 0:
                n += conv(c_in, 4 * planes, 1, 1, 1) + bn(4 * planes)
            c_in = 4 * planes
    return n


def count(model):
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize('width', [8, 64])
def test_parameter_counts(width):
    assert count(build_video_trunk('r3d18', width)) == r3d18_params(width)
    assert count(build_video_trunk('r3d50', width)) == r3d50_params(width)
    if width == 64:
        # R3D-50 = PyTorchVideo's slow_r50 (32,454,096 with its 400-way classifier of 819,600)
        assert (r3d18_params(64), r3d50_params(64)) == (20_023_872, 31_634_496)


@pytest.mark.parametrize('name, feat_dim', [('r3d18', 64), ('r3d50', 256)])
@pytest.mark.parametrize('frames, side', [(1, 32), (5, 32), (8, 48)])
def test_shapes_any_length(name, feat_dim, frames, side):
    trunk = build_trunk(name, width=8)  # the 2D builder hands video names to resnet3d
    assert isinstance(trunk, ResNet3d) and trunk.feat_dim == feat_dim
    seen = []
    trunk.layer4.register_forward_hook(lambda m, i, o: seen.append(o.shape))
    out = trunk(torch.randn(2, 3, frames, side, side + 16))
    assert out.shape == (2, feat_dim)
    assert seen[0][2:] == (frames, -(-side // 32), -(-(side + 16) // 32))  # time kept, space / 32 (rounded up)


def test_layer_definitions():
    r18, r50 = build_video_trunk('r3d18', 8), build_video_trunk('r3d50', 8)
    for trunk in (r18, r50):
        assert trunk.conv1.kernel_size == (1, 7, 7) and trunk.conv1.stride == (1, 2, 2)
        assert trunk.maxpool.kernel_size == (1, 3, 3) and trunk.maxpool.stride == (1, 2, 2)
        assert [len(getattr(trunk, f'layer{i}')) for i in range(1, 5)] == ([2] * 4 if trunk is r18 else [3, 4, 6, 3])
    for i, kt in zip(range(1, 5), (1, 1, 3, 3)):
        for block in getattr(r18, f'layer{i}'):
            assert block.conv1.kernel_size == (kt, 3, 3) and block.conv2.kernel_size == (1, 3, 3)
        for block in getattr(r50, f'layer{i}'):
            assert block.conv1.kernel_size == (kt, 1, 1) and block.conv2.kernel_size == (1, 3, 3)
    for m in list(r18.modules()) + list(r50.modules()):
        if isinstance(m, torch.nn.Conv3d) or isinstance(m, torch.nn.MaxPool3d):
            assert (m.stride if isinstance(m.stride, tuple) else (m.stride,))[0] == 1  # no temporal stride
        if isinstance(m, BasicBlock3d):
            assert not m.bn2.weight.any()  # residual branches start at zero, as the released models
        if isinstance(m, Bottleneck3d):
            assert not m.bn3.weight.any()


def test_rebuilt_from_checkpoint_args():
    trunk = build_video_trunk('r3d18', 8).eval()
    ckpt = {'args': {'model': 'r3d18', 'stem': 'imagenet', 'width': 8},
            'model': {f'encoder.{k}': v for k, v in trunk.state_dict().items()}}
    rebuilt = checkpoints.pretrained_trunk(ckpt, 'test').eval()
    x = torch.randn(1, 3, 4, 32, 32)
    assert torch.equal(rebuilt(x), trunk(x))


def test_options_accept_video_names():
    parser = argparse.ArgumentParser()
    options.add_common_options(parser, batch_size=8, learning_rate=0.1, lr_decay_epochs='', lr_decay_rate=0.1,
                               weight_decay=0.0, epochs=1)
    add_video_options(parser)
    args = parser.parse_args(['--model', 'r3d50', '--dataset', 'ucf101', '--num_frames', '16', '--split_id', '2'])
    assert (args.model, args.dataset, args.num_frames, args.split_id) == ('r3d50', 'ucf101', 16, 2)
    assert (args.clip_duration, args.test_clips, args.test_crops) == (2.56, 10, 3)


# ----------------------------------------------------------------------------- clip sampling

def test_spread_and_difference_pairs():
    assert spread(10, 4) == [0, 3, 6, 9]
    assert spread(10, 16) == [0, 0, 1, 1, 2, 3, 3, 4, 4, 5, 6, 6, 7, 7, 8, 9]
    assert spread(5, 1) == [0]
    assert difference_pairs([0, 3, 6, 9], 10) == [(0, 1), (3, 4), (6, 7), (8, 9)]
    assert difference_pairs([0], 1) == [(0, 0)]


@pytest.fixture(scope='module')
def clip_mp4(tmp_path_factory):
    return make_video(tmp_path_factory.mktemp('v') / 'a' / 'clip.mp4')  # 30 frames, 3 s


def test_training_clips_are_random_windows(clip_mp4):
    ds = VideoClips([(clip_mp4, 0)], ['a'], raw(2), num_frames=4, clip_duration=1.0)
    firsts = set()
    for seed in range(20):
        torch.manual_seed(seed)
        clips, label = ds[0]
        assert label == 0 and len(clips) == 2
        for clip in clips:
            assert clip.shape == (4, 3, 32, 32) and clip.dtype == torch.uint8
            ids = frame_ids(clip)
            # 1 s at 10 fps = a window of 10 frames, 4 spread over it: offsets 0, 3, 6, 9
            assert [i - ids[0] for i in ids] == [0, 3, 6, 9] and 0 <= ids[0] <= 20
            firsts.add(ids[0])
    assert len(firsts) > 5
    torch.manual_seed(3)
    again = ds[0][0]
    torch.manual_seed(3)
    assert all(torch.equal(a, b) for a, b in zip(again, ds[0][0]))


def test_evaluation_clips_spread_uniformly(clip_mp4):
    ds = VideoClips([(clip_mp4, 0)], ['a'], lambda clip: clip, num_frames=4, clip_duration=1.0, clips=3)
    clips, _ = ds[0]
    assert clips.shape == (3, 4, 3, 32, 32)  # [clips, T, C, H, W] for this raw transform
    assert [frame_ids(c) for c in clips] == [[0, 3, 6, 9], [10, 13, 16, 19], [20, 23, 26, 29]]


def test_video_shorter_than_a_clip_repeats_frames(tmp_path):
    short = make_video(tmp_path / 'a' / 'short.mp4', frames=11)  # 1.1 s
    ds = VideoClips([(short, 0)], ['a'], raw(1), num_frames=4, clip_duration=2.56)
    assert frame_ids(ds[0][0][0]) == [0, 3, 6, 10]
    ds = VideoClips([(short, 0)], ['a'], raw(1), num_frames=16, clip_duration=2.56)
    assert frame_ids(ds[0][0][0]) == [k * 10 // 15 for k in range(16)]


@pytest.mark.parametrize('ext', ['.mp4', '.avi', '.mkv', '.webm'])
def test_containers(tmp_path, ext):
    path = make_video(tmp_path / 'a' / f'clip{ext}')
    ds = VideoClips([(path, 0)], ['a'], lambda clip: clip, num_frames=4, clip_duration=1.0, clips=3)
    assert [frame_ids(c) for c in ds[0][0]] == [[0, 3, 6, 9], [10, 13, 16, 19], [20, 23, 26, 29]]


def test_frame_folder(tmp_path):
    folder = tmp_path / 'a' / 'clip'
    folder.mkdir(parents=True)
    for k in range(30):  # natural order: 2.jpg before 10.jpg
        Image.fromarray(np.full((24, 32, 3), value(k), np.uint8)).save(folder / f'{k + 1}.jpg', quality=95)
    ds = VideoClips([(str(folder), 0)], ['a'], lambda clip: clip, num_frames=4, clip_duration=1.0, clips=3,
                    frame_rate=10)
    clips = ds[0][0]
    assert clips.shape == (3, 4, 3, 24, 32)
    assert [frame_ids(c) for c in clips] == [[0, 3, 6, 9], [10, 13, 16, 19], [20, 23, 26, 29]]


def test_temporal_difference(clip_mp4):
    a = torch.full((2, 3, 4, 4), 100, dtype=torch.uint8)
    b = torch.full((2, 3, 4, 4), 61, dtype=torch.uint8)
    assert video_augment.temporal_difference(a, b).unique().tolist() == [147]  # (100 - 61 + 255) / 2
    # each grey frame minus the next (7 darker): (-7 + 255) / 2 = 124, the last one's too
    ds = VideoClips([(clip_mp4, 0)], ['a'], raw(1), num_frames=4, clip_duration=1.0, time_difference_p=1.0)
    clip = ds[0][0][0]
    assert clip.shape == (4, 3, 32, 32) and (clip.float().mean((1, 2, 3)) - 124).abs().max() <= 1


# ----------------------------------------------------------------------------- unreadable videos

def test_unreadable_video_is_skipped_and_named(tmp_path, capsys):
    good = [make_video(tmp_path / 'a' / f'good{k}.mp4') for k in range(2)]
    corrupt = tmp_path / 'a' / 'corrupt.mp4'
    corrupt.write_bytes(os.urandom(2000))
    truncated = tmp_path / 'a' / 'truncated.mp4'
    truncated.write_bytes(open(good[0], 'rb').read()[:400])
    samples = [(good[0], 0), (str(corrupt), 1), (str(truncated), 2), (good[1], 3)]
    ds = VideoClips(samples, ['a'] * 4, raw(1), num_frames=4, clip_duration=1.0)
    clips, label = ds[1]
    assert label == 3 and clips[0].shape == (4, 3, 32, 32)  # the next readable video stands in
    err = capsys.readouterr().err
    assert 'corrupt.mp4' in err and 'truncated.mp4' in err and '2 so far in this process' in err
    ds[2]
    assert capsys.readouterr().err == ''  # known unreadable: skipped without a second warning
    assert ds[0][1] == 0


def test_every_video_unreadable_is_a_user_error(tmp_path):
    for k in range(2):
        (tmp_path / f'bad{k}.mkv').write_bytes(b'not a video' * 50)
    ds = VideoClips([(str(tmp_path / f'bad{k}.mkv'), 0) for k in range(2)], ['a'], raw(1))
    with pytest.raises(UserError, match='none of the 2 videos could be read'):
        ds[0]


# ----------------------------------------------------------------------------- listing videos

def video_options(**kw):
    parser = argparse.ArgumentParser()
    add_video_options(parser)
    args = parser.parse_args([])
    args.test_folder = None
    for k, v in kw.items():
        setattr(args, k, v)
    return args


def touch(root, *rels):
    for rel in rels:
        path = os.path.join(root, rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        open(path, 'w').close()


def test_class_folders_of_videos_and_frames(tmp_path):
    touch(tmp_path / 'train', 'b/v1.mp4', 'b/v2.avi', 'a/v3.webm', 'a/notes.txt', 'a/frames/00001.jpg')
    touch(tmp_path / 'test', 'b/v4.mkv')
    samples, classes = video_samples(video_options(dataset='video', data_folder=str(tmp_path / 'train')), True)
    assert classes == ['a', 'b']
    assert [(os.path.relpath(p, tmp_path / 'train'), y) for p, y in samples] == [
        ('a/frames', 0), ('a/v3.webm', 0), ('b/v1.mp4', 1), ('b/v2.avi', 1)]
    args = video_options(dataset='video', data_folder=str(tmp_path / 'train'), test_folder=str(tmp_path / 'test'))
    assert video_samples(args, False) == ([(str(tmp_path / 'test' / 'b' / 'v4.mkv'), 1)], ['a', 'b'])
    with pytest.raises(UserError, match='holds no videos'):
        folder_samples(str(tmp_path / 'train' / 'a' / 'frames'), '--data_folder')


def test_ucf101_lists(tmp_path):
    splits = tmp_path / 'ucfTrainTestlist'
    splits.mkdir()
    (splits / 'classInd.txt').write_text('1 ApplyEyeMakeup\n2 Archery\n')
    (splits / 'trainlist01.txt').write_text('ApplyEyeMakeup/v_A_g08_c01.avi 1\nArchery/v_B_g09_c02.avi 2\n')
    (splits / 'testlist01.txt').write_text('Archery/v_B_g01_c01.avi\n')
    (splits / 'trainlist02.txt').write_text('Archery/v_B_g01_c01.avi 2\n')
    touch(tmp_path, 'ApplyEyeMakeup/v_A_g08_c01.avi', 'Archery/v_B_g01_c01.avi', 'Archery/v_B_g09_c02/00001.jpg')
    args = video_options(dataset='ucf101', data_folder=str(tmp_path))
    train, classes = video_samples(args, True)
    assert classes == ['ApplyEyeMakeup', 'Archery']
    # the second video was extracted to frames: its folder stands for the listed .avi
    assert [(os.path.relpath(p, tmp_path), y) for p, y in train] == [
        ('ApplyEyeMakeup/v_A_g08_c01.avi', 0), ('Archery/v_B_g09_c02', 1)]
    assert [y for _, y in video_samples(args, False)[0]] == [1]
    args.split_id = 2
    assert [os.path.basename(p) for p, _ in video_samples(args, True)[0]] == ['v_B_g01_c01.avi']
    args.split_id = 3
    with pytest.raises(UserError, match='trainlist03.txt does not exist'):
        video_samples(args, True)


def test_hmdb51_lists(tmp_path):
    splits = tmp_path / 'splits'
    splits.mkdir()
    (splits / 'brush_hair_test_split1.txt').write_text('a.avi 1 \nb.avi 2 \nc.avi 0 \n')
    (splits / 'cartwheel_test_split1.txt').write_text('d.avi 2 \ne.avi 1 \n')
    (splits / 'cartwheel_test_split2.txt').write_text('d.avi 1 \n')
    touch(tmp_path, 'brush_hair/a.avi', 'brush_hair/b.avi', 'brush_hair/c.avi', 'cartwheel/d.avi', 'cartwheel/e.avi')
    args = video_options(dataset='hmdb51', data_folder=str(tmp_path), split_dir=str(splits))
    rel = lambda samples: [(os.path.relpath(p, tmp_path), y) for p, y in samples]  # noqa: E731
    train, classes = video_samples(args, True)
    assert classes == ['brush_hair', 'cartwheel']
    assert rel(train) == [('brush_hair/a.avi', 0), ('cartwheel/e.avi', 1)]
    assert rel(video_samples(args, False)[0]) == [('brush_hair/b.avi', 0), ('cartwheel/d.avi', 1)]
    args.split_id = 3
    with pytest.raises(UserError, match='no HMDB51 split files'):
        video_samples(args, True)


def test_kinetics_lists(tmp_path, capsys):
    (tmp_path / 'train.csv').write_text('label,youtube_id,time_start,time_end,split\n'
                                        'abseiling,abc,10,20,train\nair drumming,xyz,0,10,train\n'
                                        'abseiling,gone,5,15,train\n')
    touch(tmp_path / 'train', 'abseiling/abc_000010_000020.mp4', 'air drumming/xyz_000000_000010.mkv')
    (tmp_path / 'val.txt').write_text('x/v1.mp4,air drumming\n')  # comma-separated: names may hold spaces
    touch(tmp_path / 'val', 'x/v1.mp4')
    args = video_options(dataset='kinetics', data_folder=str(tmp_path))
    train, classes = video_samples(args, True)
    assert classes == ['abseiling', 'air drumming']
    assert [(os.path.relpath(p, tmp_path), y) for p, y in train] == [
        ('train/abseiling/abc_000010_000020.mp4', 0), ('train/air drumming/xyz_000000_000010.mkv', 1)]
    assert 'warning: 1 of the 3 videos' in capsys.readouterr().err  # 'gone' is missing
    assert video_samples(args, False) == ([(str(tmp_path / 'val' / 'x' / 'v1.mp4'), 1)], classes)
    # '<path> <index>' lists, as PyTorchVideo's
    (tmp_path / 'ids.txt').write_text('abseiling/abc_000010_000020.mp4 3 300\n')
    assert read_video_list(str(tmp_path / 'ids.txt')) == ([('abseiling/abc_000010_000020.mp4', 3)],
                                                          ['0', '1', '2', '3'])
    (tmp_path / 'nothing.txt').write_text('nowhere/none.mp4 0\n')
    args.val_list = str(tmp_path / 'nothing.txt')
    with pytest.raises(UserError, match='none of the 1 videos'):
        video_samples(args, False)


def test_dataset_from_options(tmp_path):
    make_video(tmp_path / 'train' / 'a' / 'v.mp4')
    make_video(tmp_path / 'train' / 'b' / 'w.avi')
    args = video_options(dataset='video', data_folder=str(tmp_path / 'train'), num_frames=4)
    ds = video_dataset(args, True, video_augment.clip_views(16, MEAN, STD), time_difference_p=0.2)
    assert ds.classes == ['a', 'b'] and ds.targets == [0, 1]
    views, label = SeededDataset(ds)[(1, 7)]
    assert label == 1 and [v.shape for v in views] == [(3, 4, 16, 16)] * 2
    again, _ = SeededDataset(ds)[(1, 7)]  # the sample's seed fixes its clips and augmentation
    assert all(torch.equal(a, b) for a, b in zip(views, again))
    other, _ = SeededDataset(ds)[(1, 8)]
    assert not torch.equal(views[0], other[0])
    ds = video_dataset(args, True, video_augment.ClipEvalTransform(16, MEAN, STD, crops=3), clips=2)
    assert ds[0][0].shape == (6, 3, 4, 18, 18)  # 2 clips x 3 crops of side 16 / 0.875
    with pytest.raises(UserError, match='--test_folder'):
        video_dataset(args, False, video_augment.ClipEvalTransform(16, MEAN, STD))
    args.num_frames = 0
    with pytest.raises(UserError, match='--num_frames'):
        options.check_video_options(args)


# ----------------------------------------------------------------------------- clip transforms

def still_clip(frames=6, h=40, w=56):
    """A clip of identical random frames."""
    return torch.randint(0, 256, (3, h, w), dtype=torch.uint8, generator=torch.Generator().manual_seed(0)) \
        .expand(frames, 3, h, w).contiguous()


@pytest.mark.parametrize('make', [lambda: video_augment.clip_views(24, MEAN, STD)[0],
                                  lambda: video_augment.clip_views(24, MEAN, STD)[1],
                                  lambda: video_augment.ClipScaleCropFlip(24, MEAN, STD)])
def test_same_parameters_on_every_frame(make):
    transform = make()
    for seed in range(10):
        torch.manual_seed(seed)
        view = transform(still_clip())
        assert view.shape == (3, 6, 24, 24) and view.dtype == torch.float32
        assert torch.allclose(view, view[:, :1].expand_as(view), atol=1e-6)  # every frame alike
    torch.manual_seed(0)
    a = transform(still_clip())
    torch.manual_seed(1)
    assert not torch.equal(a, transform(still_clip()))


def test_eval_crops_span_the_long_side():
    clip = still_clip(h=40, w=64)
    views = video_augment.ClipEvalTransform(24, MEAN, STD, crops=3)(clip)
    assert views.shape == (3, 3, 6, 27, 27)  # short side 24 / 0.875 = 27
    resized = TF2.normalize(TF2.to_dtype(TF2.resize(clip, [27], antialias=True), torch.float32, scale=True),
                            MEAN, STD).permute(1, 0, 2, 3)  # [C, T, 27, 43]
    assert torch.allclose(views[0], resized[..., :27]) and torch.allclose(views[2], resized[..., -27:])
    assert torch.allclose(views[1], resized[..., 8:35])
    portrait = video_augment.ClipEvalTransform(24, MEAN, STD, crops=1)(still_clip(h=64, w=40))
    assert portrait.shape == (1, 3, 6, 27, 27)


def test_fast_hue_and_blur_match_torchvision():
    x = torch.rand(2, 3, 20, 28)
    x[0, :, :4, :4] = 0.5  # grey pixels have no hue
    for factor in (-0.5, -0.2, 0.05, 0.2, 0.5):
        assert torch.allclose(video_augment.adjust_hue(x, factor), TF2.adjust_hue(x, factor), atol=1e-5)
    for kernel, sigma in ((3, 0.5), (7, 1.7)):
        assert torch.allclose(video_augment.gaussian_blur(x, kernel, sigma), TF2.gaussian_blur(x, [kernel] * 2, [sigma] * 2),
                              atol=1e-5)
