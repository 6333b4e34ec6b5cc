"""No run loses another run's work, and pre-emption is safe: the run-folder lock, an earlier run
refused without --resume or --overwrite, stale temporary files removed, SIGTERM at random moments
then --resume (same final weights as an uninterrupted run), a full disk, a requeued SLURM job."""
import os
import random
import resource
import signal
import subprocess
import sys
import time

import pytest
import torch

import checkpoints
from conftest import REPO, SMALL, check_ok, load, make_image_folder, only_file, run_script

EPOCHS = 4


@pytest.fixture(scope='module')
def folder(tmp_path_factory):
    return make_image_folder(tmp_path_factory.mktemp('runfolder') / 'train', 3, 8, seed=11)


def supcon(folder, *extra):
    return ['--dataset', 'path', '--data_folder', folder, *SMALL, '--batch_size', '8', '--epochs', str(EPOCHS),
            '--knn_freq', '0', '--seed', '0', '--save_freq', '1', '--print_freq', '1', *extra]


def run_folder(cwd):
    return os.path.dirname(only_file(cwd / 'save'))


def test_an_earlier_run_is_neither_overwritten_nor_mixed(folder, tmp_path):
    check_ok(run_script('main_supcon.py', *supcon(folder, '--epochs', '1'), cwd=tmp_path))
    run = run_folder(tmp_path)
    before = open(os.path.join(run, 'last.pth'), 'rb').read()
    proc = run_script('main_supcon.py', *supcon(folder, '--epochs', '1'), cwd=tmp_path)
    assert proc.returncode == 2 and 'already holds a run' in proc.stderr and '--resume' in proc.stderr, proc.stderr
    assert len(proc.stderr.splitlines()) == 1
    assert open(os.path.join(run, 'last.pth'), 'rb').read() == before
    # --overwrite replaces the earlier run whole: none of its epoch checkpoints stays beside the new ones
    open(os.path.join(run, 'ckpt_epoch_7.pth'), 'wb').write(b'an earlier run')
    proc = check_ok(run_script('main_supcon.py', *supcon(folder, '--epochs', '1', '--overwrite'), cwd=tmp_path))
    assert 'removed the earlier run' in proc.stdout
    assert sorted(n for n in os.listdir(run) if n.endswith('.pth')) == ['ckpt_epoch_1.pth', 'last.pth']


def test_a_second_run_into_a_locked_folder_is_refused(folder, tmp_path):
    check_ok(run_script('main_supcon.py', *supcon(folder, '--epochs', '1'), cwd=tmp_path))
    run = run_folder(tmp_path)
    # this process holds the folder as a running run would
    args = type('Args', (), {'save_folder': run, 'tb_folder': run + '_tb', 'overwrite': False})()
    checkpoints.claim_run_folder(args, resuming=True)
    try:
        proc = run_script('main_supcon.py', *supcon(folder, '--epochs', '2', '--resume', 'auto'), cwd=tmp_path)
        lines = proc.stderr.splitlines()
        assert proc.returncode == 2 and len(lines) == 1 and 'Traceback' not in proc.stderr, proc.stderr
        assert 'in use by another run' in lines[0] and f'pid {os.getpid()}' in lines[0], lines
    finally:
        os.close(checkpoints._held_locks.pop(os.path.realpath(run)))
    check_ok(run_script('main_supcon.py', *supcon(folder, '--epochs', '2', '--resume', 'auto'), cwd=tmp_path))


def test_temporary_files_of_interrupted_saves_are_removed(folder, tmp_path):
    check_ok(run_script('main_supcon.py', *supcon(folder, '--epochs', '1'), cwd=tmp_path))
    run = run_folder(tmp_path)
    stale = os.path.join(run, 'last.pth.tmp4242')
    open(stale, 'wb').write(b'half a checkpoint')
    proc = check_ok(run_script('main_supcon.py', *supcon(folder, '--epochs', '2', '--resume', 'auto'), cwd=tmp_path))
    assert not os.path.exists(stale) and 'interrupted save' in proc.stdout


def test_sigterm_at_random_moments_then_resume_ends_as_an_uninterrupted_run(folder, tmp_path):
    full = tmp_path / 'full'
    epochs = ['--epochs', '12']  # 36 steps: time for several interruptions
    check_ok(run_script('main_supcon.py', *supcon(folder, *epochs), cwd=full))
    want = load(only_file(full / 'save'))

    cwd = tmp_path / 'stopped'
    cwd.mkdir()
    env = dict(os.environ, OMP_NUM_THREADS='1', CUDA_VISIBLE_DEVICES='')
    rng = random.Random(0)
    statuses = []
    for attempt in range(6):
        resume = ['--resume', 'auto'] if (cwd / 'save').exists() else []
        proc = subprocess.Popen([sys.executable, os.path.join(REPO, 'main_supcon.py'),
                                 *supcon(folder, *epochs, *resume)],
                                cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        target, steps = rng.randint(1, 12), 0  # after a random training step (the handlers are in place) ...
        for line in proc.stdout:
            steps += line.startswith('Train: [')
            if steps == target:
                break
        time.sleep(rng.uniform(0, 0.3))  # ... and a random moment after it: a step, or an epoch's save
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=120)
        statuses.append(proc.returncode)
        # -SIGTERM: the signal came while the interpreter was shutting down after a finished run, when
        # Python has already restored the default handlers
        assert proc.returncode in (0, 128 + signal.SIGTERM, -signal.SIGTERM), err
        if proc.returncode == 128 + signal.SIGTERM:
            assert 'stopped by SIGTERM' in err and 'Traceback' not in err, err
        elif proc.returncode == 0:
            break
    assert 128 + signal.SIGTERM in statuses, statuses
    if statuses[-1]:
        check_ok(run_script('main_supcon.py', *supcon(folder, '--resume', 'auto'), cwd=cwd))
    run = run_folder(cwd)
    assert not [n for n in os.listdir(run) if '.tmp' in n]
    got = load(os.path.join(run, 'last.pth'))
    assert got['epoch'] == want['epoch'] == 12
    for key, value in want['model'].items():
        assert torch.equal(got['model'][key], value), key


def test_a_full_disk_ends_in_one_line_and_keeps_the_last_checkpoint(folder, tmp_path):
    check_ok(run_script('main_supcon.py', *supcon(folder, '--epochs', '1'), cwd=tmp_path))
    run = run_folder(tmp_path)
    before = open(os.path.join(run, 'last.pth'), 'rb').read()

    def small_disk():  # files may grow to 64 KiB: enough for logs, not for a checkpoint
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 16, 1 << 16))
    cmd = [sys.executable, os.path.join(REPO, 'main_supcon.py'), *supcon(folder, '--epochs', '2', '--resume', 'auto')]
    proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, preexec_fn=small_disk, timeout=300,
                          env=dict(os.environ, OMP_NUM_THREADS='1', CUDA_VISIBLE_DEVICES=''))
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith('error: cannot write ') and 'disk full?' in lines[0], proc.stderr
    assert open(os.path.join(run, 'last.pth'), 'rb').read() == before
    assert not [n for n in os.listdir(run) if '.tmp' in n]


def test_a_requeued_slurm_job_resumes_and_a_finished_run_has_nothing_to_do(folder, tmp_path):
    check_ok(run_script('main_supcon.py', *supcon(folder, '--epochs', '1'), cwd=tmp_path))
    proc = check_ok(run_script('main_supcon.py', *supcon(folder, '--epochs', '2'), cwd=tmp_path,
                               env={'SLURM_RESTART_COUNT': '1'}))
    assert 'SLURM requeued this job' in proc.stdout and 'resumed from' in proc.stdout
    assert load(only_file(tmp_path / 'save'))['epoch'] == 2
    proc = check_ok(run_script('main_supcon.py', *supcon(folder, '--epochs', '2', '--resume', 'auto'), cwd=tmp_path))
    assert 'nothing to do' in proc.stdout
