"""The options rule, walked over every option of every script: given with a value other than its
default, an option either ends the run with the one-line error (exit 2), or takes effect: it
changes what parse_option() derives, or the run reads it after parsing (tracked over a real tiny
run, in this process). An option that does none of these is ignored, and fails the test.

Also: --help shows real defaults, and each defect the consolidation fixed, reproduced."""
import argparse
import importlib
import sys

import pytest

import options
import util
from conftest import SMALL, assert_user_error, make_image_folder, run_script

# Options that take effect in a way this walk cannot see, and why.
EXEMPT = {
    'help': 'prints the help',
    'resume': 'tests/test_resume.py and each method\'s resume test',
    'dist_url': "the rendezvous of --multiprocessing-distributed (which relaunches under torchrun); the released "
                "commands also pass it to one-process runs, which need none",
    'syncBN': 'one process: a note says it has no effect (the released one-GPU commands pass it); '
              'tests/test_distributed.py checks it with two',
    'multiprocessing_distributed': 'relaunches under torchrun with one process per GPU; a CPU run refuses it',
    'test': 'tests the best/last checkpoint of a finished run (tests/test_video_scripts.py)',
    'gpu_aug': 'tests/test_speed_paths.py',
    'amp': 'tests/test_speed_paths.py (fp16/bf16 runs)',
}
# Values for options whose default is None (or where +1 is not a valid change).
VALUES = {'seed': '1', 'mean': '(0.5,0.5,0.5)', 'std': '(0.2,0.2,0.2)', 'lr_decay_epochs': '1',
          'test_folder': '{test}', 'data_folder': '{train}', 'save_root': 'elsewhere', 'output_dir': 'out',
          'trial': 'x', 'pretrained': '{ckpt}', 'tsne': 'tsne.png', 'features_dir': 'features', 'data': '{train}',
          'split_dir': 'splits', 'train_list': 'train.csv', 'val_list': 'val.csv', 'gpu': '0', 'schedule': '1',
          'max_steps': '4', 'size': '24', 'model': 'resnet34', 'batch_size_val': '4', 'knn_freq': '1', 'warmup_epochs': '1', 'size_crops': '32',
          'min_scale_crops': '0.3', 'max_scale_crops': '0.9', 'nmb_crops': '2', 'pick_weak': '0', 'pick_strong': '0',
          'stem': 'imagenet', 'num_classes': '3', 'dropout': '0.5', 'crop_min_scale': '0.5', 'frame_rate': '25',
          'num_frames': '4', 'lr_per_256': '0.2', 'learning_rate': '0.02', 'aux_topk': '3', 'moco_k': '48',
          'queue_size': '48', 'batch_size': '16', 'lr_decay_rate': '0.5', 'weight_decay': '0.001', 'temp': '0.2',
          'temp_m': '0.1', 'coeff': '0.7', 'initial_momentum': '0.9', 'proj_hidden': '64', 'proj_dim': '32',
          'pred_hidden': '64', 'pred_layers': '2', 'proj_layers': '3', 'ckpt': '{ckpt}', 'tsne_samples': '5', 'epochs': '2', 'knn_k': '5', 'recall_k': '1', 'knn_t': '0.2'}

PATH = ['--dataset', 'path', '--data_folder', '{train}', '--test_folder', '{test}']
BASE = {
    'main_supcon': PATH + SMALL + ['--batch_size', '8', '--epochs', '1'],
    'main_ce': PATH + SMALL + ['--batch_size', '8', '--epochs', '1'],
    'main_linear': PATH + ['--ckpt', '{ckpt}', '--batch_size', '8', '--epochs', '1', '--num_workers', '0',
                           '--seed', '0'],
    'main_moco': PATH + SMALL + ['--batch_size', '8', '--epochs', '1', '--moco_k', '32'],
    'main_sce': PATH + SMALL + ['--batch_size', '8', '--epochs', '1', '--queue_size', '32', '--warmup_epochs', '0',
                                '--recipe', 'cifar', '--bn_splits', '4'],
    'main_clsa': PATH + SMALL + ['--batch_size', '8', '--epochs', '1', '--moco_k', '32', '--nmb_crops', '1', '1',
                                 '--size_crops', '32', '16', '--min_scale_crops', '0.2', '0.1', '--max_scale_crops',
                                 '1', '0.5'],
    'main_svm': ['--ckpt', '{ckpt}', '--data_folder', '{voc}', '--size', '32', '--num_workers', '0'],
    'main_transfer': ['--ckpt', '{ckpt}', '--datasets', 'folder', '--data_folder', '{folder}', '--size', '32',
                      '--num_workers', '0'],
    'main_retrieval': ['--ckpt', '{ckpt}', '--dataset', 'path', '--data_folder', '{train}', '--test_folder', '{test}',
                       '--num_workers', '0', '--knn_k', '3', '--recall_k', '1', '2'],
}


class Tracked(argparse.Namespace):
    """Options that record which of them the run reads."""
    reads = set()

    def __getattribute__(self, name):
        if not name.startswith('_'):
            Tracked.reads.add(name)
        return super().__getattribute__(name)


def argv_of(script, data, extra=()):
    return [f'{script}.py', *[a.format(**data) for a in BASE[script]], *[a.format(**data) for a in extra]]


def parse(script, argv, monkeypatch):
    """(args, None) or (None, the UserError)."""
    module = importlib.import_module(script)
    monkeypatch.setattr(sys, 'argv', argv)
    try:
        return module.parse_option(), None
    except util.UserError as e:
        return None, e


def tracked_run(script, argv, monkeypatch, tmp_path):
    """The options the whole run reads after parse_option() returned (or None: it ended in a UserError)."""
    module = importlib.import_module(script)
    parse_option = module.parse_option
    monkeypatch.setattr(module, 'parse_option', lambda: Tracked(**vars(parse_option())))
    monkeypatch.setattr(sys, 'argv', argv)
    tmp_path.mkdir(parents=True, exist_ok=True)
    monkeypatch.chdir(tmp_path)
    Tracked.reads = set()
    try:
        module.main()
    except (util.UserError, util.StepLimitReached):
        pass
    finally:
        monkeypatch.setattr(module, 'parse_option', parse_option)
    return Tracked.reads


def changed_value(action):
    """Command-line words giving `action` a value other than its default (None: no such value)."""
    if not action.option_strings:  # a positional
        return [VALUES[action.dest]] if action.dest in VALUES else None
    flag = max(action.option_strings, key=len)
    if action.nargs == 0:
        if isinstance(action, argparse.BooleanOptionalAction):
            return [f'--no-{action.dest}' if action.default else f'--{action.dest}']
        return [flag] if action.default is False else None
    if action.dest in VALUES:
        return [flag, *VALUES[action.dest].split()]
    if action.choices:
        other = [c for c in action.choices if c != action.default]
        return [flag, str(other[0])] if other else None
    if isinstance(action.default, bool) or action.default is None:
        return None
    if isinstance(action.default, (int, float)):
        return [flag, str(action.default * 2 if action.default else 1)]
    if isinstance(action.default, list):
        return [flag, *[str(v) for v in action.default[:1]]]
    return [flag, 'x']


@pytest.fixture(scope='module')
def data(tmp_path_factory, tiny_ckpt):
    root = tmp_path_factory.mktemp('options')
    from test_svm_transfer import make_voc
    return dict(train=make_image_folder(root / 'train', 3, 8, seed=5), test=make_image_folder(root / 'test', 3, 4, seed=6),
                ckpt=tiny_ckpt, voc=make_voc(root / 'voc'), folder=root)


def script_parser(script, data, monkeypatch):
    """The parser the script's parse_option() builds, with every option it declares."""
    captured = {}
    real_parse = options.parse

    def capture(parser, preset=None):
        captured['parser'] = parser
        return real_parse(parser, preset)
    monkeypatch.setattr(options, 'parse', capture)
    parse(script, argv_of(script, data), monkeypatch)
    monkeypatch.setattr(options, 'parse', real_parse)
    return captured['parser']


@pytest.mark.parametrize('script', sorted(BASE))
def test_every_option_takes_effect_or_is_refused(script, data, monkeypatch, tmp_path):
    base, error = parse(script, argv_of(script, data), monkeypatch)
    assert error is None, error
    base = vars(base)
    parser_options = []
    for action in script_parser(script, data, monkeypatch)._actions:
        if action.dest in EXEMPT or action.dest == argparse.SUPPRESS:
            continue
        words = changed_value(action)
        assert words is not None, f'{script}: no value to try for --{action.dest}; add one to VALUES or EXEMPT'
        parser_options.append((action.dest, words))

    reads = tracked_run(script, argv_of(script, data), monkeypatch, tmp_path / 'base')
    assert reads, f'{script}: the tracked run read nothing'
    ignored = []
    for dest, words in parser_options:
        args, error = parse(script, argv_of(script, data, words), monkeypatch)
        if error is not None:
            continue  # refused, with its one line
        plain = lambda a: {k: v for k, v in a.items() if k != dest and not isinstance(v, dict)}  # not the checkpoint
        if plain(vars(args)) != plain(base):
            continue  # it changed what parse_option() derives
        if dest in reads:
            continue  # the run reads it
        if dest not in tracked_run(script, argv_of(script, data, words), monkeypatch, tmp_path / dest):
            ignored.append(' '.join(words))
    assert not ignored, f'{script} accepts and ignores: {ignored}'


@pytest.mark.parametrize('script, option', [('main_supcon', '--size'), ('main_supcon', '--knn_freq'),
                                            ('main_moco', '--bn_splits'), ('main_sce', '--bn_splits'),
                                            ('main_sce', '--size'), ('main_linear', '--learning_rate')])
def test_help_shows_real_defaults(script, option, tmp_path):
    proc = run_script(f'{script}.py', '--help', cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.split('\n')
    first = next(i for i, line in enumerate(lines) if line.strip().startswith(option + ' '))
    entry = [lines[first]] + [line for line in lines[first + 1:first + 6] if not line.strip().startswith('-')]
    entry = ' '.join(' '.join(entry).split())
    assert 'None' not in entry and 'default' in entry, entry


def test_sce_help_shows_the_recipe_defaults(tmp_path):
    text = ' '.join(run_script('main_sce.py', '--help', '--dataset', 'cifar10', cwd=tmp_path).stdout.split())
    assert '--queue_size QUEUE_SIZE keys in the queue (default: 4096)' in text
    text = ' '.join(run_script('main_sce.py', '--help', '--dataset', 'imagenet', cwd=tmp_path).stdout.split())
    assert '--queue_size QUEUE_SIZE keys in the queue (default: 65536)' in text


@pytest.mark.parametrize('script, words, needle', [
    # a node count or node rank without a launcher used to be accepted and ignored
    ('main_moco.py', ['--world-size', '2', '--rank', '1'], 'several nodes'),
    ('main_sce.py', ['--world_size', '2'], 'several nodes'),
    # milestones under a cosine
    ('main_moco.py', ['--cos', '--lr_decay_rate', '0.5'], '--lr_decay_rate'),
    ('main_moco.py', ['--cos', '--schedule', '120', '160'], '--schedule'),
    ('main_supcon.py', ['--cosine', '--lr_decay_epochs', '10,20'], '--lr_decay_epochs'),
    # the kNN loss's neighbours without the kNN loss
    ('main_moco.py', ['--aux-topk', '20'], '--aux_topk'),
    # shuffle-BN's split can no longer drop out silently
    ('main_moco.py', ['--batch_size', '12', '--moco_k', '48'], 'not divisible by --bn_splits 8'),
    ('main_sce.py', ['--recipe', 'imagenet', '--bn_splits', '4'], '--bn_splits'),
    # a positional folder and a different --data_folder
    ('main_moco.py', ['{train}'], '--data_folder'),
    # argparse's own errors are one line too
    ('main_supcon.py', ['--no-such-option'], 'unrecognized arguments'),
    ('main_linear.py', ['--syncBN'], 'no BatchNorm'),
])
def test_options_that_do_not_apply_are_refused(script, words, needle, data, tmp_path):
    base = [a.format(**data) for a in BASE[script[:-3]]]
    proc = run_script(script, *base, *[w.format(**data) for w in words], cwd=tmp_path)
    assert_user_error(proc, tmp_path, needle)


def test_released_launcher_flags_of_one_node_still_run(data, monkeypatch):
    # MoCo's and CLSA's commands say --world-size 1 --rank 0 --dist-url ... for one node
    for script in ('main_moco', 'main_clsa'):
        args, error = parse(script, argv_of(script, data, ['--world-size', '1', '--rank', '0', '--dist-url',
                                                           'tcp://localhost:10001']), monkeypatch)
        assert error is None and args.nodes == 1


def bad_values(action):
    """Values outside the option's range, per options.POSITIVE / FRACTION / BELOW_ONE."""
    name = action.dest
    bad = ['0', '-1'] if name in options.POSITIVE else ['1.5', '-0.1'] if name in options.FRACTION | options.BELOW_ONE \
        else ['-1']
    return bad + (['nan', 'inf'] if action.type is float else [])


@pytest.mark.parametrize('script', sorted(BASE))
def test_every_numeric_option_out_of_range_is_one_line(script, data, monkeypatch):
    numeric = [a for a in script_parser(script, data, monkeypatch)._actions
               if a.type in (int, float) and a.option_strings]
    assert numeric, script
    accepted = []
    for action in numeric:
        flag = max(action.option_strings, key=len)
        for value in bad_values(action):
            args, error = parse(script, argv_of(script, data, [flag, value]), monkeypatch)
            # the range check's line, or argparse's own for an option with choices
            if error is None or not any(str(error).startswith(f'{f} ') or f'argument {f}' in str(error)
                                        for f in action.option_strings):
                accepted.append(f'{flag} {value}: {error}')
    assert not accepted, f'{script}: out-of-range values not refused by the range check: {accepted}'


@pytest.mark.parametrize('trial', ['../../elsewhere', 'a/b', '..'])
def test_trial_is_not_a_path(trial, data, monkeypatch):
    _, error = parse('main_supcon', argv_of('main_supcon', data, ['--trial', trial]), monkeypatch)
    assert error is not None and str(error).startswith('--trial'), error
