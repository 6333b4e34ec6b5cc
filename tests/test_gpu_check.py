"""scripts/gpu_check.py --cpu: every training script for 3 steps in float32 and bf16 on tiny data it
makes itself, one table, exit 0; so the GPU check's rows cannot rot without a GPU."""
import os
import subprocess
import sys

from conftest import REPO

ROWS = ['supcon', 'supcon_jpeg_folder', 'simclr', 'ce', 'linear', 'moco_multicrop_knn', 'moco_revisiting', 'sce',
        'sce_video', 'simclr_video', 'moco_video', 'clsa']


def test_gpu_check_cpu_mode_runs_every_script(tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS='1', CUDA_VISIBLE_DEVICES='', TMPDIR=str(tmp_path))
    proc = subprocess.run([sys.executable, os.path.join(REPO, 'scripts', 'gpu_check.py'), '--cpu'], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    table = proc.stdout[proc.stdout.rindex('\nrow '):]
    for row in ROWS:
        for amp in ('none', 'bf16'):
            assert any(line.split()[:2] == [row, amp] and line.endswith('pass') for line in table.splitlines()), (row, amp)
    assert table.strip().endswith('all passed')
    assert not os.path.exists(tmp_path / 'save')  # --max_steps writes nothing where it runs


def test_a_failing_row_fails_the_check():
    sys.path.insert(0, os.path.join(REPO, 'scripts'))
    import gpu_check
    line, ok = gpu_check.table_line('sce', 'bf16', 'error: something', 1.0)
    assert not ok and 'FAIL error: something' in line
