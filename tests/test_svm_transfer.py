"""main_svm.py (VOC07 linear SVM) and main_transfer.py (logistic-regression transfer) on tiny
generated VOC and ImageFolder data; AP and mean per-class accuracy against hand-computed cases."""
import os

import numpy as np
import pytest
import torch
from PIL import Image

import datasets
import main_svm
import main_transfer
from networks.resnet_big import build_trunk
from conftest import assert_user_error, check_ok, make_image_folder, run_script

# image id -> [(class, difficult)]: 000003 is multi-label, 000004's chair is difficult only
VOC = {'trainval': {'000001': [('cat', 0)], '000002': [('dog', 0)], '000003': [('cat', 0), ('dog', 0)],
                    '000004': [('chair', 1), ('cat', 0)], '000005': [('chair', 0)], '000006': [('chair', 0)]},
       'test': {'000007': [('cat', 0)], '000008': [('dog', 0)], '000009': [('chair', 0), ('dog', 1)],
                '000010': [('cat', 0), ('chair', 0)]}}


def make_voc(root, with_imagesets=True):
    voc = root / 'VOCdevkit' / 'VOC2007'
    for d in ('Annotations', 'JPEGImages', 'ImageSets/Main'):
        os.makedirs(voc / d, exist_ok=True)
    rng = np.random.default_rng(0)
    for split, images in VOC.items():
        if with_imagesets:
            (voc / 'ImageSets' / 'Main' / f'{split}.txt').write_text('\n'.join(images) + '\n')
        for image_id, objects in images.items():
            objs = ''.join(f'<object><name>{n}</name><difficult>{d}</difficult></object>' for n, d in objects)
            (voc / 'Annotations' / f'{image_id}.xml').write_text(f'<annotation>{objs}</annotation>')
            Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(voc / 'JPEGImages' / f'{image_id}.jpg')
    return root


@pytest.fixture(scope='module')
def ckpt(tmp_path_factory):
    trunk = build_trunk('resnet18', stem='cifar', width=8)
    path = tmp_path_factory.mktemp('ckpt') / 'last.pth'
    torch.save({'method': 'SupCon', 'epoch': 1, 'model': {f'encoder.{k}': v for k, v in trunk.state_dict().items()},
                'args': {'model': 'resnet18', 'stem': 'cifar', 'width': 8, 'size': 32, 'run_name': 'tiny'}}, path)
    return path


def test_voc_labels_multilabel_and_difficult_only(tmp_path):
    ds = datasets.VOC2007(str(make_voc(tmp_path)), 'trainval', transform=None)
    cls = datasets.VOC_CLASSES.index
    y = ds.targets
    assert y[2, cls('cat')] == 1 and y[2, cls('dog')] == 1 and y[2].sum() == 2
    assert y[3, cls('chair')] == 0 and y[3, cls('cat')] == 1  # difficult-only chair: a negative
    assert datasets.VOC2007(str(tmp_path), 'trainval', None).targets.equal(y)  # the folder holding VOCdevkit


def test_voc11_ap_and_mean_per_class_by_hand():
    # ranks: +, -, +, -: precision 1 up to recall 0.5, then 2/3 at recall 1
    ap = main_transfer.voc11_ap(np.array([0.9, 0.8, 0.7, 0.6]), np.array([1, 0, 1, 0]))
    assert ap == pytest.approx((6 * 1 + 5 * 2 / 3) / 11)

    class Always0:
        predict = staticmethod(lambda x: np.zeros(len(x), dtype=int))
    y = np.array([0, 0, 0, 1])
    assert main_transfer.score('cifar10', Always0, y, y) == pytest.approx(75.0)
    assert main_transfer.score('pets', Always0, y, y) == pytest.approx(50.0)  # (100 + 0) / 2


def test_svm_ap_all_points_by_hand():
    # separable 1-D features: every positive ranked first -> AP 100; a class without test positives: NaN
    x = np.array([[1.0], [2.0], [-1.0], [-2.0]])
    y = np.array([[1, 0], [1, 0], [0, 1], [0, 0]])
    aps = main_svm.svm_ap((x, y), (x, np.array([[1, 0], [1, 0], [0, 0], [0, 0]])))
    assert aps[0] == pytest.approx(100.0) and np.isnan(aps[1])


def test_main_svm_runs_and_caches(tmp_path, ckpt):
    data = make_voc(tmp_path)
    args = ['--ckpt', ckpt, '--data_folder', data, '--size', '32', '--num_workers', '0',
            '--features_dir', tmp_path / 'f']
    proc = check_ok(run_script('main_svm.py', *args, cwd=tmp_path))
    assert 'VOC07 SVM mAP' in proc.stdout and 'over 3 classes' in proc.stdout
    proc = check_ok(run_script('main_svm.py', *args, cwd=tmp_path))
    assert 'features read from' in proc.stdout


def test_main_transfer_folder(tmp_path, ckpt):
    root = tmp_path / 'data'
    make_image_folder(root / 'train', 3, 6, seed=1)
    make_image_folder(root / 'test', 3, 3, seed=2)
    proc = check_ok(run_script('main_transfer.py', '--ckpt', ckpt, '--datasets', 'folder', '--data_folder', root,
                               '--size', '32', '--num_workers', '0', cwd=tmp_path))
    assert 'seeded 20 % of train' in proc.stdout and '| SCE (published) | - |' in proc.stdout
    make_image_folder(root / 'val', 3, 2, seed=3)
    proc = check_ok(run_script('main_transfer.py', '--ckpt', ckpt, '--datasets', 'folder', '--data_folder', root,
                               '--size', '32', '--num_workers', '0', '--features_dir', tmp_path / 'g', cwd=tmp_path))
    assert 'validated on own val split' in proc.stdout


def test_bad_inputs_one_line(tmp_path, ckpt):
    data = make_voc(tmp_path / 'noimagesets', with_imagesets=False)
    assert_user_error(run_script('main_svm.py', '--ckpt', ckpt, '--data_folder', data, '--num_workers', '0',
                                 cwd=tmp_path), tmp_path, 'ImageSets/Main/trainval.txt')
    assert_user_error(run_script('main_transfer.py', '--ckpt', ckpt, '--datasets', 'cifar10', '--data_root',
                                 tmp_path / 'empty', '--num_workers', '0', cwd=tmp_path), tmp_path,
                      'dataset cifar10 not found')
    torch.save({'weights': {'x': torch.zeros(1)}}, tmp_path / 'odd.pth')
    assert_user_error(run_script('main_svm.py', '--ckpt', tmp_path / 'odd.pth', '--data_folder', data, cwd=tmp_path),
                      tmp_path, 'layout not recognised', 'weights')
