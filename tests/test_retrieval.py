"""Evaluation of any checkpoint: kNN and recall@k against hand-computed cases, main_retrieval.py end
to end (cache reuse and invalidation, t-SNE figure), the torchvision and detectron2 exports, and
scripts/summarize.py on the save/ folders of a short run."""
import importlib.util
import json
import os
import pickle
import re
from types import SimpleNamespace

import matplotlib
import numpy as np
import pytest
import torch
import torch.nn as nn
import torchvision
from PIL import Image

import util
from conftest import REPO, SMALL, assert_user_error, check_ok, load, only_file, run_script
from datasets import Digits
from evaluation import knn_accuracies, knn_predict, recall_at_k, view_features
from networks.resnet_big import SupConResNet, build_trunk


def script_module(name):
    spec = importlib.util.spec_from_file_location(name, os.path.join(REPO, 'scripts', f'{name}.py'))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# ----------------------------------------------------------------------------- the pure functions

# Unit vectors at known cosines from q1 = [1, 0] (1, 0.8, 0.6, 0, -1) and from q2 = [0, 1] (0, 0.6, 0.8, 1, 0).
BANK = torch.tensor([[1.0, 0.0], [0.8, 0.6], [0.6, 0.8], [0.0, 1.0], [-1.0, 0.0]])
BANK_LABELS = torch.tensor([0, 1, 1, 0, 2])


def test_knn_accuracies_hand_case():
    ks, ts = (1, 3, 200), (0.1, 1.0)
    # q1 (label 0): k=1 -> class 0. k=3 at T=0.1: e^10 for 0 beats e^8 + e^6 for 1; at T=1: e^1 = 2.72
    # loses to e^0.8 + e^0.6 = 4.05. k=200 (all 5): T=0.1 -> 0; T=1: 2.72 + e^0 = 3.72 < 4.05 -> 1.
    q1 = torch.tensor([[1.0, 0.0]])
    assert knn_accuracies(q1, torch.tensor([0]), BANK, BANK_LABELS, ks, ts) == {
        (1, 0.1): 100, (1, 1.0): 100, (3, 0.1): 100, (3, 1.0): 0, (200, 0.1): 100, (200, 1.0): 0}
    # q2 (label 1): its nearest is [0, 1] of class 0, then class 1 at 0.8 and 0.6: the mirror image
    q2 = torch.tensor([[0.0, 1.0]])
    assert knn_accuracies(q2, torch.tensor([1]), BANK, BANK_LABELS, ks, ts) == {
        (1, 0.1): 0, (1, 1.0): 0, (3, 0.1): 0, (3, 1.0): 100, (200, 0.1): 0, (200, 1.0): 100}
    # together, scaled (cosine: lengths do not matter), in chunks of one query
    both = knn_accuracies(torch.cat([3 * q1, 0.5 * q2]), torch.tensor([0, 1]), 7 * BANK, BANK_LABELS, ks, ts, chunk=1)
    assert both == {key: 50 for key in both}


def test_knn_accuracies_agree_with_knn_predict_on_random_features():
    g = torch.Generator().manual_seed(0)
    bank = torch.nn.functional.normalize(torch.randn(300, 16, generator=g), dim=1)
    queries = torch.nn.functional.normalize(torch.randn(50, 16, generator=g), dim=1)
    bank_labels, labels = torch.randint(0, 5, (300,), generator=g), torch.randint(0, 5, (50,), generator=g)
    accs = knn_accuracies(queries, labels, bank, bank_labels, (5, 20, 100), (0.07, 0.5), chunk=16)
    for (k, t), acc in accs.items():
        pred = knn_predict(queries, bank, bank_labels, 5, k=k, t=t)
        assert acc == pytest.approx((pred == labels).float().mean().item() * 100)


def test_recall_at_k_centres_each_set_on_its_own_mean():
    # Bank: the four unit directions (labels 0..3) shifted by [5, -3]; queries: offsets c_i summing
    # to zero, shifted by [10, 10]. Centring recovers b_i and c_i; without it every query would
    # point along [1, 1].
    b = torch.tensor([[1.0, 0.0], [-1.0, 0.0], [0.0, 1.0], [0.0, -1.0]])
    c = torch.tensor([[1.0, 0.0], [-1.0, 0.0], [0.2, 1.0], [-0.2, -1.0]])
    bank, queries = b + torch.tensor([5.0, -3.0]), c + 10
    # c0 -> b0 (hit), c1 -> b1 (hit), c3 -> b3 (hit); c2 (label 0) -> b2 (label 2, cosine 0.98)
    # first, b0 (0.20) second: a miss at 1, a hit at 2.
    recall = recall_at_k(queries, torch.tensor([0, 1, 0, 3]), bank, torch.tensor([0, 1, 2, 3]), ks=(1, 2, 4, 10))
    assert recall == {1: 75.0, 2: 100.0, 4: 100.0, 10: 100.0}
    # a query whose label no bank entry has is never a hit
    assert recall_at_k(queries, torch.tensor([9, 1, 0, 3]), bank, torch.tensor([0, 1, 2, 3]), ks=(1, 4)) == \
        {1: 50.0, 4: 75.0}


def test_view_features_average_over_the_test_views():
    trunk = nn.Sequential(nn.Flatten(), nn.Linear(12, 4))
    args = SimpleNamespace(device=torch.device('cpu'), amp='none', channels_last=False)
    x, y = torch.randn(2, 3, 2, 2), torch.randn(2, 3, 2, 2)
    with torch.no_grad():
        assert torch.allclose(view_features(trunk, x, args), trunk(x))
        assert torch.allclose(view_features(trunk, [x, y], args), (trunk(x) + trunk(y)) / 2)


# ----------------------------------------------------------------------------- main_retrieval end to end

DIGITS_RUN = 'SupCon_digits_resnet18_lr_0.05_decay_0.0001_bsz_64_temp_0.07_trial_0_width_8'
FEATURES = 'features_last_digits_16'  # the size is part of the name: features of other sizes never mix


@pytest.fixture(scope='module')
def digits_run(tmp_path_factory):
    """One epoch of SupCon on digits (kNN monitor on), a one-epoch linear probe of it, and a first
    main_retrieval.py run with a t-SNE figure: (cwd, supcon stdout, last.pth, retrieval process)."""
    cwd = tmp_path_factory.mktemp('digits_run')
    supcon = check_ok(run_script('main_supcon.py', '--dataset', 'digits', '--batch_size', '64', '--epochs', '1',
                                 '--knn_freq', '1', '--batch_size_val', '512', *SMALL, '--size', '16', cwd=cwd))
    last = cwd / 'save' / 'SupCon' / 'digits_models' / DIGITS_RUN / 'last.pth'
    check_ok(run_script('main_linear.py', '--ckpt', last, '--dataset', 'digits', '--batch_size', '256',
                        '--epochs', '1', '--num_workers', '0', '--print_freq', '1000', '--seed', '0', cwd=cwd))
    first = check_ok(run_script('main_retrieval.py', '--ckpt', last, '--num_workers', '0', '--batch_size', '512',
                                '--tsne', cwd / 'figures' / 'tsne.png', '--tsne_samples', '200', cwd=cwd))
    return cwd, supcon.stdout, last, first


def printed_knn(stdout):
    """{(k, t): accuracy} of main_retrieval's kNN table."""
    ks = [int(k) for k in re.findall(r'k=(\d+)', stdout.split('weighted kNN')[1].splitlines()[1])]
    rows = re.findall(r'^\s+T=([\d.]+)((?:\s+[\d.]+)+)$', stdout, re.M)
    return {(k, float(t)): float(v) for t, values in rows for k, v in zip(ks, values.split())}


def test_retrieval_reports_knn_and_recall_of_the_trunk(digits_run):
    cwd, supcon_out, last, proc = digits_run
    folder = last.parent / FEATURES
    assert 'extracted 1437 bank and 360 query features of dimension 64' in proc.stdout
    knn = printed_knn(proc.stdout)
    assert set(knn) == {(k, t) for k in (10, 20, 100, 200) for t in (0.07, 0.1)}
    # the trunk as training's kNN monitor saw it: the same k 200, T 0.1 figure
    monitor = float(re.search(r'^epoch 1, kNN accuracy ([\d.]+)$', supcon_out, re.M).group(1))
    assert knn[200, 0.1] == pytest.approx(monitor, abs=0.01)

    # the SCE video code's files: raw trunk features and labels in dataset order
    feats = {n: load(folder / f'{n}.pth') for n in ('train_features', 'train_labels', 'val_features', 'val_labels')}
    assert feats['train_features'].shape == (1437, 64) and feats['val_features'].shape == (360, 64)
    assert feats['train_labels'].tolist() == Digits(train=True).targets
    assert feats['val_labels'].tolist() == Digits(train=False).targets
    # pooled ReLU outputs, not L2-normalised
    assert (feats['train_features'] >= 0).all() and feats['train_features'].norm(dim=1).std() > 0

    results = json.loads((folder / 'retrieval.json').read_text())
    assert (results['method'], results['epoch'], results['bank'], results['queries']) == ('SupCon', 1, 1437, 360)
    assert {(r['k'], r['t']): r['accuracy'] for r in results['knn']} == pytest.approx(knn, abs=0.01)
    recall = recall_at_k(feats['val_features'], feats['val_labels'], feats['train_features'], feats['train_labels'])
    assert results['recall'] == pytest.approx({f'R@{k}': v for k, v in recall.items()})
    assert list(results['recall']) == ['R@1', 'R@5', 'R@10', 'R@20', 'R@50']
    values = list(results['recall'].values())
    assert values == sorted(values) and 10 < values[0] <= 100  # recall grows with k; far above chance
    printed = re.search(r'R@50\n((?:\s+[\d.]+){5})', proc.stdout).group(1).split()
    assert [float(v) for v in printed] == pytest.approx(values, abs=0.01)


def test_tsne_figure_is_written(digits_run):
    cwd, _, _, proc = digits_run
    path = cwd / 'figures' / 'tsne.png'
    assert 't-SNE of 200 query features' in proc.stdout
    with Image.open(path) as img:
        assert img.format == 'PNG' and img.width > 600 and img.height > 500
        colours = {c for _, c in img.convert('RGB').getcolors(1 << 20)}
    tab10 = {tuple(round(255 * v) for v in rgb) for rgb in matplotlib.colormaps['tab10'].colors}
    assert len(tab10 & colours) >= 8  # points (and legend) of the ten digit classes


def test_second_run_reads_the_cache_and_a_changed_checkpoint_invalidates_it(digits_run):
    """Both later runs use two processes: rank 0 decides for all whether to extract, and the
    sharded extraction gives the single process's features."""
    cwd, _, last, first = digits_run
    again = check_ok(run_script('main_retrieval.py', '--ckpt', last, '--knn_k', '200', '10', '--knn_t', '0.1',
                                '--num_workers', '0', cwd=cwd, torchrun=True))
    assert 'features read from' in again.stdout and 'extracted 1437' not in again.stdout
    before, now = printed_knn(first.stdout), printed_knn(again.stdout)
    assert set(now) == {(200, 0.1), (10, 0.1)} and all(now[k] == before[k] for k in now)

    folder = last.parent / FEATURES
    single = {n: load(folder / f'{n}.pth') for n in ('train_features', 'val_features', 'val_labels')}
    stat = os.stat(last)  # last.pth rewritten by a later epoch: same path, new time
    os.utime(last, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    third = check_ok(run_script('main_retrieval.py', '--ckpt', last, '--knn_k', '200', '--knn_t', '0.1',
                                '--num_workers', '0', '--batch_size', '128', cwd=cwd, torchrun=True))
    assert 'another checkpoint file or other data' in third.stdout and 'extracted 1437 bank' in third.stdout
    assert all(torch.allclose(load(folder / f'{n}.pth'), t, atol=1e-5) for n, t in single.items())


def test_retrieval_bad_input_is_one_line(tmp_path, monkeypatch):
    assert_user_error(run_script('main_retrieval.py', '--ckpt', tmp_path / 'nope.pth', cwd=tmp_path),
                      tmp_path, 'nope.pth', 'does not exist')
    parse_option = importlib.import_module('main_retrieval').parse_option
    for argv, message in ((['--tsne', 'out.txt'], '--tsne out.txt: name a figure file ending in .png'),
                          (['--knn_k', '10', '0'], '--knn_k 0: must be > 0')):
        monkeypatch.setattr('sys.argv', ['main_retrieval.py', '--ckpt', 'x.pth', *argv])
        with pytest.raises(util.UserError, match=re.escape(message)):
            parse_option()


# ----------------------------------------------------------------------------- exports

def fake_checkpoint(path, model='resnet18', stem='imagenet', width=64, classifier=None):
    """A checkpoint in our format around a random SupConResNet whose BatchNorm statistics are
    random too (fresh ones are 0/1 and would hide a mix-up of mean and variance)."""
    torch.manual_seed(0)
    net = SupConResNet(model, stem=stem, width=width)
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)
    state = net.state_dict()
    if classifier is not None:
        state.update({'classifier.fc.weight': classifier[0], 'classifier.fc.bias': classifier[1]})
    args = {'model': model, 'stem': stem, 'width': width, 'size': 32, 'dataset': 'digits', 'run_name': 'fake'}
    torch.save({'method': 'SupCon', 'args': args, 'epoch': 3, 'model': state}, path)
    return net.encoder.eval()


def test_torchvision_export_loads_strict_and_gives_our_features(tmp_path, monkeypatch):
    ours = fake_checkpoint(tmp_path / 'ckpt.pth')
    monkeypatch.setattr('sys.argv', ['export_trunk.py', '--ckpt', str(tmp_path / 'ckpt.pth'), '--format',
                                     'torchvision', '--out', str(tmp_path / 'out' / 'resnet18.pth')])
    script_module('export_trunk').main()
    exported = load(tmp_path / 'out' / 'resnet18.pth')
    theirs = torchvision.models.resnet18()
    theirs.load_state_dict(exported, strict=True)
    assert not exported['fc.weight'].any()  # no classifier in a pretraining checkpoint: a zero fc
    theirs.fc = nn.Identity()
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(theirs.eval()(x), ours(x), atol=1e-5)
    assert not [p for p in (tmp_path / 'out').iterdir() if '.tmp' in p.name]


def test_torchvision_export_keeps_a_linear_probe(tmp_path):
    fc = torch.randn(10, 512), torch.randn(10)
    ours = fake_checkpoint(tmp_path / 'probe.pth', classifier=fc)
    exported = script_module('export_trunk').to_torchvision(load(tmp_path / 'probe.pth'))
    theirs = torchvision.models.resnet18(num_classes=10)
    theirs.load_state_dict(exported, strict=True)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(theirs.eval()(x), ours(x) @ fc[0].T + fc[1], atol=1e-4)


def test_export_refuses_what_the_target_cannot_represent(tmp_path, monkeypatch):
    export = script_module('export_trunk')
    fake_checkpoint(tmp_path / 'cifar.pth', stem='cifar', width=8)
    out = tmp_path / 'x.pkl'
    monkeypatch.setattr('sys.argv', ['export_trunk.py', '--ckpt', str(tmp_path / 'cifar.pth'), '--format',
                                     'detectron2', '--out', str(out)])
    with pytest.raises(util.UserError, match='cifar stem .* detectron2'):
        export.main()
    assert not out.exists()
    fake_checkpoint(tmp_path / 'narrow.pth', stem='imagenet', width=32)
    with pytest.raises(util.UserError, match='--width 32'):
        export.to_torchvision(load(tmp_path / 'narrow.pth'))


def test_detectron2_export_names_and_shapes(tmp_path, monkeypatch, capsys):
    ours = fake_checkpoint(tmp_path / 'ckpt.pth')
    monkeypatch.setattr('sys.argv', ['export_trunk.py', '--ckpt', str(tmp_path / 'ckpt.pth'), '--format',
                                     'detectron2', '--out', str(tmp_path / 'r18.pkl')])
    script_module('export_trunk').main()
    with open(tmp_path / 'r18.pkl', 'rb') as f:
        exported = pickle.load(f)
    assert exported['matching_heuristics'] is True and isinstance(exported['__author__'], str)
    model = exported['model']
    expected_shapes = {
        'stem.conv1.weight': (64, 3, 7, 7), 'stem.conv1.norm.running_var': (64,),
        'res2.0.conv1.weight': (64, 64, 3, 3), 'res2.1.conv2.norm.bias': (64,),
        'res3.0.shortcut.weight': (128, 64, 1, 1), 'res3.0.shortcut.norm.running_mean': (128,),
        'res5.1.conv2.weight': (512, 512, 3, 3), 'res5.0.conv1.norm.weight': (512,)}
    assert {k: model[k].shape for k in expected_shapes} == expected_shapes
    assert all(isinstance(v, np.ndarray) for v in model.values())
    assert all(k.startswith(('stem.conv1.', 'res2.', 'res3.', 'res4.', 'res5.')) for k in model)
    assert not [k for k in model if re.search(r'layer|bn\d|downsample|num_batches|fc', k)]
    ours_state = {k: v for k, v in ours.state_dict().items() if not k.endswith('num_batches_tracked')}
    assert len(model) == len(ours_state)
    np.testing.assert_array_equal(model['res4.1.conv2.norm.running_var'], ours_state['layer3.1.bn2.running_var'].numpy())
    assert f'{len(model)} tensors' in capsys.readouterr().out


def test_detectron2_names_of_a_bottleneck_trunk():
    name = script_module('export_trunk').detectron2_name
    keys = build_trunk('resnet50', stem='imagenet').state_dict().keys()
    mapped = {k: name(k) for k in keys}
    assert len(set(mapped.values())) == len(keys)
    assert mapped['bn1.weight'] == 'stem.conv1.norm.weight'
    assert mapped['layer1.0.bn3.weight'] == 'res2.0.conv3.norm.weight'
    assert mapped['layer1.0.downsample.1.running_mean'] == 'res2.0.shortcut.norm.running_mean'
    assert mapped['layer4.2.conv3.weight'] == 'res5.2.conv3.weight'


# ----------------------------------------------------------------------------- summarize.py

def test_summarize_table_and_curves(digits_run, monkeypatch, capsys):
    cwd, supcon_out, last, _ = digits_run
    monkeypatch.setattr('sys.argv', ['summarize.py', str(cwd / 'save')])
    script_module('summarize').main()
    out = capsys.readouterr().out
    rows = [line.split(' | ') for line in out.splitlines() if line.startswith(f'| {DIGITS_RUN} |')]
    assert len(rows) == 1, out  # the linear run is a column, not a row
    _, method, model, dataset, epochs, batch, loss, knn, r1, linear, published = [c.strip(' |') for c in rows[0]]
    assert (method, model, dataset, epochs, batch, published) == ('SupCon', 'resnet18', 'digits', '1/1', '64', '—')
    monitor = float(re.search(r'^epoch 1, kNN accuracy ([\d.]+)$', supcon_out, re.M).group(1))
    loss_printed = float(re.search(r'^epoch 1, total time [\d.]+, loss ([\d.]+)', supcon_out, re.M).group(1))
    assert float(knn) == pytest.approx(monitor, abs=0.01) and float(loss) == pytest.approx(loss_printed, abs=0.01)
    probe = load(only_file(cwd / 'save' / 'Linear'))
    assert float(linear) == pytest.approx(probe['best_acc'], abs=0.01)
    results = json.loads((last.parent / FEATURES / 'retrieval.json').read_text())
    assert float(r1) == pytest.approx(results['recall']['R@1'], abs=0.01)
    pngs = sorted(p.name for p in (cwd / 'save' / 'curves').iterdir())
    assert len(pngs) == 2 and f'{DIGITS_RUN}.png' in pngs  # the pretraining run and its linear run
    with Image.open(cwd / 'save' / 'curves' / f'{DIGITS_RUN}.png') as img:
        assert img.format == 'PNG' and img.width > 3 * img.height  # loss, lr, kNN side by side


def test_summarize_matches_published_configurations():
    published = script_module('summarize').published
    simclr = {'model': 'resnet50', 'dataset': 'cifar10', 'epochs': 1000, 'width': 64}
    assert published('SimCLR', simclr) == (93.6, 'SupContrast README')
    assert published('SupCon', {**simclr, 'dataset': 'cifar100'})[0] == 76.5
    assert published('SimCLR', {**simclr, 'epochs': 10}) is None
    assert published('SimCLR', {**simclr, 'width': 16}) is None
    clsa = {'model': 'resnet50', 'dataset': 'imagenet', 'epochs': 200, 'width': 64}
    assert published('CLSA', {**clsa, 'size_crops': [224, 96]})[0] == 69.4
    assert published('CLSA', {**clsa, 'size_crops': [224, 192, 160, 128, 96]})[0] == 73.3
