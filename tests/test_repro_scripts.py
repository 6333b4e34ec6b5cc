"""The reproduction scripts: every command parses with the script it calls, and each linear
stage evaluates the checkpoint its pretraining stage writes."""
import glob
import importlib
import os
import shlex
import subprocess
import sys

import pytest

from conftest import REPO

# the scripts that launch training stages (through common.sh's launch); not setup.sh or test.sh,
# which install and run the test suite (a dry run of test.sh would start the suite inside itself)
SCRIPTS = sorted(p for p in glob.glob(os.path.join(REPO, 'scripts', '*.sh'))
                 if not p.endswith('common.sh') and '/common.sh"' in open(p).read())


def commands(script, **env):
    out = subprocess.run(['bash', script], env={**os.environ, 'DRY_RUN': '1', 'SRUN': '0', **env},
                         capture_output=True, text=True, check=True).stdout
    return [shlex.split(line) for line in out.splitlines() if line.strip()]


def parse(argv, monkeypatch, pretrained=None):
    """Run the script's parse_option() on argv; main_linear gets a stand-in for its checkpoint."""
    module = importlib.import_module(argv[0][:-3])
    if pretrained is not None:
        fake = {'method': 'SupCon', 'epoch': 1, 'model': {},
                'args': {'model': pretrained.model, 'stem': pretrained.stem, 'width': pretrained.width,
                         'size': pretrained.size, 'run_name': pretrained.run_name}}
        monkeypatch.setattr(module.checkpoints, 'load_checkpoint', lambda path, what='--ckpt': fake)
    monkeypatch.setattr(sys, 'argv', argv)
    return module.parse_option()


def test_there_is_a_script_per_table_row():
    names = {os.path.basename(p) for p in SCRIPTS}
    for ds in ('cifar10', 'cifar100'):
        assert {f'supcon_{ds}.sh', f'simclr_{ds}.sh', f'ce_{ds}.sh'} <= names
    assert {'supcon_animals10_resnet18.sh', 'supcon_animals10_resnet34.sh', 'quickstart.sh'} <= names


@pytest.mark.parametrize('script', SCRIPTS, ids=os.path.basename)
def test_commands_parse_and_chain(script, monkeypatch):
    monkeypatch.chdir(REPO)
    pretrained = trained = None
    for cmd in commands(script):
        assert cmd[0] == 'python' and cmd[1].startswith('main_'), cmd
        # linear, fine-tuning and retrieval stages evaluate the trunk a pretraining stage writes
        reads = ('ckpt' if cmd[1] in ('main_linear.py', 'main_retrieval.py') else
                 'pretrained' if '--pretrained' in cmd else None)
        if reads is None:
            pretrained = parse(cmd[1:], monkeypatch)
            continue
        assert pretrained is not None, f'a {cmd[1]} stage needs a pretraining stage before it'
        args = parse(cmd[1:], monkeypatch, pretrained)
        written = {os.path.join(pretrained.save_folder, 'last.pth'),
                   os.path.join(pretrained.save_folder, f'ckpt_epoch_{pretrained.epochs}.pth')}
        assert os.path.normpath(getattr(args, reads)) in {os.path.normpath(p) for p in written}
        assert args.model == pretrained.model
        if '--test' in cmd:  # tests the run the stage before trained: same options, same folder
            assert trained is not None and args.save_folder == trained.save_folder
        trained = args


def test_ngpu_launches_through_torchrun():
    cmds = commands(os.path.join(REPO, 'scripts', 'supcon_cifar10.sh'), NGPU='4', DATA='/data/cifar')
    assert all(c[:3] == ['torchrun', '--nproc_per_node', '4'] for c in cmds)
    assert all(c[c.index('--data_folder') + 1] == '/data/cifar' for c in cmds)


def test_slurm_jobs_launch_through_srun():
    cmds = commands(os.path.join(REPO, 'scripts', 'sce_imagenet_200ep.sh'), SLURM_JOB_ID='42', SRUN='1')
    assert all(c[:3] == ['srun', '--kill-on-bad-exit=1', 'python'] for c in cmds)
    cmds = commands(os.path.join(REPO, 'scripts', 'sce_imagenet_200ep.sh'), SLURM_JOB_ID='42', SRUN='0', NGPU='8')
    assert all(c[:3] == ['torchrun', '--nproc_per_node', '8'] for c in cmds)


@pytest.mark.parametrize('script', ['moco_coco_200ep.sh', 'moco_coco_800ep.sh', 'ours_coco_200ep.sh',
                                    'ours_coco_800ep.sh'])
def test_coco_runs_keep_the_released_batchnorm_groups(script, monkeypatch):
    """Revisiting's COCO runs: 2 GPUs x 128 images. One process splits BatchNorm into those 2 groups
    (not the default 8 of 32); 2 processes shuffle keys across them, as released."""
    monkeypatch.chdir(REPO)
    path = os.path.join(REPO, 'scripts', script)
    for env, launcher in (({}, ['python']), ({'SLURM_JOB_ID': '42', 'SRUN': '1', 'SLURM_NTASKS': '1'},
                                             ['srun', '--kill-on-bad-exit=1', 'python'])):
        pretrain = commands(path, **env)[0]
        assert pretrain[:len(launcher)] == launcher
        assert parse(pretrain[len(launcher):], monkeypatch).bn_splits == 2
    for env in ({'NGPU': '2'}, {'SLURM_JOB_ID': '42', 'SRUN': '1', 'SLURM_NTASKS': '2'}):
        pretrain = commands(path, **env)[0]
        assert '--bn_splits' not in pretrain and '--batch-size' in pretrain, pretrain


@pytest.mark.parametrize('rho', ['2', '4'])
def test_rho_moco_recipe_keeps_the_pyslowfast_settings(rho, monkeypatch):
    """MoCo_SlowR50_8x8.yaml: rho clips of 8 frames x 8 (2.13 s at 30 fps), batch 64, lr 0.1, T 0.1,
    momentum 0.994 annealed, queue 65536; one process splits BatchNorm as the 8 GPUs do, 8 shuffle."""
    monkeypatch.chdir(REPO)
    path = os.path.join(REPO, 'scripts', 'rho_moco_k400_r3d50.sh')
    pretrain = commands(path, RHO=rho)[0]
    args = parse(pretrain[1:], monkeypatch)
    assert (args.model, args.dataset, args.num_clips, args.num_frames, args.clip_duration, args.size) == \
        ('r3d50', 'kinetics', int(rho), 8, 2.13, 224)
    assert (args.batch_size, args.learning_rate, args.weight_decay, args.epochs, args.cosine) == (64, 0.1, 1e-4, 200, True)
    assert (args.moco_t, args.moco_m, args.moco_m_cos, args.moco_k, args.moco_dim, args.mlp) == \
        (0.1, 0.994, True, 65536, 128, True)
    assert args.bn_splits == 8 and args.save_folder.endswith(f'rho{rho}_moco_k400_r3d50')
    assert '--bn_splits' not in commands(path, RHO=rho, NGPU='8')[0]


def test_rho_simclr_recipe_keeps_the_pyslowfast_settings(monkeypatch):
    """SimCLR_SlowR50_8x8.yaml: 2 clips, batch 64, LARS lr 1.2, weight decay 1e-6, T 0.1, sync-BN."""
    monkeypatch.chdir(REPO)
    pretrain = commands(os.path.join(REPO, 'scripts', 'rho_simclr_k400_r3d50.sh'))[0]
    args = parse(pretrain[1:], monkeypatch)
    assert (args.method, args.model, args.num_clips, args.num_frames, args.clip_duration) == \
        ('SimCLR', 'r3d50', 2, 8, 2.13)
    assert (args.batch_size, args.learning_rate, args.optimizer, args.weight_decay, args.temp, args.feat_dim) == \
        (64, 1.2, 'lars', 1e-6, 0.1, 128)
    assert args.cosine and args.syncBN and args.epochs == 200
