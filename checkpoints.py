"""Checkpoints: written atomically, loaded with a clear error, resumed with a method's extra state
(queue, momentum encoder) and RNG states, and the trunk of any checkpoint rebuilt from its options.

Every script writes the same dict, loadable with torch.load(..., weights_only=True):
{'method', 'args' (plain dict of the options), 'epoch', 'model' (state_dict; the trunk under
'encoder.'), 'optimizer', 'scaler', 'rng' (one state per process), extra state by name}."""
import atexit
import fcntl
import os
import random
import re
import socket

import numpy as np
import torch
import torch.distributed as dist

import checkpoint_layouts

from networks.resnet_big import build_trunk
from util import Stopped, UserError, is_main, stop_requested, unwrap, world_size


def plain_args(args):
    """The options as a plain dict of builtins, storable in a weights_only checkpoint."""
    def plain(v):
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        return v if v is None or isinstance(v, (bool, int, float, str)) else str(v)
    return {k: plain(v) for k, v in vars(args).items()}


def rng_state():
    np_state = np.random.get_state()
    return {'python': list(random.getstate()[1]), 'python_gauss': random.getstate()[2],
            'numpy': np_state[1].tolist(), 'numpy_pos': int(np_state[2]),
            'torch': torch.get_rng_state(),
            'cuda': torch.cuda.get_rng_state() if torch.cuda.is_available() else None}


def set_rng_state(state):
    random.setstate((3, tuple(state['python']), state['python_gauss']))
    np.random.set_state(('MT19937', np.array(state['numpy'], dtype=np.uint32), state['numpy_pos']))
    torch.set_rng_state(state['torch'])
    if state['cuda'] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state(state['cuda'])


# ----------------------------------------------------------------------------- writing

def save_checkpoint(path, *, method, args, epoch, model, optimizer, scaler=None, **extra):
    """Write the checkpoint dict atomically (temporary file, fsync, rename). Call on every rank:
    each contributes its RNG state; rank 0 writes. Returns the stop signal any rank received (0: none)."""
    rngs = [None] * world_size()
    if world_size() > 1:
        dist.all_gather_object(rngs, (rng_state(), stop_requested()))
        signalled = max(stop for _, stop in rngs)
        rngs = [rng for rng, _ in rngs]
    else:
        rngs, signalled = [rng_state()], stop_requested()
    if is_main():
        _write(path, method, args, epoch, model, optimizer, scaler, rngs, extra)
    return signalled


def _write(path, method, args, epoch, model, optimizer, scaler, rngs, extra):
    state = {'method': method, 'args': plain_args(args), 'epoch': epoch,
             'model': unwrap(model).state_dict(), 'optimizer': optimizer.state_dict(),
             'scaler': scaler.state_dict() if scaler is not None else None, 'rng': rngs, **extra}
    tmp = f'{path}.tmp{os.getpid()}'
    try:
        os.makedirs(os.path.dirname(path) or '.', exist_ok=True)
        with open(tmp, 'wb') as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())  # on disk before the rename makes it the checkpoint
        os.replace(tmp, path)
    except BaseException as e:  # disk full, interrupted: leave no half-written file behind
        if os.path.exists(tmp):
            os.remove(tmp)
        if isinstance(e, (OSError, RuntimeError)):  # torch reports a failed write as a RuntimeError
            reason = getattr(e, 'strerror', None) or str(e).strip().splitlines()[0]
            raise UserError(f'cannot write {path}: {reason} (disk full?); the previous checkpoint is kept') from e
        raise


def save_epoch(args, epoch, *, method, model, optimizer, scaler, state=None, best=False, **values):
    """last.pth after every epoch (what --resume reads), ckpt_epoch_N.pth every --save_freq, and
    best.pth when `best` (the best validation accuracy so far). `state`: the method's extra modules
    by name (queue, momentum encoder), restored by restore(); `values`: plain numbers (best_acc)."""
    weights = {name: t for name, t in unwrap(model).state_dict().items() if t.is_floating_point()}
    finite = torch.stack([torch.isfinite(t).all() for t in weights.values()]).tolist()  # one host sync
    bad = next((name for name, ok in zip(weights, finite) if not ok), None)
    if bad is not None:  # the loss may not show it yet (one step of a too high rate): keep the good checkpoint
        kept = f'{args.last_good} is kept' if args.last_good else 'no checkpoint was written'
        raise UserError(f'the weights became non-finite in epoch {epoch} ({bad}; learning rate too high?): nothing '
                        f'saved, {kept}')
    extra = {name: module.state_dict() for name, module in (state or {}).items() if module is not None}
    paths = [os.path.join(args.save_folder, 'last.pth')]
    if epoch % args.save_freq == 0:
        paths.append(os.path.join(args.save_folder, f'ckpt_epoch_{epoch}.pth'))
    if best:
        paths.append(os.path.join(args.save_folder, 'best.pth'))
    signalled = [save_checkpoint(path, method=method, args=args, epoch=epoch, model=model, optimizer=optimizer,
                                 scaler=scaler, **extra, **values) for path in paths]
    args.last_good = paths[0]
    if any(signalled):  # SIGTERM/SIGINT during the epoch, on any rank: the epoch is saved, all stop here
        raise Stopped(max(signalled))


# ----------------------------------------------------------------------------- reading

def load_checkpoint(path, what='--ckpt'):
    """Load one of our checkpoints on the CPU, or one in a layout the authors published (converted
    to ours by checkpoint_layouts), or raise a UserError saying what is wrong."""
    if os.path.isdir(path):
        raise UserError(f'{what} {path} is a folder, not a checkpoint (last.pth inside it, perhaps)')
    if not os.path.isfile(path):
        raise UserError(f'{what} {path} does not exist')
    try:
        ckpt = torch.load(path, map_location='cpu', weights_only=True)
    except Exception as e:  # any unreadable file is the user's to fix
        raise UserError(f'{what} {path} is not a checkpoint of this project ({type(e).__name__})')
    if not isinstance(ckpt, dict) or not {'method', 'args', 'model'} <= ckpt.keys():
        try:
            return checkpoint_layouts.convert(ckpt)
        except UserError as e:
            raise UserError(f'{what} {path} is not a checkpoint of this project, nor a published one: {e}')
    if not isinstance(ckpt['args'], dict) or not isinstance(ckpt['model'], dict) or 'model' not in ckpt['args']:
        raise UserError(f'{what} {path} lacks the options it was trained with (its args name no model); '
                        f'it was not written by this project\'s scripts')
    return ckpt


def load_state(module, state_dict, what):
    """load_state_dict that turns a shape or key mismatch into a UserError."""
    try:
        module.load_state_dict(state_dict)
    except RuntimeError as e:
        first = str(e).strip().splitlines()
        detail = first[1].strip() if len(first) > 1 else first[0]
        raise UserError(f'{what} does not fit the model: {detail}')


_held_locks = {}  # run folder -> its open, flock'ed descriptor: the lock lasts as long as the process


def claim_run_folder(args, resuming):
    """Before any work, on every rank: the run folder and its TensorBoard folder are writable,
    locked by this run for its whole life (a second run into it ends with one line naming the
    holder), cleared of temporary files that interrupted saves left, and hold no earlier run
    unless this one resumes it or --overwrite says to replace it."""
    error = _claim(args, resuming) if is_main() else None
    if world_size() > 1:
        shared = [error]
        dist.broadcast_object_list(shared, 0)
        error = shared[0]
    if error:
        raise UserError(error)


def _release(holder_file, me):
    try:
        if open(holder_file).read().strip() == me:
            os.remove(holder_file)
    except OSError:
        pass


def _claim(args, resuming):
    folder, overwrite = args.save_folder, args.overwrite
    if overwrite and args.resume:
        return '--overwrite replaces the run folder\'s earlier run and --resume continues it: give one of them'

    for path in (folder, args.tb_folder):
        try:
            os.makedirs(path, exist_ok=True)
        except OSError as e:
            return f'cannot write {e.filename or path}: {e.strerror}'
        if not os.access(path, os.W_OK | os.X_OK):
            return f'cannot write {path}: permission denied'
    # the lock is on the folder itself; .lock only names the holder, for the message, while it runs
    holder_file, me = os.path.join(folder, '.lock'), f'pid {os.getpid()} on {socket.gethostname()}'
    if os.path.realpath(folder) not in _held_locks:  # else a later run in this process (scripts/gpu_check.py)
        lock = os.open(folder, os.O_RDONLY)
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(lock)
            try:
                holder = open(holder_file).read().strip()
            except OSError:
                holder = 'unknown'
            return f'{folder} is in use by another run ({holder}): wait for it to end, or give this run another --trial'
        except OSError:  # a filesystem without locks: run unlocked rather than not at all
            print(f'note: {folder} cannot be locked on this filesystem; do not start two runs into it')
        with open(holder_file, 'w') as f:
            f.write(me + '\n')
        _held_locks[os.path.realpath(folder)] = lock
        atexit.register(_release, holder_file, me)
    for name in os.listdir(folder):  # we hold the lock: no one else is writing here
        if re.fullmatch(r'.+\.tmp\d+', name):
            os.remove(os.path.join(folder, name))
            print(f'note: removed {name}, left in {folder} by an interrupted save')
    if not resuming and os.path.isfile(os.path.join(folder, 'last.pth')):
        if not overwrite:
            return f'{folder} already holds a run (last.pth): continue it with --resume, keep it and give this ' \
                   f'run another --trial, or replace it with --overwrite'
        # replaced whole: no checkpoint or event file of the earlier run stays mixed with this one's
        old = [os.path.join(folder, n) for n in os.listdir(folder) if re.fullmatch(r'(last|best|ckpt_epoch_\d+)\.pth', n)]
        old += [os.path.join(args.tb_folder, n) for n in os.listdir(args.tb_folder) if n.startswith('events.out.')]
        for path in old:
            os.remove(path)
        print(f'note: --overwrite: removed the earlier run\'s {len(old)} checkpoint and event files from {folder}')
    return None


def resume_checkpoint(args):
    """The checkpoint --resume names (the run folder's last.pth without a path), or None. A SLURM
    job that was requeued (pre-empted, or a node failed) resumes its last.pth without being told."""
    if args.resume is None and int(os.environ.get('SLURM_RESTART_COUNT', 0)) > 0:
        args.resume = 'auto'
        if is_main():
            print(f'note: SLURM requeued this job (restart {os.environ["SLURM_RESTART_COUNT"]}): resuming')
    if args.resume is None:
        return None
    path = os.path.join(args.save_folder, 'last.pth') if args.resume == 'auto' else args.resume
    if args.resume == 'auto' and not os.path.isfile(path):
        if is_main():
            print(f'note: nothing to resume in {args.save_folder}, starting from scratch')
        return None
    ckpt = load_checkpoint(path, '--resume')
    ckpt['path'] = path
    return ckpt


# What --resume may change: how long, how often to print, save and monitor, where the data and the
# outputs are and what the run is called, and how fast (processes, workers, compiled or fused
# kernels). Every other option defines the run and must be the checkpoint's. Also left out: what
# distributed.start sets at run time.
RESUMABLE = {'epochs', 'print_freq', 'save_freq', 'num_workers', 'knn_freq', 'knn_k', 'knn_t', 'batch_size_val',
             'val_freq', 'data_folder', 'test_folder', 'data', 'save_root', 'output_dir', 'save_folder', 'tb_folder',
             'dist_url', 'dist_backend', 'multiprocessing_distributed', 'world_size', 'rank', 'nodes', 'node_rank',
             'gpu', 'max_steps', 'compile', 'channels_last', 'fused_optimizer', 'gpu_aug', 'download', 'resume',
             'overwrite', 'test', 'device', 'data_seed', 'last_good', 'seed', 'trial', 'run_name'}


def check_same_run(saved, args, what):
    """The options that define the run (all but RESUMABLE) as the checkpoint has them."""
    now = plain_args(args)
    for name in sorted(set(saved) & set(now) - RESUMABLE):
        if saved[name] != now[name]:
            raise UserError(f'{what} was trained with {name} {saved[name]}, this run has {now[name]}: resume with the '
                            f'same --{name}, or start a new run (another --trial)')


# Old checkpoints named the momentum encoder's state 'momentum'.
OLD_NAMES = {'momentum_encoder': 'momentum'}


def restore(ckpt, args, model, optimizer, scaler, method, state=None):
    """Load model, optimiser, scaler, the method's extra modules (`state`, by name, as given to
    save_epoch; None entries are absent from this run) and RNG states; returns the first epoch to
    run (without a checkpoint: 1, or after MoCo's --start_epoch). A checkpoint resumes only the
    method that wrote it, with the same extra state."""
    if ckpt is None:
        return getattr(args, 'start_epoch', 0) + 1
    what = f'--resume {ckpt["path"]}'
    if ckpt['method'] != method:
        raise UserError(f'{what} was written by a {ckpt["method"]} run; this is a {method} run: resume '
                        f'a checkpoint of the same method, or drop --resume')
    check_same_run(ckpt['args'], args, what)
    for name, module in (state or {}).items():
        saved = ckpt.get(name, ckpt.get(OLD_NAMES.get(name)))
        if (saved is None) != (module is None):
            have = 'has no' if saved is None else 'has a'
            raise UserError(f'{what} {have} {name}: resume a checkpoint trained with the same options')
        if module is not None:
            load_state(module, saved, f'{what} ({name})')
    load_state(unwrap(model), ckpt['model'], what)
    try:
        optimizer.load_state_dict(ckpt['optimizer'])
    except (KeyError, ValueError, RuntimeError) as e:  # e.g. SGD's state into LARS
        raise UserError(f'{what}: its optimiser state does not fit this run\'s optimiser ({type(e).__name__}: '
                        f'{str(e).splitlines()[0] if str(e) else "mismatch"}); resume with the options it was '
                        f'trained with')
    if scaler is not None and ckpt.get('scaler'):
        scaler.load_state_dict(ckpt['scaler'])
    rngs = ckpt.get('rng') or []
    if len(rngs) == world_size():
        set_rng_state(rngs[args.rank])
    if is_main():
        print(f'resumed from {ckpt["path"]} (epoch {ckpt["epoch"]})')
        if ckpt['epoch'] >= args.epochs:
            print(f'nothing to do: the run finished epoch {ckpt["epoch"]} and --epochs is {args.epochs}; '
                  f'give a larger --epochs to train on')
    return ckpt['epoch'] + 1


# ----------------------------------------------------------------------------- trunks

def take_trunk_options(args, ckpt, what, given):
    """Adopt the trunk options (model, stem, width) a checkpoint was trained with; one the user
    gave (`given`: the options on the command line) that contradicts them is an error."""
    for key in ('model', 'stem', 'width'):
        saved = ckpt['args'].get(key)
        if key in given and getattr(args, key) != saved:
            raise UserError(f'--{key} {getattr(args, key)} contradicts {what}, trained with {key} {saved}; '
                            f'drop --{key}')
        setattr(args, key, saved)


def trunk_state_dict(ckpt):
    """The trunk's weights of one of our checkpoints (keys under 'encoder.', prefix removed)."""
    state = {k[len('encoder.'):]: v for k, v in ckpt['model'].items() if k.startswith('encoder.')}
    if not state:
        raise UserError('the checkpoint holds no trunk (no "encoder." weights)')
    return state


def pretrained_trunk(ckpt, what):
    """Rebuild the trunk of any checkpoint this project writes from its own options."""
    a = ckpt['args']
    trunk = build_trunk(a['model'], stem=a['stem'], width=a['width'])
    load_state(trunk, trunk_state_dict(ckpt), what)
    return trunk
