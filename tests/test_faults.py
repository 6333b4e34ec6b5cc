"""Broken state never reaches a checkpoint, and broken files end in one line or are rebuilt:
non-finite weights, an optimiser state of another kind, checkpoints that lack their options or are
folders, garbage feature caches and retrieval results."""
import argparse
import importlib.util
import os
import sys

import pytest
import torch
import torch.nn as nn

import checkpoints
import optim
import util
from conftest import REPO, SMALL, check_ok, load, run_script


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.encoder = nn.Linear(3, 2)

    def forward(self, x):
        return self.encoder(x)


def tiny_run(tmp_path):
    model = Tiny()
    args = argparse.Namespace(save_folder=str(tmp_path), save_freq=1, last_good=None, model='resnet18', resume=None,
                              epochs=5, rank=0, learning_rate=0.1, momentum=0.9, weight_decay=0.0, fused_optimizer=False,
                              device=torch.device('cpu'), amp='none')
    return model, torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9), args


def test_non_finite_weights_never_overwrite_a_good_checkpoint(tmp_path):
    model, opt, args = tiny_run(tmp_path)
    checkpoints.save_epoch(args, 1, method='SupCon', model=model, optimizer=opt, scaler=None)
    before = (tmp_path / 'last.pth').read_bytes()
    with torch.no_grad():
        model.encoder.weight[0, 0] = float('nan')
    with pytest.raises(util.UserError, match=r'non-finite in epoch 2 \(encoder.weight.*last.pth is kept'):
        checkpoints.save_epoch(args, 2, method='SupCon', model=model, optimizer=opt, scaler=None)
    assert (tmp_path / 'last.pth').read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ['ckpt_epoch_1.pth', 'last.pth']


def test_an_optimiser_state_of_another_kind_is_refused_on_resume(tmp_path):
    model, opt, args = tiny_run(tmp_path)
    model(torch.randn(4, 3)).sum().backward()
    opt.step()
    checkpoints.save_epoch(args, 1, method='SCE', model=model, optimizer=opt, scaler=None)
    ckpt = checkpoints.load_checkpoint(str(tmp_path / 'last.pth'))
    ckpt['path'] = str(tmp_path / 'last.pth')
    lars = optim.LARS([{'params': [model.encoder.weight]}, {'params': [model.encoder.bias]}], lr=0.1)
    with pytest.raises(util.UserError, match='optimiser state does not fit'):
        checkpoints.restore(ckpt, args, model, lars, None, 'SCE')


def test_checkpoints_without_their_options_or_that_are_folders(tmp_path):
    with pytest.raises(util.UserError, match='is a folder, not a checkpoint'):
        checkpoints.load_checkpoint(str(tmp_path))
    path = tmp_path / 'partial.pth'
    torch.save({'method': 'SupCon', 'args': {'size': 32}, 'model': {}}, path)
    with pytest.raises(util.UserError, match='lacks the options it was trained with'):
        checkpoints.load_checkpoint(str(path))


def test_garbage_feature_caches_are_rebuilt(tmp_path, tiny_ckpt, shared_data):
    cmd = ['--ckpt', tiny_ckpt, '--dataset', 'path', '--data_folder', shared_data[0], '--test_folder',
           shared_data[1], '--num_workers', '0', '--knn_k', '2', '--recall_k', '1', '--features_dir',
           tmp_path / 'features']
    check_ok(run_script('main_retrieval.py', *cmd, cwd=tmp_path))
    for name, garbage in (('features.json', '[1, 2'), ('val_features.pth', 'PK truncated')):
        (tmp_path / 'features' / name).write_text(garbage)
        proc = check_ok(run_script('main_retrieval.py', *cmd, cwd=tmp_path))
        assert 'extracting again' in proc.stdout and 'Traceback' not in proc.stderr, proc.stdout
        assert load(tmp_path / 'features' / 'val_features.pth').shape[0] == 12


@pytest.mark.parametrize('content', ['[]', 'garbage', '{"recall": {}}', '{"recall": [1], "ckpt": "x", "epoch": 1}'])
def test_summarize_skips_a_broken_retrieval_json(tmp_path, content, monkeypatch, capsys):
    (tmp_path / 'save').mkdir()
    (tmp_path / 'save' / 'retrieval.json').write_text(content)
    spec = importlib.util.spec_from_file_location('summarize', os.path.join(REPO, 'scripts', 'summarize.py'))
    summarize = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(summarize)
    monkeypatch.setattr(sys, 'argv', ['summarize.py', str(tmp_path / 'save')])
    try:
        summarize.main()
    except util.UserError:
        pass  # no run to summarise: its own one-line error
    assert 'skipped' in capsys.readouterr().out


def test_resume_refuses_options_that_define_the_run_and_lets_the_others_change():
    saved = {'method': 'SupCon', 'temp': 0.07, 'learning_rate': 0.5, 'momentum': 0.9, 'epochs': 100,
             'print_freq': 10, 'num_workers': 16, 'lr_decay_epochs': [700, 800]}
    now = argparse.Namespace(**{**saved, 'epochs': 200, 'print_freq': 1, 'num_workers': 2, 'rank': 0})
    checkpoints.check_same_run(saved, now, '--resume x')
    for name, value in (('temp', 0.1), ('momentum', 0.5), ('lr_decay_epochs', (700, 900)), ('method', 'SimCLR')):
        changed = argparse.Namespace(**{**vars(now), name: value})
        with pytest.raises(util.UserError, match=rf'--resume x was trained with {name} .*--{name}'):
            checkpoints.check_same_run(saved, changed, '--resume x')


@pytest.mark.parametrize('script, flag, kind', [
    ('main_supcon.py', '--save_root', 'under_a_file'), ('main_supcon.py', '--output_dir', 'under_a_file'),
    ('main_retrieval.py', '--features_dir', 'under_a_file'), ('main_retrieval.py', '--tsne', 'a_folder'),
    ('main_retrieval.py', '--tsne', 'under_a_file'), ('scripts/export_trunk.py', '--out', 'a_folder'),
    ('scripts/summarize.py', '--curves', 'under_a_file')])
def test_outputs_that_cannot_be_written_end_in_one_line_before_any_work(script, flag, kind, tmp_path, tiny_ckpt,
                                                                         shared_data):
    blocker = tmp_path / 'a_file'
    blocker.write_text('x')
    target = blocker / 'out.png' if kind == 'under_a_file' else tmp_path
    base = {'main_supcon.py': ['--dataset', 'path', '--data_folder', shared_data[0], '--epochs', '1', '--knn_freq',
                               '0', '--batch_size', '8', *SMALL],
            'main_retrieval.py': ['--ckpt', tiny_ckpt, '--dataset', 'path', '--data_folder', shared_data[0],
                                  '--test_folder', shared_data[1], '--num_workers', '0'],
            'scripts/export_trunk.py': ['--ckpt', tiny_ckpt, '--format', 'torchvision'],
            'scripts/summarize.py': [os.path.dirname(tiny_ckpt)]}[script]
    proc = run_script(script, *base, flag, target, cwd=tmp_path)
    lines = proc.stderr.splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and 'Traceback' not in proc.stderr, proc.stderr
    assert flag in lines[0] or 'cannot write' in lines[0], lines
    assert 'epoch 1' not in proc.stdout and 'extracted' not in proc.stdout  # refused before any work
