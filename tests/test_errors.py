"""User mistakes end with one line on stderr ('error: ...') that names the problem, exit status 2,
no traceback, and no checkpoint written. A non-finite loss stops training naming epoch and step and
keeps the last good checkpoint."""
import os

import pytest
import torch

from conftest import SMALL, assert_user_error, load, make_image_folder, only_file, run_script

CE_RUN = ['--dataset', 'path', '--batch_size', '4', '--epochs', '1', *SMALL]
PATH_RUN = [*CE_RUN, '--knn_freq', '0']


# ----------------------------------------------------------------------------- data

def test_missing_data_folder(tmp_path):
    missing = tmp_path / 'nowhere'
    proc = run_script('main_supcon.py', *PATH_RUN, '--data_folder', missing, cwd=tmp_path)
    assert_user_error(proc, tmp_path, missing, 'does not exist')


def test_no_data_folder_given(tmp_path):
    proc = run_script('main_supcon.py', *PATH_RUN, cwd=tmp_path)  # default ./datasets/, not there
    assert_user_error(proc, tmp_path, './datasets/', 'does not exist')


def test_empty_data_folder(tmp_path):
    empty = tmp_path / 'empty'
    empty.mkdir()
    proc = run_script('main_supcon.py', *PATH_RUN, '--data_folder', empty, cwd=tmp_path)
    assert_user_error(proc, tmp_path, empty)


def test_class_folders_without_images(tmp_path):
    root = tmp_path / 'noimages'
    (root / 'cat').mkdir(parents=True)
    (root / 'dog').mkdir()
    (root / 'dog' / 'readme.txt').write_text('not an image')
    proc = run_script('main_ce.py', *CE_RUN, '--data_folder', root, '--test_folder', root, cwd=tmp_path)
    assert_user_error(proc, tmp_path, root, 'no images')


@pytest.mark.parametrize('workers, kind', [('0', 'garbage'), ('2', 'garbage'), ('0', 'truncated')])
def test_corrupt_image_is_named(tmp_path, workers, kind):
    root = make_image_folder(tmp_path / 'data', 2, 3)
    good = (tmp_path / 'data' / 'class_0' / 'img_0.png').read_bytes()
    bad = tmp_path / 'data' / 'class_1' / 'bad.png'
    bad.write_bytes(b'this is not a png file\n' * 20 if kind == 'garbage' else good[:len(good) // 2])
    args = list(PATH_RUN)
    args[args.index('--num_workers') + 1] = workers
    proc = run_script('main_supcon.py', *args, '--data_folder', root, cwd=tmp_path)
    assert_user_error(proc, tmp_path, 'bad.png')


def test_knn_without_an_evaluation_split(tmp_path):
    root = make_image_folder(tmp_path / 'data', 2, 2)
    args = list(PATH_RUN)
    args[args.index('--knn_freq') + 1] = '5'
    proc = run_script('main_supcon.py', *args, '--data_folder', root, cwd=tmp_path)
    assert_user_error(proc, tmp_path, '--knn_freq', '--test_folder')


def test_cifar10_not_there_without_download(tmp_path):
    empty = tmp_path / 'cifar'
    empty.mkdir()
    proc = run_script('main_supcon.py', '--dataset', 'cifar10', '--data_folder', empty, '--no-download',
                      '--batch_size', '4', '--epochs', '1', *SMALL, cwd=tmp_path)
    assert_user_error(proc, tmp_path, 'CIFAR10', empty)


def test_imagenet_without_train_split(tmp_path):
    proc = run_script('main_ce.py', '--dataset', 'imagenet', '--data_folder', tmp_path, '--batch_size', '4',
                      '--epochs', '1', *SMALL, cwd=tmp_path)
    assert_user_error(proc, tmp_path, 'train', 'does not exist')


# ----------------------------------------------------------------------------- options

def test_mean_without_std(tmp_path):
    root = make_image_folder(tmp_path / 'data', 2, 2)
    proc = run_script('main_supcon.py', *PATH_RUN, '--data_folder', root, '--mean', '(0.5, 0.5, 0.5)',
                      cwd=tmp_path)
    assert_user_error(proc, tmp_path, '--mean', '--std')


def test_mean_not_numbers(tmp_path):
    proc = run_script('main_supcon.py', *PATH_RUN, '--data_folder', tmp_path, '--mean', '(a, b, c)',
                      '--std', '(1, 1, 1)', cwd=tmp_path)
    assert_user_error(proc, tmp_path, '--mean')


def test_num_classes_disagrees_with_the_data(tiny_ckpt, shared_data, tmp_path):
    train, test = shared_data
    proc = run_script('main_linear.py', '--ckpt', tiny_ckpt, '--dataset', 'path', '--data_folder', train,
                      '--test_folder', test, '--num_classes', '10', '--batch_size', '4', '--num_workers', '0',
                      cwd=tmp_path)
    assert_user_error(proc, tmp_path, '--num_classes 10', '3 classes')


# ----------------------------------------------------------------------------- checkpoints

LINEAR = ['--dataset', 'path', '--batch_size', '4', '--epochs', '1', '--num_workers', '0']


def linear_run(ckpt, shared_data, tmp_path, *extra):
    train, test = shared_data
    return run_script('main_linear.py', '--ckpt', ckpt, *LINEAR, '--data_folder', train, '--test_folder', test,
                      *extra, cwd=tmp_path)


def test_ckpt_does_not_exist(shared_data, tmp_path):
    missing = tmp_path / 'no_such.pth'
    assert_user_error(linear_run(missing, shared_data, tmp_path), tmp_path, missing, 'does not exist')


def test_pretrained_does_not_exist(shared_data, tmp_path):
    missing = tmp_path / 'no_such.pth'
    proc = run_script('main_ce.py', '--pretrained', missing, *LINEAR, '--data_folder', shared_data[0],
                      '--test_folder', shared_data[1], cwd=tmp_path)
    assert_user_error(proc, tmp_path, '--pretrained', missing, 'does not exist')


def test_ckpt_is_a_text_file(shared_data, tmp_path):
    text = tmp_path / 'model.pth'
    text.write_text('just some text\n')
    assert_user_error(linear_run(text, shared_data, tmp_path), tmp_path, text, 'not a checkpoint')


def test_ckpt_is_another_torch_file(shared_data, tmp_path):
    other = tmp_path / 'other.pth'
    torch.save({'state_dict': {'conv.weight': torch.zeros(2, 2)}, 'epoch': 3}, other)
    assert_user_error(linear_run(other, shared_data, tmp_path), tmp_path, other, 'not a checkpoint')


def edited_checkpoint(tiny_ckpt, tmp_path, **args):
    ckpt = load(tiny_ckpt)
    ckpt['args'].update(args)
    path = tmp_path / 'edited.pth'
    torch.save(ckpt, path)
    return path


def test_ckpt_does_not_fit_its_own_options(tiny_ckpt, shared_data, tmp_path):
    edited = edited_checkpoint(tiny_ckpt, tmp_path, width=16)
    assert_user_error(linear_run(edited, shared_data, tmp_path), tmp_path, edited, 'does not fit')


def test_pretrained_does_not_fit(tiny_ckpt, shared_data, tmp_path):
    edited = edited_checkpoint(tiny_ckpt, tmp_path, model='resnet34')
    proc = run_script('main_ce.py', '--pretrained', edited, *LINEAR, '--data_folder', shared_data[0],
                      '--test_folder', shared_data[1], cwd=tmp_path)
    assert_user_error(proc, tmp_path, edited, 'does not fit')


def test_resume_does_not_fit(tiny_ckpt, shared_data, tmp_path):
    proc = run_script('main_supcon.py', *PATH_RUN, '--data_folder', shared_data[0], '--width', '16',
                      '--resume', tiny_ckpt, cwd=tmp_path)
    assert_user_error(proc, tmp_path, '--resume', 'was trained with', 'this run has')


def test_linear_model_contradicts_checkpoint(tiny_ckpt, shared_data, tmp_path):
    line = assert_user_error(linear_run(tiny_ckpt, shared_data, tmp_path, '--model', 'resnet50'), tmp_path,
                             '--model resnet50', 'resnet18')
    assert 'drop --model' in line


# ----------------------------------------------------------------------------- non-finite loss

def test_non_finite_loss_keeps_the_last_good_checkpoint(shared_data, tmp_path):
    # epoch 1 trains normally; the step schedule then multiplies the lr by 1e30 for epoch 2
    proc = run_script('main_supcon.py', '--dataset', 'path', '--data_folder', shared_data[0], '--batch_size', '8',
                      '--epochs', '3', '--save_freq', '1', '--lr_decay_epochs', '1', '--lr_decay_rate', '1e30',
                      '--knn_freq', '0', *SMALL, cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith('error: loss became non-finite at epoch 2, step '), proc.stderr
    assert 'Traceback' not in proc.stderr
    last = only_file(tmp_path / 'save')
    assert os.path.relpath(last, tmp_path) in lines[0]  # names the checkpoint it kept
    assert load(last)['epoch'] == 1
    assert all(torch.isfinite(v).all() for v in load(last)['model'].values() if v.is_floating_point())
    assert sorted(os.listdir(os.path.dirname(last))) == ['ckpt_epoch_1.pth', 'last.pth']


def test_non_finite_loss_after_resume(tiny_ckpt, shared_data, tmp_path):
    good = tmp_path / 'good.pth'
    ckpt = load(tiny_ckpt)
    ckpt['args']['learning_rate'] = 1e30  # a run that diverges in its second epoch (resume keeps the options)
    torch.save(ckpt, good)
    before = good.read_bytes()
    proc = run_script('main_supcon.py', '--dataset', 'path', '--data_folder', shared_data[0], '--batch_size', '8',
                      '--epochs', '2', '--learning_rate', '1e30', '--knn_freq', '0', '--resume', good, *SMALL,
                      cwd=tmp_path)
    assert 'resumed from' in proc.stdout
    assert_user_error(proc, tmp_path, 'non-finite', 'epoch 2', 'step', good)
    assert good.read_bytes() == before
    assert load(good)['epoch'] == 1
