"""Optimisers and the pieces every script's learning-rate schedule (its lr_at) is built from.

Each training script writes its own short lr_at(args, epoch, step, steps) out of the pieces below
(epochs count from 1, steps within an epoch from 0) and sets it once per step with set_lr."""
import math

import torch


# ----------------------------------------------------------------------------- schedule pieces

def cosine(base, progress, floor=0.0):
    """Half cosine from base (progress 0) to floor (progress 1)."""
    return floor + (base - floor) * (1 + math.cos(math.pi * progress)) / 2


def step_decay(base, epoch, milestones, rate):
    """base * rate^(milestones passed), SupContrast's strict rule: epoch m + 1 is the first decayed."""
    return base * rate ** sum(epoch > m for m in milestones)


def linear(start, end, progress):
    return start + progress * (end - start)


def warmup_cosine(base, step, warmup_steps, total_steps):
    """Per-step schedule of SCE / BYOL-style runs: linear from 0 (step 0) to base (step
    warmup_steps - 1), then a half cosine from base (step warmup_steps) to 0 (step total_steps)."""
    if step < warmup_steps:
        return base * step / max(warmup_steps - 1, 1)
    return cosine(base, (step - warmup_steps) / max(total_steps - warmup_steps, 1))


def supcontrast_lr(args, epoch, step, steps):
    """SupContrast's schedule: per epoch a cosine from lr (epoch 0) to lr * rate^3 (the last epoch),
    or x rate after each of --lr_decay_epochs; --warm: the first --warm_epochs (10) rise per step
    from --warmup_from (0.01) to where the schedule stands at their end."""
    def epoch_lr(e):
        if args.cosine:
            return cosine(args.learning_rate, e / args.epochs, args.learning_rate * args.lr_decay_rate ** 3)
        return step_decay(args.learning_rate, e, args.lr_decay_epochs, args.lr_decay_rate)
    if args.warm and epoch <= args.warm_epochs:
        return warm_up(epoch_lr(args.warm_epochs) if args.cosine else args.learning_rate, epoch, step, steps, args)
    return epoch_lr(epoch)


def warm_up(target, epoch, step, steps, args):
    """SupContrast's --warm: per step, linear from --warmup_from (the first step) towards target
    over --warm_epochs."""
    return linear(args.warmup_from, target, (step + (epoch - 1) * steps) / (args.warm_epochs * steps))


def set_lr(optimizer, lr):
    for group in optimizer.param_groups:
        group['lr'] = lr


# ----------------------------------------------------------------------------- optimisers

def step(optimizer, scaler, loss):
    """One optimiser step on loss: clear the gradients, backward (scaled for fp16), step, rescale."""
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    scaler.step(optimizer)
    scaler.update()


def build_optimizer(params, args, lr=0.0, kind='sgd'):
    """The optimiser of every training script: SGD (momentum --momentum, --weight_decay) or LARS
    (also --trust_coefficient). --fused_optimizer: SGD in one fused kernel (torch >= 2.4, also no
    host sync in an fp16 GradScaler step; not fp16 on CPU, where the fused step made a tiny run's
    loss NaN within 3 steps, torch 2.14), LARS with multi-tensor kernels; else one kernel per
    parameter, torch's plain loop. The lr is set by the script's schedule before each step."""
    if kind == 'lars':
        return LARS(params, lr=lr, weight_decay=args.weight_decay, momentum=args.momentum,
                    trust_coefficient=args.trust_coefficient, foreach=args.fused_optimizer)
    fused = args.fused_optimizer and not (args.amp == 'fp16' and args.device.type == 'cpu')
    return torch.optim.SGD(params, lr=lr, momentum=args.momentum, weight_decay=args.weight_decay,
                           **({'fused': True} if fused else {}))


class LARS(torch.optim.Optimizer):
    """SGD with momentum and layer-wise adaptive rate scaling (You et al. 2017), as SCE, BYOL and
    MoCo v3 use it. A parameter with more than one dimension gets update u = grad + wd * p scaled by
    trust_coefficient * |p| / |u| (by 1 when either norm is 0); one-dimensional ones (biases, BN)
    get the plain gradient: neither decayed nor adapted. Then buf = momentum * buf + u, p -= lr * buf.
    foreach: one multi-tensor kernel per operation for all parameters, else a loop over them."""

    def __init__(self, params, lr=0.0, weight_decay=0.0, momentum=0.9, trust_coefficient=1e-3, foreach=True):
        super().__init__(params, dict(lr=lr, weight_decay=weight_decay, momentum=momentum,
                                      trust_coefficient=trust_coefficient))
        self.foreach = foreach

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params = [p for p in group['params'] if p.grad is not None]
            if params:
                (self._step_foreach if self.foreach else self._step_loop)(group, params)
        return loss

    def _step_foreach(self, group, params):
        updates = [p.grad for p in params]
        adapted = [i for i, p in enumerate(params) if p.ndim > 1]
        if adapted:
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

    def _step_loop(self, group, params):
        for p in params:
            u = p.grad
            if p.ndim > 1:
                u = u.add(p, alpha=group['weight_decay'])
                w_norm, u_norm = p.norm(), u.norm()
                trust = torch.where((w_norm > 0) & (u_norm > 0), group['trust_coefficient'] * w_norm / u_norm,
                                    torch.ones_like(w_norm))
                u = u * trust
            buf = self.state[p].setdefault('momentum_buffer', torch.zeros_like(p))
            buf.mul_(group['momentum']).add_(u)
            p.add_(buf, alpha=-group['lr'])
