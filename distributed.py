"""Processes and devices: one code path for CPU, one GPU, torchrun, SLURM srun and MoCo's
--multiprocessing-distributed; gathers with gradients, sync-BN that also runs on CPU (gloo),
and moving models and batches to the device."""
import os
import subprocess
import sys

import torch
import torch.distributed as dist
import torch.nn as nn

import checkpoints
import options
import util
from networks.momentum import AnyRankBatchNorm, MomentumEncoder
from util import UserError, world_size


def init_distributed(args):
    """One code path for CPU, one GPU, torchrun and SLURM srun. Sets args.rank, args.world_size,
    args.device; NCCL on GPUs, gloo on CPU. --batch_size is the global batch (options.per_node_batch
    made it so under MoCo's and CLSA's launcher flags)."""
    env = os.environ
    if getattr(args, 'multiprocessing_distributed', False) and 'RANK' not in env:
        relaunch_with_torchrun(args)
    if wants_every_gpu(args, env, torch.cuda.device_count()):
        relaunch_on_every_gpu()
    if 'RANK' in env and 'WORLD_SIZE' in env:  # torchrun
        rank, world, local = int(env['RANK']), int(env['WORLD_SIZE']), int(env.get('LOCAL_RANK', 0))
    elif int(env.get('SLURM_STEP_NUM_TASKS', 1)) > 1:  # srun, one task per GPU
        rank, world, local = int(env['SLURM_PROCID']), int(env['SLURM_STEP_NUM_TASKS']), int(env['SLURM_LOCALID'])
        if 'MASTER_ADDR' not in env:
            hosts = subprocess.run(['scontrol', 'show', 'hostnames', env['SLURM_STEP_NODELIST']],
                                   capture_output=True, text=True, check=True).stdout.split()
            env['MASTER_ADDR'] = hosts[0]
        env.setdefault('MASTER_PORT', str(29500 + int(env.get('SLURM_JOB_ID', 0)) % 1000))
    else:
        rank, world, local = 0, 1, 0
    args.rank, args.world_size = rank, world

    if getattr(args, 'gpu', None) is not None:
        if world > 1:
            raise UserError('--gpu picks the GPU of a single-process run; under torchrun/srun each process takes its LOCAL_RANK')
        if not torch.cuda.is_available():
            raise UserError(f'--gpu {args.gpu} given but no GPU is visible')
        local = args.gpu
    if torch.cuda.is_available():
        torch.cuda.set_device(local)
        args.device = torch.device('cuda', local)
        torch.backends.cudnn.benchmark = True
    else:
        args.device = torch.device('cpu')
    if getattr(args, 'channels_last', None) is None:  # unset, or a script without the option
        args.channels_last = args.device.type == 'cuda'
    if world > 1:
        backend = getattr(args, 'dist_backend', None) or ('nccl' if args.device.type == 'cuda' else 'gloo')
        dist.init_process_group(backend, rank=rank, world_size=world)
    if args.batch_size % world:
        raise UserError(f'--batch_size {args.batch_size} is not divisible by the {world} processes')
    if getattr(args, 'per_node', False):
        divide_workers(args, world)
    if args.syncBN and world == 1 and rank == 0:
        print('note: --syncBN has no effect with a single process')


def wants_every_gpu(args, env, gpus):
    """A plain `python main_X.py` with several GPUs visible uses them all (SupContrast's DataParallel
    did): not under torchrun or a multi-task srun, and not when --gpu picks one."""
    launched = 'RANK' in env or int(env.get('SLURM_STEP_NUM_TASKS', 1)) > 1
    return gpus > 1 and not launched and getattr(args, 'gpu', None) is None


def relaunch_on_every_gpu():
    """Re-execute this command under torchrun, one process per visible GPU on this node; --batch_size
    stays the global batch."""
    gpus = torch.cuda.device_count()
    cmd = [sys.executable, '-m', 'torch.distributed.run', '--standalone', f'--nproc_per_node={gpus}', *sys.argv]
    print(f'note: {gpus} GPUs visible: running under torchrun, one process per GPU (--batch_size stays the global '
          f'batch; CUDA_VISIBLE_DEVICES=0 or --gpu 0 keeps one process)', flush=True)
    os.execv(sys.executable, cmd)


def divide_workers(args, world):
    """The released launcher's --workers are per node, divided over its GPUs (rounded up): as
    many per process here. Prints the global batch the per-node --batch_size made."""
    per_node = int(os.environ.get('LOCAL_WORLD_SIZE', max(world // args.nodes, 1)))
    workers = args.num_workers
    args.num_workers = -(-workers // per_node)
    if args.rank == 0:
        print(f'note: --batch_size {args.batch_size // args.nodes} and --workers {workers} are per node (the released '
              f'launcher\'s meaning): global batch {args.batch_size} = {args.nodes} node(s) x {per_node} process(es) '
              f'x {args.batch_size // world}, {args.num_workers} workers per process', flush=True)


def relaunch_with_torchrun(args):
    """MoCo's --multiprocessing-distributed: one process per visible GPU on each of --world-size
    nodes, rendezvous at --dist-url. torchrun does exactly that, so the command is re-executed
    under it (the children see RANK and skip this)."""
    gpus = torch.cuda.device_count()
    if gpus == 0:
        raise UserError('--multiprocessing-distributed starts one process per GPU and none is visible; '
                        'drop it to train in this process')
    url = args.dist_url
    host, _, port = url.removeprefix('tcp://').rpartition(':')
    if not host or not port.isdigit():
        raise UserError(f'--dist-url must look like tcp://HOST:PORT, got {url!r}')
    cmd = [sys.executable, '-m', 'torch.distributed.run', f'--nproc_per_node={gpus}', f'--nnodes={args.nodes}',
           f'--node_rank={args.node_rank}', f'--master_addr={host}', f'--master_port={port}', *sys.argv]
    print(f'note: --multiprocessing-distributed: running {" ".join(cmd[1:6])} ...', flush=True)
    os.environ[options.RELAUNCHED_ENV] = '1'  # the children keep the per-node --batch_size and --workers
    os.execv(sys.executable, cmd)


_autograd_group = None


def _group():
    """The process group of collectives that run inside autograd (sync-BN statistics, gathers with
    gradients). Not the default group: DDP all-reduces gradient buckets there asynchronously while
    backward runs, and a collective of ours issued meanwhile could be paired with one of DDP's
    (on gloo this silently mixed up gradients). Created on first use, which all ranks reach together."""
    global _autograd_group
    if _autograd_group is None:
        _autograd_group = dist.new_group()
    return _autograd_group


class _AllReduceSum(torch.autograd.Function):
    """Sum over ranks whose backward sums the gradients too (each rank's output feeds its own loss)."""

    @staticmethod
    def forward(ctx, x):
        x = x.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(x, group=_group())
        return x

    @staticmethod
    def backward(ctx, grad):
        # Collectives read raw memory: a strided gradient (e.g. from a transpose) must be packed.
        grad = grad.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(grad, group=_group())
        return grad


class _GatherWithGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        out = [torch.empty_like(x, memory_format=torch.contiguous_format) for _ in range(world_size())]
        dist.all_gather(out, x.contiguous(), group=_group())
        return torch.cat(out, 0)

    @staticmethod
    def backward(ctx, grad):
        grad = _AllReduceSum.backward(ctx, grad)  # every rank's gradient w.r.t. the whole batch, summed
        n = grad.shape[0] // world_size()
        return grad[dist.get_rank() * n:(dist.get_rank() + 1) * n]


def gather_with_grad(x):
    """Concatenate x from all ranks along dim 0; gradients flow back to every rank's slice."""
    if world_size() == 1:
        return x
    return _GatherWithGrad.apply(x)


@torch.no_grad()
def gather(x):
    """Concatenate x from all ranks along dim 0 (no gradient)."""
    if world_size() == 1:
        return x
    out = [torch.empty_like(x) for _ in range(world_size())]
    dist.all_gather(out, x.contiguous())
    return torch.cat(out, 0)


@torch.no_grad()
def broadcast_from_rank0(module):
    """Give every rank rank 0's parameters and buffers, as DDP does for the model it wraps: for
    state drawn at random outside DDP (a queue of keys), which would otherwise differ per rank."""
    if world_size() > 1:
        for t in module.state_dict().values():  # detached views of the module's own tensors
            dist.broadcast(t, 0)
    return module


class _GlobalBatchNorm(AnyRankBatchNorm):
    """SyncBatchNorm for CPU processes (gloo), where nn.SyncBatchNorm has no kernel: batch
    statistics are summed over ranks with an autograd-aware all_reduce."""

    def forward(self, x):
        if not self.training:
            return super().forward(x)
        dims = [0] + list(range(2, x.dim()))
        c = x.shape[1]
        count = torch.tensor([x.numel() / c], dtype=x.dtype, device=x.device)
        stats = _AllReduceSum.apply(torch.cat([x.sum(dims), (x * x).sum(dims), count]))
        n = stats[-1]
        mean = stats[:c] / n
        var = (stats[c:2 * c] / n - mean * mean).clamp_min(0)
        with torch.no_grad():
            self.num_batches_tracked += 1
            self.running_mean.lerp_(mean, self.momentum)
            self.running_var.lerp_(var * n / (n - 1), self.momentum)
        shape = [1, c] + [1] * (x.dim() - 2)
        y = (x - mean.view(shape)) * torch.rsqrt(var.view(shape) + self.eps)
        return y * self.weight.view(shape) + self.bias.view(shape) if self.affine else y


def convert_sync_batchnorm(module, device):
    """nn.SyncBatchNorm on GPUs; on CPU processes our all_reduce version with the same maths."""
    if device.type == 'cuda':
        return nn.SyncBatchNorm.convert_sync_batchnorm(module)
    out = module
    if isinstance(module, nn.modules.batchnorm._BatchNorm):
        out = _GlobalBatchNorm(module.num_features, module.eps, module.momentum, module.affine,
                               module.track_running_stats)
        out.load_state_dict(module.state_dict())
    for name, child in module.named_children():
        out.add_module(name, convert_sync_batchnorm(child, device))
    return out


def place(module, args):
    """Move to the device; --channels_last: channels-last weights."""
    module = module.to(args.device)
    return channels_last(module) if args.channels_last else module


def momentum_copy(model, args):
    """The momentum (key) encoder of `model`, taken before distribute(model): its BatchNorm stays per
    process whatever --syncBN makes of the online encoder's (statistics shared by all processes
    would undo the shuffle of keys across them, MoCo's reason for it); rank 0's weights, as DDP
    gives the online encoder."""
    return broadcast_from_rank0(place(MomentumEncoder(model), args))


def distribute(model, args):
    """Convert BN for --syncBN, move to the device (place), wrap in DDP, then --compile."""
    if args.syncBN and args.world_size > 1:
        model = convert_sync_batchnorm(model, args.device)
    model = place(model, args)
    if args.world_size > 1:
        model = nn.parallel.DistributedDataParallel(
            model, device_ids=[args.device.index] if args.device.type == 'cuda' else None)
    if args.compile:
        model = torch.compile(model)  # util.unwrap gives the module itself back (checkpoints, EMA copies)
    return model


def channels_last(model):
    """The model's weights channels-last: NHWC for 2D convolutions, NDHWC (channels_last_3d) for a
    video trunk's 3D ones (torch's channels_last refuses 5-D tensors)."""
    video = any(p.dim() == 5 for p in model.parameters())
    return model.to(memory_format=torch.channels_last_3d if video else torch.channels_last)


def to_device(images, args):
    """Copy a batch to the device (pinned by the loader on CUDA, so without blocking the host);
    --channels_last makes images [B, C, H, W] and clips [B, C, T, H, W] channels-last."""
    images = images.to(args.device, non_blocking=True)
    if args.channels_last and images.dim() in (4, 5):
        images = images.contiguous(memory_format=torch.channels_last if images.dim() == 4 else torch.channels_last_3d)
    return images


def start(args):
    """The run-time state every script begins with, set here and nowhere else: rank, process count
    and device, seeds, the --resume checkpoint, the run folder (claimed before any work), the data seed all ranks' samplers share (--seed, the
    resumed run's, or a random one from rank 0) and the last good checkpoint. Returns the checkpoint
    to resume from, or None."""
    init_distributed(args)
    util.set_seed(args)
    ckpt = checkpoints.resume_checkpoint(args)
    if not getattr(args, 'test', None) and not getattr(args, 'max_steps', None):  # these write nothing
        checkpoints.claim_run_folder(args, resuming=ckpt is not None)
    if ckpt:
        args.data_seed = ckpt['args']['data_seed']
    elif args.seed is not None:
        args.data_seed = args.seed
    else:
        seed = torch.randint(2**31 - 1, ()).to(args.device)
        if world_size() > 1:
            dist.broadcast(seed, 0)
        args.data_seed = int(seed)
    args.last_good = ckpt['path'] if ckpt else None  # what a non-finite loss leaves behind
    return ckpt
