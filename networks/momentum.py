"""Momentum-encoder machinery shared by MoCo, SCE and CLSA: the EMA copy of an encoder and its
cosine schedule, the FIFO queue of keys, and shuffle-BN (across ranks, or split BN on one device).

A training step reads, in order (the loss must see the queue as it was *before* this step):
    q = model(x_q)
    with torch.no_grad():
        momentum.update(model, m)                  # MoCo updates the key encoder before the keys
        k = shuffled_forward(momentum, x_k)
    loss = criterion(q, k, queue.keys.clone())     # clone: enqueue writes in place (see Queue)
    loss.backward(); ...
    queue.enqueue(gather(k))                       # keys of all ranks, same order everywhere
"""
import copy
import math

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F


class MomentumEncoder(nn.Module):
    """A frozen deep copy of an online module, moved towards it by `update` (exponential moving
    average of the parameters). Buffers (BN running statistics) are not averaged: the copy keeps its
    own, computed from the batches it sees, as in MoCo / BYOL. Calling it runs without autograd.
    Submodules named in `drop` are left out of the copy (set to None), e.g. SCE's predictor: the
    target branch is trunk + projector only."""

    def __init__(self, online, drop=()):
        super().__init__()
        self.module = copy.deepcopy(online)
        for name in drop:
            setattr(self.module, name, None)
        for p in self.module.parameters():
            p.requires_grad_(False)
        self.names = [name for name, _ in self.module.named_parameters()]

    @torch.no_grad()
    def update(self, online, m):
        """param_k <- m * param_k + (1 - m) * param_q, for all parameters at once."""
        online_params = dict(online.named_parameters())
        missing = [name for name in self.names if name not in online_params]
        if missing:
            raise ValueError(f'online module has no parameter {missing[0]} (of {len(missing)} missing)')
        k, q = list(self.module.parameters()), [online_params[name] for name in self.names]
        # lerp(k, q, w) = k + w (q - k) = (1 - w) k + w q: one fused multi-tensor kernel instead of
        # hundreds of tiny ones (a ResNet-50 has ~160 parameter tensors).
        torch._foreach_lerp_(k, q, 1.0 - m)

    @torch.no_grad()
    def forward(self, *args, **kwargs):
        return self.module(*args, **kwargs)


def cosine_momentum(m0, step, total_steps):
    """BYOL's schedule: m0 at step 0, rising along a half cosine to 1 at total_steps."""
    return 1 - (1 - m0) * (math.cos(math.pi * step / max(total_steps, 1)) + 1) / 2


class Queue(nn.Module):
    """FIFO of `size` keys of dimension `dim`: buffers `keys` [size, dim] and `ptr` (the next row to
    write), so both are saved in and restored from a state_dict.

    The loss must use the queue before this step's keys are added: compute the loss on
    `queue.keys.clone()` (or call backward first), then `enqueue`. The clone matters because enqueue
    writes in place into a tensor that autograd saved for the backward of q @ queue.T.
    Queues of the same size enqueued with the same batches stay row-aligned (e.g. MoCo's keys and a
    queue of the keys' trunk features for the kNN loss)."""

    def __init__(self, size, dim):
        super().__init__()
        self.register_buffer('keys', F.normalize(torch.randn(size, dim), dim=1))  # random unit rows
        self.register_buffer('ptr', torch.zeros((), dtype=torch.long))

    @torch.no_grad()
    def enqueue(self, batch):
        """Write the rows of `batch` (already gathered from all ranks) at ptr, oldest first out."""
        n, size = batch.shape[0], self.keys.shape[0]
        if size % n:
            # A divisible size keeps every write contiguous and the queue a whole number of batches,
            # as in MoCo; anything else points to an option mistake.
            raise ValueError(f'queue size {size} is not divisible by the batch size {n}')
        rows = (self.ptr + torch.arange(n, device=self.ptr.device)) % size
        # Indices computed on the device: no host sync to read ptr in the middle of a CUDA step.
        self.keys.index_copy_(0, rows, batch.detach().to(self.keys.dtype))
        self.ptr.copy_((self.ptr + n) % size)


@torch.no_grad()
def _gather(x):
    out = [torch.empty_like(x, memory_format=torch.contiguous_format) for _ in range(dist.get_world_size())]
    dist.all_gather(out, x.contiguous())
    return torch.cat(out)


@torch.no_grad()
def shuffled_forward(encoder, x):
    """encoder(x) with the batch shuffled across ranks for BatchNorm, rows returned in x's order.

    BN in a key encoder would otherwise see only its own rank's batch, and the statistics of that
    batch leak which key is the positive (He et al., MoCo, section 3.3). Under torch.distributed with
    several ranks, the global batch is gathered, permuted by one permutation drawn on rank 0, each
    rank encodes its slice of the permuted batch, and the outputs are gathered back and unshuffled.
    Every rank must pass the same batch size. On a single process the batch is shuffled and
    unshuffled in place: a no-op for plain BN, and the cross-split mixing with SplitBatchNorm.
    The encoder may return a tensor or a tuple / list of tensors (e.g. projection and trunk features).
    """
    distributed = dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
    if distributed:
        world, rank, n = dist.get_world_size(), dist.get_rank(), x.shape[0]
        x_all = _gather(x)
        perm = torch.randperm(x_all.shape[0], device=x.device)  # a device tensor: NCCL and gloo
        dist.broadcast(perm, src=0)  # every rank uses rank 0's permutation
        out = encoder(x_all[perm.view(world, n)[rank]])
        mine = perm.argsort().view(world, n)[rank]  # where this rank's samples sit in the shuffled batch
        unshuffle = lambda y: _gather(y)[mine]
    else:
        perm = torch.randperm(x.shape[0], device=x.device)
        out = encoder(x[perm])
        inverse = perm.argsort()
        unshuffle = lambda y: y[inverse]
    if isinstance(out, (tuple, list)):
        return type(out)(unshuffle(y) for y in out)
    return unshuffle(out)


class AnyRankBatchNorm(nn.modules.batchnorm._BatchNorm):
    """BatchNorm over (N, C, ...) of any rank, for the split and the CPU-synchronised variants that
    replace every BatchNorm1d/2d/3d of a model."""

    def _check_input_dim(self, x):
        if x.dim() < 2:
            raise ValueError(f'expected at least 2-D input, got {x.dim()}-D')


class SplitBatchNorm(AnyRankBatchNorm):
    """BatchNorm (of any input rank: heads' 1-D, images' 2-D, clips' 3-D) whose training statistics
    are computed separately on `num_splits` equal chunks of the batch: one device emulating BN on
    num_splits devices (the MoCo authors' trick, used with a shuffle so that a key's statistics do
    not come from its own query's batch). Chunk j is rows [j*N/s, (j+1)*N/s), what rank j holds in
    shuffled_forward. Running statistics are the mean of the chunks' updates; eval is plain
    BatchNorm; state_dict keys are BatchNorm's."""

    def __init__(self, num_features, num_splits, **kwargs):
        super().__init__(num_features, **kwargs)
        if num_splits < 1:
            raise ValueError(f'num_splits must be >= 1, got {num_splits}')
        self.num_splits = num_splits

    def forward(self, x):
        if not self.training:
            return super().forward(x)
        s, (n, c), rest = self.num_splits, x.shape[:2], x.shape[2:]
        if n % s:
            raise ValueError(f'SplitBatchNorm: batch size {n} is not divisible by num_splits {s}')
        factor = self.momentum or 0.0
        if self.track_running_stats:
            self.num_batches_tracked.add_(1)
            if self.momentum is None:  # cumulative average, as BatchNorm does
                factor = 1.0 / self.num_batches_tracked.item()
        # Lay chunk j's channels at [j*C, (j+1)*C) of a batch of N/s samples: one BN over the wider
        # tensor then normalises every chunk with its own statistics, in one kernel.
        xs = x.reshape(s, n // s, c, *rest).transpose(0, 1).reshape(n // s, s * c, *rest)
        rep = lambda t: None if t is None else t.repeat(s)
        mean, var = rep(self.running_mean), rep(self.running_var)
        y = F.batch_norm(xs, mean, var, rep(self.weight), rep(self.bias), True, factor, self.eps)
        if self.track_running_stats:
            with torch.no_grad():
                self.running_mean.copy_(mean.view(s, c).mean(0))
                self.running_var.copy_(var.view(s, c).mean(0))
        return y.reshape(n // s, s, c, *rest).transpose(0, 1).reshape(n, c, *rest)


def convert_split_batchnorm(module, num_splits):
    """Replace every BatchNorm (1-D, 2-D or 3-D) in module by a SplitBatchNorm sharing its parameters
    and buffers (so optimiser references and requires_grad stay valid); returns the converted module."""
    out = module
    if isinstance(module, nn.modules.batchnorm._BatchNorm) and not isinstance(module, SplitBatchNorm):
        out = SplitBatchNorm(module.num_features, num_splits, eps=module.eps, momentum=module.momentum,
                             affine=module.affine, track_running_stats=module.track_running_stats)
        if module.affine:
            out.weight, out.bias = module.weight, module.bias
        out.running_mean, out.running_var = module.running_mean, module.running_var
        out.num_batches_tracked = module.num_batches_tracked
        out.train(module.training)
    for name, child in module.named_children():
        out.add_module(name, convert_split_batchnorm(child, num_splits))
    return out
