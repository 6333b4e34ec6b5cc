"""Small helpers every script shares (their options are in options.py): schedules, meters, distributed set-up, mixed
precision, checkpoints, logging, kNN monitoring and the one-line error exit."""
import math
import os
import random
import sys
import time

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn

from networks.resnet_big import build_trunk


# ----------------------------------------------------------------------------- errors

class UserError(Exception):
    """A mistake the user can fix: reported as one line, exit status 2, no traceback."""


class StepLimitReached(Exception):
    """--max_steps: the timing run has done its steps (args[0]: the timings, a dict); ends the
    script with exit status 0 and nothing written."""


def run(main):
    """Run a script's main(); a UserError (also one raised in a data-loader worker) ends the
    process with one line on stderr and exit status 2."""
    try:
        main()
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


def plain_args(args):
    """The options as a plain dict of builtins, storable in a weights_only checkpoint."""
    def plain(v):
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        return v if v is None or isinstance(v, (bool, int, float, str)) else str(v)
    return {k: plain(v) for k, v in vars(args).items()}


# ----------------------------------------------------------------------------- schedules

def cosine_lr(base, progress, floor=0.0):
    """Half cosine from base (progress 0) to floor (progress 1)."""
    return floor + (base - floor) * (1 + math.cos(math.pi * progress)) / 2


def step_lr(base, epoch, milestones, rate):
    """base * rate^(milestones passed); epochs count from 1, so epoch m+1 is the first decayed."""
    return base * rate ** sum(epoch > m for m in milestones)


def adjust_learning_rate(args, optimizer, epoch):
    """SupContrast's per-epoch schedule (epochs count from 1): cosine to lr*rate^3, or step decay.
    Nothing under a per-step schedule (--warmup_epochs, see step_learning_rate)."""
    if getattr(args, 'warmup_epochs', None) is not None:
        return optimizer.param_groups[0]['lr']
    if args.cosine:
        lr = cosine_lr(args.learning_rate, epoch / args.epochs, args.learning_rate * args.lr_decay_rate ** 3)
    else:
        lr = step_lr(args.learning_rate, epoch, args.lr_decay_epochs, args.lr_decay_rate)
    set_lr(optimizer, lr)
    return lr


def warmup_learning_rate(args, epoch, batch_id, total_batches, optimizer):
    """Per-step linear warm-up from warmup_from to warmup_to over the first warm_epochs."""
    if args.warm and epoch <= args.warm_epochs:
        p = (batch_id + (epoch - 1) * total_batches) / (args.warm_epochs * total_batches)
        set_lr(optimizer, args.warmup_from + p * (args.warmup_to - args.warmup_from))


def step_learning_rate(args, optimizer, epoch, batch_id, total_batches):
    """The per-step part of the schedule of main_linear.py / main_ce.py: with --warmup_epochs,
    the SCE video protocols' linear warm-up from 0 then cosine to 0 (warmup_cosine_lr) over the
    whole run; else SupContrast's --warm."""
    if getattr(args, 'warmup_epochs', None) is None:
        return warmup_learning_rate(args, epoch, batch_id, total_batches, optimizer)
    step = (epoch - 1) * total_batches + batch_id
    set_lr(optimizer, warmup_cosine_lr(args.learning_rate, step, args.warmup_epochs * total_batches,
                                       args.epochs * total_batches))


def set_lr(optimizer, lr):
    for group in optimizer.param_groups:
        group['lr'] = lr


def warmup_cosine_lr(base, step, warmup_steps, total_steps):
    """Per-step schedule of SCE / BYOL-style runs: linear from 0 (step 0) to base (step
    warmup_steps - 1), then a half cosine from base (step warmup_steps) to 0 (step total_steps)."""
    if step < warmup_steps:
        return base * step / max(warmup_steps - 1, 1)
    return cosine_lr(base, (step - warmup_steps) / max(total_steps - warmup_steps, 1))


class LARS(torch.optim.Optimizer):
    """SGD with momentum and layer-wise adaptive rate scaling (You et al. 2017), as SCE, BYOL and
    MoCo v3 use it. A parameter with more than one dimension gets update u = grad + wd * p scaled by
    trust_coefficient * |p| / |u| (by 1 when either norm is 0); one-dimensional ones (biases, BN)
    get the plain gradient: neither decayed nor adapted. Then buf = momentum * buf + u, p -= lr * buf."""

    def __init__(self, params, lr=0.0, weight_decay=0.0, momentum=0.9, trust_coefficient=1e-3):
        super().__init__(params, dict(lr=lr, weight_decay=weight_decay, momentum=momentum,
                                      trust_coefficient=trust_coefficient))

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params = [p for p in group['params'] if p.grad is not None]
            if not params:
                continue
            updates = [p.grad for p in params]
            adapted = [i for i, p in enumerate(params) if p.ndim > 1]
            if adapted:  # multi-tensor kernels: one launch per operation, not one per layer
                weights = [params[i] for i in adapted]
                scaled = torch._foreach_add([updates[i] for i in adapted], weights, alpha=group['weight_decay'])
                w_norm = torch.stack(torch._foreach_norm(weights))
                u_norm = torch.stack(torch._foreach_norm(scaled))
                trust = torch.where((w_norm > 0) & (u_norm > 0),
                                    group['trust_coefficient'] * w_norm / u_norm, torch.ones_like(w_norm))
                torch._foreach_mul_(scaled, list(trust.unbind()))
                for i, u in zip(adapted, scaled):
                    updates[i] = u
            bufs = [self.state[p].setdefault('momentum_buffer', torch.zeros_like(p)) for p in params]
            torch._foreach_mul_(bufs, group['momentum'])
            torch._foreach_add_(bufs, updates)
            torch._foreach_add_(params, bufs, alpha=-group['lr'])
        return loss


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


def print_step(epoch, step, steps, batch_time, data_time, meters):
    """SupContrast's progress line (rank 0): batch and data time, then each meter's value and average."""
    if is_main():
        values = ''.join(f'\t{name} {m.val:.3f} ({m.avg:.3f})' for name, m in meters.items())
        print(f'Train: [{epoch}][{step}/{steps}]\tBT {batch_time.val:.3f} ({batch_time.avg:.3f})\t'
              f'DT {data_time.val:.3f} ({data_time.avg:.3f}){values}', flush=True)


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


def fused(args):
    """Keyword arguments of a torch optimiser for --fused_optimizer: one kernel updates every
    parameter (also no host sync in an fp16 GradScaler step). torch >= 2.4 on CPU and CUDA; not
    with fp16 on CPU, where the fused step made the loss NaN within 3 steps of a tiny run that
    trains without it (torch 2.14)."""
    if not args.fused_optimizer or (args.amp == 'fp16' and args.device.type == 'cpu'):
        return {}
    return {'fused': True}


def set_seed(args):
    if args.seed is not None:
        seed = args.seed + args.rank
        random.seed(seed)
        np.random.seed(seed)
        torch.manual_seed(seed)


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


# ----------------------------------------------------------------------------- checkpoints

def save_checkpoint(path, *, method, args, epoch, model, optimizer, scaler=None, **extra):
    """Write DESIGN.md's checkpoint dict atomically (temporary file, then rename). Call on every
    rank: each contributes its RNG state; rank 0 writes."""
    rngs = [None] * world_size()
    if world_size() > 1:
        dist.all_gather_object(rngs, rng_state())
    else:
        rngs = [rng_state()]
    if not is_main():
        return
    state = {'method': method, 'args': plain_args(args), 'epoch': epoch,
             'model': unwrap(model).state_dict(), 'optimizer': optimizer.state_dict(),
             'scaler': scaler.state_dict() if scaler is not None else None, 'rng': rngs, **extra}
    os.makedirs(os.path.dirname(path) or '.', exist_ok=True)
    tmp = f'{path}.tmp{os.getpid()}'
    try:
        torch.save(state, tmp)
        os.replace(tmp, path)
    except BaseException:  # disk full, interrupted: leave no half-written file behind
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def save_epoch(args, epoch, best=False, **state):
    """last.pth after every epoch (what --resume reads), ckpt_epoch_N.pth every --save_freq, and
    best.pth when `best` (the best validation accuracy so far)."""
    paths = [os.path.join(args.save_folder, 'last.pth')]
    if epoch % args.save_freq == 0:
        paths.append(os.path.join(args.save_folder, f'ckpt_epoch_{epoch}.pth'))
    if best:
        paths.append(os.path.join(args.save_folder, 'best.pth'))
    for path in paths:
        save_checkpoint(path, args=args, epoch=epoch, **state)
    args.last_good = paths[0]


def load_checkpoint(path, what='--ckpt'):
    """Load one of our checkpoints on the CPU, or raise a UserError saying what is wrong."""
    if not os.path.isfile(path):
        raise UserError(f'{what} {path} does not exist')
    try:
        ckpt = torch.load(path, map_location='cpu', weights_only=True)
    except Exception as e:  # any unreadable file is the user's to fix
        raise UserError(f'{what} {path} is not a checkpoint of this project ({type(e).__name__})')
    if not isinstance(ckpt, dict) or not {'method', 'args', 'model'} <= ckpt.keys():
        raise UserError(f'{what} {path} is not a checkpoint of this project (no method/args/model entries)')
    return ckpt


def load_state(module, state_dict, what):
    """load_state_dict that turns a shape or key mismatch into a UserError."""
    try:
        module.load_state_dict(state_dict)
    except RuntimeError as e:
        first = str(e).strip().splitlines()
        detail = first[1].strip() if len(first) > 1 else first[0]
        raise UserError(f'{what} does not fit the model: {detail}')


def resume_checkpoint(args):
    """The checkpoint --resume names (the run folder's last.pth without a path), or None."""
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


def restore(ckpt, args, model, optimizer, scaler=None):
    """Load model, optimiser, scaler and RNG states; returns the first epoch to run (without a
    checkpoint: 1, or after MoCo's --start_epoch)."""
    if ckpt is None:
        return getattr(args, 'start_epoch', 0) + 1
    load_state(unwrap(model), ckpt['model'], f'--resume {ckpt["path"]}')
    optimizer.load_state_dict(ckpt['optimizer'])
    if scaler is not None and ckpt.get('scaler'):
        scaler.load_state_dict(ckpt['scaler'])
    rngs = ckpt.get('rng') or []
    if len(rngs) == world_size():
        set_rng_state(rngs[args.rank])
    if is_main():
        print(f'resumed from {ckpt["path"]} (epoch {ckpt["epoch"]})')
    return ckpt['epoch'] + 1


def take_trunk_options(args, ckpt, what):
    """Adopt the trunk options (model, stem, width) a checkpoint was trained with; one the user
    gave that contradicts them is an error."""
    for key in ('model', 'stem', 'width'):
        given, saved = getattr(args, key), ckpt['args'].get(key)
        if given is not None and given != saved:
            raise UserError(f'--{key} {given} contradicts {what}, trained with {key} {saved}; drop --{key}')
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


# ----------------------------------------------------------------------------- logging

class Logger:
    """TensorBoard scalars from rank 0; the folder is created on the first write."""

    def __init__(self, folder):
        self.folder, self.writer = folder, None

    def log(self, step, **scalars):
        if not is_main():
            return
        if self.writer is None:
            from torch.utils.tensorboard import SummaryWriter
            self.writer = SummaryWriter(self.folder)
        for k, v in scalars.items():
            self.writer.add_scalar(k, float(v), step)
        self.writer.flush()


class Timer:
    """Wall time between calls, for batch/data meters."""

    def __init__(self):
        self.t = time.time()

    def lap(self):
        now = time.time()
        dt, self.t = now - self.t, now
        return dt
