"""The training loop's small helpers: the one-line error exit, meters and progress lines, the
non-finite check, TensorBoard logging, mixed precision, seeds and process rank."""
import random
import signal
import sys
import time

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn


# ----------------------------------------------------------------------------- errors

class UserError(Exception):
    """A mistake the user can fix: reported as one line, exit status 2, no traceback."""


class StepLimitReached(Exception):
    """--max_steps: the timing run has done its steps (args[0]: the timings, a dict); ends the
    script with exit status 0 and nothing written."""


class Stopped(Exception):
    """SIGTERM or SIGINT (args[0]) arrived, e.g. SLURM's pre-emption or time-out: the run stopped
    between two steps, never inside a checkpoint write."""


_signal_received = []


def _on_signal(signum, frame):
    if _signal_received:  # a second signal: the user insists
        raise Stopped(signum)
    _signal_received.append(signum)


def stop_requested():
    """The signal received so far (0: none); training checks it at every step (EpochProgress)."""
    return _signal_received[0] if _signal_received else 0


def run(main):
    """Run a script's main(); a UserError (also one raised in a data-loader worker) ends the
    process with one line on stderr and exit status 2. SIGTERM/SIGINT stop training at the next
    step: the last finished epoch's last.pth stays what --resume continues; the exit status is
    128 + the signal's number, as if the signal had killed it."""
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, _on_signal)
    try:
        main()
    except Stopped as e:
        name = signal.Signals(e.args[0]).name
        if is_main():
            print(f'stopped by {name}: the last finished epoch\'s last.pth is kept; continue with --resume',
                  file=sys.stderr, flush=True)
        sys.exit(128 + e.args[0])
    except UserError as e:
        # A worker's exception comes back wrapped with its traceback: keep the message only.
        msg = str(e).strip().splitlines()[-1]
        msg = msg.split('UserError: ', 1)[-1]
        print(f'error: {msg}', file=sys.stderr)
        sys.exit(2)
    except StepLimitReached:
        pass  # the timings are printed
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


# ----------------------------------------------------------------------------- meters

class AverageMeter:
    """Running average. Accepts tensors without syncing the device: values are read (and the
    host waits) only when .val or .avg is asked for, i.e. at print time."""

    def __init__(self):
        self.reset()

    def reset(self):
        self._val, self.sum, self.count = 0.0, 0.0, 0

    def update(self, val, n=1):
        if torch.is_tensor(val):
            val = val.detach().float()
        self._val = val
        self.sum = self.sum + val * n
        self.count += n

    @property
    def val(self):
        return float(self._val)

    @property
    def avg(self):
        return float(self.sum) / max(self.count, 1)


class NonFiniteGuard:
    """Remembers the first step whose loss was NaN/inf without a per-step host sync;
    check() raises a UserError naming epoch and step."""

    def __init__(self, device):
        self.first_bad = torch.full((), -1, dtype=torch.long, device=device)

    def update(self, loss, step):
        bad = ~torch.isfinite(loss.detach()) & (self.first_bad < 0)
        self.first_bad = torch.where(bad, torch.full_like(self.first_bad, step), self.first_bad)

    def check(self, epoch, last_good):
        step = int(self.first_bad)
        if step >= 0:
            kept = f'last good checkpoint: {last_good}' if last_good else 'no checkpoint was written'
            raise UserError(f'loss became non-finite at epoch {epoch}, step {step}; stopped ({kept}); '
                            f'lower --learning_rate or check the data')


class EpochProgress:
    """One training epoch's bookkeeping: batch and data time, running averages of the step values
    (tensors, read only when printed: no host sync in between), SupContrast's progress line every
    --print_freq steps with images/s and the epoch's time left, and the non-finite-loss check."""
    LABELS = {'loss': 'loss', 'ddm_loss': 'ddm', 'train_acc': 'Acc@1'}

    def __init__(self, epoch, steps, args):
        self.epoch, self.steps, self.args = epoch, steps, args
        self.guard = NonFiniteGuard(args.device)
        self.batch_time, self.data_time, self.meters = AverageMeter(), AverageMeter(), {}
        self.start = self.last = time.time()
        self.images = 0

    def _lap(self):
        now = time.time()
        dt, self.last = now - self.last, now
        return dt

    def data_ready(self):
        self.data_time.update(self._lap())

    def step(self, idx, n, **values):
        """Step idx (from 0) is done: n samples on this process; values: this process's scalar
        tensors, 'loss' first. Their mean over ranks is what every rank averages (weighted by n),
        prints and guards, so a non-finite loss on any rank stops all of them at the same step."""
        stop = stop_requested()
        if world_size() > 1:  # one all_reduce: the values' means, and whether any rank was signalled
            flag = values['loss'].new_full((), float(stop))  # a fill on the device, no host-to-device copy
            mean = torch.stack([v.detach().float() for v in values.values()] + [flag])
            dist.all_reduce(mean)
            values = dict(zip(values, mean[:-1] / world_size()))
            # all ranks stop at the same step, read where the progress line syncs anyway
            stop = 0 if (idx + 1) % self.args.print_freq else (stop or signal.SIGTERM) * bool(mean[-1].item())
        if stop:
            raise Stopped(stop)
        self.guard.update(values['loss'], idx + 1)
        for name, value in values.items():
            self.meters.setdefault(name, AverageMeter()).update(value, n)
        self.images += n * world_size()
        self.batch_time.update(self._lap())
        if (idx + 1) % self.args.print_freq == 0:
            self.guard.check(self.epoch, self.args.last_good)
            if is_main():
                values = ''.join(f'\t{self.LABELS[name]} {m.val:.3f} ({m.avg:.3f})' for name, m in self.meters.items())
                left = self.batch_time.avg * (self.steps - idx - 1)
                print(f'Train: [{self.epoch}][{idx + 1}/{self.steps}]\tBT {self.batch_time.val:.3f} '
                      f'({self.batch_time.avg:.3f})\tDT {self.data_time.val:.3f} ({self.data_time.avg:.3f}){values}'
                      f'\t{self.images / (time.time() - self.start):.0f} images/s\tepoch left {clock(left)}', flush=True)

    def end(self):
        """Check the last steps' losses; the epoch's averages are then in .averages."""
        self.guard.check(self.epoch, self.args.last_good)
        self.seconds = time.time() - self.start
        self.averages = {name: m.avg for name, m in self.meters.items()}
        return self


def clock(seconds):
    """h:mm:ss"""
    s = int(seconds)
    return f'{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}'


def accuracy(output, target, topk=(1,)):
    """Top-k accuracy in percent for each k."""
    maxk = min(max(topk), output.shape[1])
    pred = output.topk(maxk, 1).indices
    correct = pred.eq(target.view(-1, 1))
    return [correct[:, :min(k, maxk)].any(1).float().mean() * 100 for k in topk]


# ----------------------------------------------------------------------------- processes

def is_main():
    return not dist.is_initialized() or dist.get_rank() == 0


def world_size():
    return dist.get_world_size() if dist.is_initialized() else 1


def unwrap(model):
    """The model itself, out of torch.compile's and DDP's wrappers."""
    model = getattr(model, '_orig_mod', model)
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


# ----------------------------------------------------------------------------- precision, seeds

def autocast(args):
    dtype = {'bf16': torch.bfloat16, 'fp16': torch.float16}.get(args.amp)
    return torch.autocast(args.device.type, dtype=dtype, enabled=dtype is not None)


def grad_scaler(args):
    return torch.amp.GradScaler(args.device.type, enabled=args.amp == 'fp16')


def set_seed(args):
    if args.seed is not None:
        seed = args.seed + args.rank
        random.seed(seed)
        np.random.seed(seed)
        torch.manual_seed(seed)


# ----------------------------------------------------------------------------- logging

class Logger:
    """Rank 0's epoch lines and TensorBoard scalars, under the same tags in every script: loss,
    learning_rate, momentum (of a momentum encoder), ddm_loss (CLSA), train_acc, val_loss,
    val_acc, val_acc5 (classifiers), knn_accuracy (kNN monitor), images_per_s. The folder is
    created on the first write."""
    LABELS = {'loss': ('loss', '.4f'), 'ddm_loss': ('ddm', '.4f'), 'train_acc': ('train acc', '.2f')}

    def __init__(self, folder, args):
        self.folder, self.args, self.writer = folder, args, None
        self.start, self.first_epoch = time.time(), None

    def log(self, step, **scalars):
        if not is_main():
            return
        if self.writer is None:
            from torch.utils.tensorboard import SummaryWriter
            self.writer = SummaryWriter(self.folder)
        for k, v in scalars.items():
            self.writer.add_scalar(k, float(v), step)
        self.writer.flush()

    def epoch(self, epoch, progress, suffix='', **scalars):
        """The epoch line (SupContrast's 'epoch E, total time T, loss L', then images/s and the
        run's elapsed and remaining time, then `suffix`) and its scalars: the progress averages,
        images/s and `scalars`."""
        if self.first_epoch is None:
            self.first_epoch = epoch
        images_per_s = progress.images / max(progress.seconds, 1e-9)
        elapsed = time.time() - self.start
        left = elapsed / (epoch - self.first_epoch + 1) * (self.args.epochs - epoch)
        if is_main():
            values = ''.join(f', {self.LABELS[k][0]} {v:{self.LABELS[k][1]}}' for k, v in progress.averages.items())
            print(f'epoch {epoch}, total time {progress.seconds:.2f}{values}, {images_per_s:.0f} images/s, '
                  f'elapsed {clock(elapsed)}, left {clock(left)}{suffix}', flush=True)
        self.log(epoch, **progress.averages, images_per_s=images_per_s, **scalars)
