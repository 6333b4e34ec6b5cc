"""Evaluation data that would give meaningless numbers: an evaluation folder labelled by its own
class order (subset, renamed, superset), supervised objectives on loose images, 16-bit and float
images, and retrieval features cached before the data changed."""
import argparse
import os
import shutil

import numpy as np
import pytest
from PIL import Image

import datasets
from conftest import SMALL, assert_user_error, check_ok, make_image_folder, run_script


def path_args(train, test):
    return argparse.Namespace(dataset='path', data_folder=str(train), test_folder=str(test))


def test_a_subset_evaluation_folder_keeps_the_training_labels(tmp_path):
    train = make_image_folder(tmp_path / 'train', 3, 1)
    test = tmp_path / 'test'
    shutil.copytree(os.path.join(train, 'class_2'), test / 'class_2')  # alone, its own order would say 0
    dataset = datasets.image_dataset(path_args(train, test), False, None)
    assert dataset.targets == [2] and dataset.classes == ['class_0', 'class_1', 'class_2']
    assert dataset[0][1] == 2


@pytest.mark.parametrize('extra', ['renamed', 'superset'])
def test_classes_the_training_folder_lacks_are_refused(tmp_path, extra):
    train = make_image_folder(tmp_path / 'train', 2, 1)
    test = tmp_path / 'test'
    shutil.copytree(os.path.join(train, 'class_0'), test / 'class_0')
    if extra == 'superset':
        shutil.copytree(os.path.join(train, 'class_1'), test / 'class_1')
    shutil.copytree(os.path.join(train, 'class_1'), test / 'cats')
    with pytest.raises(datasets.UserError, match='classes the training folder .* lacks: cats'):
        datasets.image_dataset(path_args(train, test), False, None)


def test_supervised_objectives_refuse_loose_images(tmp_path):
    loose = tmp_path / 'loose'
    loose.mkdir()
    make_image_folder(tmp_path / 'x', 2, 4)
    for i, src in enumerate(sorted((tmp_path / 'x').glob('*/*.png'))):
        shutil.copy(src, loose / f'{i}.png')
    base = ['--dataset', 'path', '--data_folder', loose, *SMALL, '--batch_size', '4', '--epochs', '1']
    proc = run_script('main_supcon.py', *base, '--knn_freq', '0', cwd=tmp_path / 'supcon')
    assert_user_error(proc, tmp_path / 'supcon', 'SupCon', 'needs labels', 'class sub-folders')
    check_ok(run_script('main_supcon.py', *base, '--knn_freq', '0', '--method', 'SimCLR', cwd=tmp_path / 'simclr'))
    test = make_image_folder(tmp_path / 'test', 2, 2)
    proc = run_script('main_supcon.py', *base, '--method', 'SimCLR', '--test_folder', test, '--knn_freq', '1',
                      cwd=tmp_path / 'knn')
    assert_user_error(proc, tmp_path / 'knn', 'kNN monitor', 'needs labels')
    proc = run_script('main_ce.py', *base, '--test_folder', test, cwd=tmp_path / 'ce')  # 1 class: 100 % accuracy
    assert_user_error(proc, tmp_path / 'ce', 'a classifier needs labels')


@pytest.mark.parametrize('mode, pixels, want', [
    ('I;16', np.full((4, 4), 32768, np.uint16), 128),  # mid-grey in 16 bits, not saturated white
    ('I', np.full((4, 4), 65535, np.int32), 255),
    ('F', np.full((4, 4), 0.25, np.float32), 64),
    ('F', np.full((4, 4), 100.0, np.float32), 100),
    ('L', np.full((4, 4), 7, np.uint8), 7),
])
def test_deep_images_are_scaled_to_8_bits(tmp_path, mode, pixels, want):
    img = Image.fromarray(pixels, mode) if mode != 'I;16' else Image.frombytes('I;16', (4, 4), pixels.tobytes())
    rgb = datasets.to_rgb(img)
    assert rgb.mode == 'RGB' and np.asarray(rgb).min() == np.asarray(rgb).max() == want


def test_a_16_bit_png_file_is_not_white(tmp_path):
    path = tmp_path / 'deep.png'
    Image.frombytes('I;16', (4, 4), np.full((4, 4), 16384, np.uint16).tobytes()).save(path)
    assert np.asarray(datasets.load_image(str(path))).max() == 64


def test_retrieval_cache_is_not_reused_after_the_data_changed(tmp_path, tiny_ckpt):
    train = make_image_folder(tmp_path / 'train', 3, 3, seed=1)
    test = make_image_folder(tmp_path / 'test', 3, 2, seed=2)
    cmd = ['--ckpt', tiny_ckpt, '--dataset', 'path', '--data_folder', train, '--test_folder', test,
           '--num_workers', '0', '--knn_k', '2', '--recall_k', '1', '--features_dir', tmp_path / 'features']
    check_ok(run_script('main_retrieval.py', *cmd, cwd=tmp_path))
    assert 'features read from' in check_ok(run_script('main_retrieval.py', *cmd, cwd=tmp_path)).stdout
    shutil.copy(os.path.join(test, 'class_0', 'img_0.png'), os.path.join(test, 'class_0', 'img_9.png'))
    proc = check_ok(run_script('main_retrieval.py', *cmd, cwd=tmp_path))
    assert 'features read from' not in proc.stdout and 'extracting again' in proc.stdout


def test_unreadable_videos_are_left_out_of_evaluation_not_copied(tmp_path, capsys):
    import torch
    import torch.nn as nn
    from evaluation import evaluate, extract_features
    from test_video import make_video
    from video_augment import ClipEvalTransform
    from video_datasets import VideoClips
    good = [str(tmp_path / f'v{i}.mp4') for i in range(2)]
    for path in good:
        make_video(path, frames=20, fps=10, size=(40, 32))
    bad = tmp_path / 'broken.mp4'
    bad.write_bytes(b'not a video')
    samples = [(good[0], 0), (str(bad), 1), (good[1], 1)]
    transform = ClipEvalTransform(32, (0.45,) * 3, (0.225,) * 3, crops=1)
    clips = VideoClips(samples, ['a', 'b'], transform, num_frames=2, clip_duration=1.0, clips=1, frame_rate=10,
                       drop_unreadable=True)
    assert [clips[i][1] for i in range(3)] == [0, -1, 1]
    loader = torch.utils.data.DataLoader(clips, batch_size=3)
    args = argparse.Namespace(device=torch.device('cpu'), amp='none', channels_last=False)
    model = nn.Sequential(nn.Flatten(), nn.LazyLinear(2))
    model(next(iter(loader))[0].flatten(0, 1))
    loss, acc1, _ = evaluate(model, loader, args)
    feats, labels = extract_features(model, loader, args)
    assert labels.tolist() == [0, 1] and len(feats) == 2
    assert acc1 in (0.0, 50.0, 100.0)  # over the two readable videos
    assert 'note: 1 unreadable videos left out of this evaluation (2 evaluated)' in capsys.readouterr().out


def test_one_empty_class_folder_is_named(tmp_path):
    root = make_image_folder(tmp_path / 'train', 2, 2)
    os.makedirs(os.path.join(root, 'class_9'))
    with pytest.raises(datasets.UserError, match='the class folder class_9 holds no images'):
        datasets.image_folder(root, None, '--data_folder')
    with pytest.raises(datasets.UserError, match='is a file, not a folder'):
        datasets.image_folder(os.path.join(root, 'class_0', 'img_0.png'), None, '--data_folder')
