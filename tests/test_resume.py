"""--resume continues exactly where a checkpoint stopped: on CPU with --num_workers 0 and a seed, an
interrupted-and-resumed run ends with the same weights as an uninterrupted one."""
import re
import shutil

import torch

from conftest import SMALL, check_ok, load, only_file, run_script

EPOCH_LINE = r'^epoch (\d+), total time [\d.]+, loss ([\d.]+)'


def assert_same_state(a, b):
    assert a['epoch'] == b['epoch']
    assert a['model'].keys() == b['model'].keys()
    for k in a['model']:
        assert torch.equal(a['model'][k], b['model'][k]), k
    sa, sb = a['optimizer']['state'], b['optimizer']['state']
    assert sa.keys() == sb.keys() and sa
    for i in sa:
        assert torch.equal(sa[i]['momentum_buffer'], sb[i]['momentum_buffer']), i
    assert a['optimizer']['param_groups'][0]['lr'] == b['optimizer']['param_groups'][0]['lr']


def epoch_losses(stdout):
    return {int(e): float(l) for e, l in re.findall(EPOCH_LINE, stdout, re.M)}


def interrupted_after(folder, epoch):
    """Make the run folder look as if the run had stopped after `epoch`."""
    shutil.copy(folder / f'ckpt_epoch_{epoch}.pth', folder / 'last.pth')


def check_resumed(proc, from_epoch, full):
    assert re.search(rf'^resumed from .*\(epoch {from_epoch}\)$', proc.stdout, re.M), proc.stdout
    losses = epoch_losses(proc.stdout)
    assert sorted(losses) == list(range(from_epoch + 1, 4))  # the epochs already done are not redone
    assert all(losses[e] == full[e] for e in losses)


def test_supcon_resume_matches_uninterrupted(shared_data, tmp_path):
    flags = ['main_supcon.py', '--dataset', 'path', '--data_folder', shared_data[0], '--batch_size', '8',
             '--epochs', '3', '--save_freq', '1', '--cosine', '--warm', '--knn_freq', '0', *SMALL]
    full = check_ok(run_script(*flags, cwd=tmp_path))
    last = only_file(tmp_path / 'save')
    folder = tmp_path / 'save' / 'SupCon' / 'path_models' / \
        'SupCon_path_resnet18_lr_0.05_decay_0.0001_bsz_8_temp_0.07_trial_0_cosine_warm_width_8'
    assert str(folder / 'last.pth') == last
    final = load(last)
    assert final['epoch'] == 3
    full_losses = epoch_losses(full.stdout)
    shutil.copy(folder / 'ckpt_epoch_2.pth', tmp_path / 'kept_epoch_2.pth')

    interrupted_after(folder, 1)
    proc = check_ok(run_script(*flags, '--resume', cwd=tmp_path))  # no path: the run folder's last.pth
    check_resumed(proc, 1, full_losses)
    assert_same_state(load(last), final)

    proc = check_ok(run_script(*flags, '--resume', tmp_path / 'kept_epoch_2.pth', cwd=tmp_path))
    check_resumed(proc, 2, full_losses)
    assert_same_state(load(last), final)

    # resuming a finished run trains nothing and changes nothing
    proc = check_ok(run_script(*flags, '--resume', cwd=tmp_path))
    assert not epoch_losses(proc.stdout)
    assert_same_state(load(last), final)


def test_resume_without_a_checkpoint_starts_from_scratch(shared_data, tmp_path):
    proc = check_ok(run_script('main_supcon.py', '--dataset', 'path', '--data_folder', shared_data[0],
                               '--batch_size', '8', '--epochs', '1', '--knn_freq', '0', '--resume', *SMALL,
                               cwd=tmp_path))
    assert 'nothing to resume' in proc.stdout
    assert load(only_file(tmp_path / 'save'))['epoch'] == 1


def test_ce_resume_restores_rng_for_dropout(shared_data, tmp_path):
    """Dropout draws from the global RNG: only a restored RNG state repeats the same masks."""
    train, test = shared_data
    flags = ['main_ce.py', '--dataset', 'path', '--data_folder', train, '--test_folder', test, '--batch_size', '8',
             '--epochs', '3', '--save_freq', '1', '--dropout', '0.5', *SMALL]
    full = check_ok(run_script(*flags, cwd=tmp_path))
    last = only_file(tmp_path / 'save')
    final = load(last)
    interrupted_after(tmp_path / 'save' / 'SupCon' / 'path_models' /
                      'SupCE_path_resnet18_lr_0.2_decay_0.0001_bsz_8_trial_0_width_8', 1)
    proc = check_ok(run_script(*flags, '--resume', cwd=tmp_path))
    check_resumed(proc, 1, epoch_losses(full.stdout))
    assert_same_state(load(last), final)
    assert load(last)['best_acc'] == final['best_acc']


def test_linear_resume_matches_and_restores_best_acc(shared_data, tiny_ckpt, tmp_path):
    train, test = shared_data
    flags = ['main_linear.py', '--ckpt', tiny_ckpt, '--dataset', 'path', '--data_folder', train, '--test_folder',
             test, '--batch_size', '8', '--epochs', '3', '--save_freq', '1', '--num_workers', '0',
             '--print_freq', '1000', '--seed', '0']
    full = check_ok(run_script(*flags, cwd=tmp_path))
    last = only_file(tmp_path / 'save')
    final = load(last)

    # stop after epoch 1 with a best accuracy no epoch can reach: it must survive the resume
    ckpt = load(last.replace('last.pth', 'ckpt_epoch_1.pth'))
    ckpt['best_acc'], ckpt['best_acc5'] = 101.5, 102.5
    torch.save(ckpt, last)
    proc = check_ok(run_script(*flags, '--resume', cwd=tmp_path))
    check_resumed(proc, 1, epoch_losses(full.stdout))
    resumed = load(last)
    assert_same_state(resumed, final)
    assert (resumed['best_acc'], resumed['best_acc5']) == (101.5, 102.5)
    assert 'best accuracy: 101.50 (top-5 102.50)' in proc.stdout
