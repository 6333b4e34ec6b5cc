"""CLSA pretraining: Contrastive Learning with Stronger Augmentations (Wang & Qi 2021). MoCo v2
(momentum encoder, queue, shuffle-BN, MLP head) whose weak queries are contrasted with every key of
the batch and the queue, plus a distribution divergence that makes each strongly augmented query
retrieve the candidates its weak view retrieves.

    python main_clsa.py --data=DIR --workers=32 --epochs=200 --start_epoch=0 --batch_size=256 --lr=0.03 \
        --weight_decay=1e-4 --print_freq=100 --world_size=1 --rank=0 --dist_url=tcp://localhost:10001 \
        --moco_dim=128 --moco_k=65536 --moco_m=0.999 --moco_t=0.2 --alpha=1 --aug_times=5 \
        --nmb_crops 1 1 --size_crops 224 96 --min_scale_crops 0.2 0.086 --max_scale_crops 1.0 0.429 \
        --pick_strong 1 --pick_weak 0 --clsa_t 0.2 --sym 0
"""
import argparse
import os
import time

import torch

import augment
import datasets
import distributed
import options
import util
from evaluation import knn_accuracy
from losses import BatchKeysMoCoLoss, CLSALoss
from networks.heads import EncoderWithHead, mlp_head
from networks.momentum import MomentumEncoder, Queue, convert_split_batchnorm, shuffled_forward
from networks.resnet_big import build_trunk

# The released crop groups at 224 px, scaled to --size when no crop option is given
CROP_FRACTIONS = (1.0, 6 / 7, 5 / 7, 4 / 7, 3 / 7)  # 224 192 160 128 96


def parse_option():
    parser = argparse.ArgumentParser(description='CLSA pretraining')
    options.add_common_options(parser, batch_size=256, learning_rate=0.03, lr_decay_epochs='',
                               lr_decay_rate=None, weight_decay=1e-4, epochs=200)
    parser.set_defaults(dataset='imagenet', size=224)
    options.add_knn_options(parser)
    options.add_launcher_options(parser)
    # The released launcher starts one process per GPU unless told otherwise: so do we, through torchrun.
    parser.set_defaults(multiprocessing_distributed=None)

    g = parser.add_argument_group('MoCo')
    g.add_argument('--moco_dim', '--moco-dim', type=int, default=128, help='key dimension')
    g.add_argument('--moco_k', '--moco-k', type=int, default=65536, help='queue size')
    g.add_argument('--moco_m', '--moco-m', type=float, default=0.999, help='key-encoder momentum')
    g.add_argument('--moco_t', '--moco-t', type=float, default=0.2, help='InfoNCE temperature')
    g.add_argument('--bn_splits', type=int, default=None,
                   help='one process: BatchNorm statistics over this many sub-batches, keys shuffled '
                        'between them (MoCo\'s single-GPU shuffle-BN; default 8 when the batch allows)')

    g = parser.add_argument_group('CLSA')
    g.add_argument('--alpha', type=float, default=1.0, help='weight of the distribution-divergence loss')
    g.add_argument('--clsa_t', type=float, default=0.2, help='temperature of the distribution-divergence loss')
    g.add_argument('--aug_times', type=int, default=5, help='operations drawn by the strong augmentation')
    g.add_argument('--nmb_crops', type=int, nargs='+', default=None,
                   help='crops per group (default 1 1 1 1 1); crop j is the j-th crop over all groups')
    g.add_argument('--size_crops', type=int, nargs='+', default=None,
                   help='side of each group\'s crops (default --size x 1, 6/7, 5/7, 4/7, 3/7: 224 192 160 128 96)')
    g.add_argument('--min_scale_crops', type=float, nargs='+', default=None,
                   help='default 0.2 0.172 0.143 0.114 0.086')
    g.add_argument('--max_scale_crops', type=float, nargs='+', default=None,
                   help='default 1.0 0.86 0.715 0.571 0.429')
    g.add_argument('--pick_weak', type=int, nargs='+', default=None,
                   help='crops used as weakly augmented queries (default: all)')
    g.add_argument('--pick_strong', type=int, nargs='+', default=None,
                   help='crops used as strongly augmented queries (default: all)')
    g.add_argument('--sym', type=int, choices=[0, 1], default=0,
                   help='1: also the key crop as a query, against the momentum keys of the first weak crop')
    args = parser.parse_args()

    if args.lr_decay_rate is not None:
        raise util.UserError("CLSA's schedule is a half cosine per epoch to 0: drop --lr_decay_rate")
    args.lr_decay_rate = 0.0  # the cosine ends at 0
    options.finish_options(args, force_warm=False)
    if args.lr_decay_epochs:
        raise util.UserError('CLSA\'s schedule is a half cosine per epoch: drop --lr_decay_epochs')
    args.cosine = True  # --cos is accepted, and implied
    if args.warm:  # --warm: linear warm-up to where the cosine stands after the warm-up epochs
        args.warmup_to = learning_rate(args, args.warm_epochs + 1)
    launched = 'RANK' in os.environ or int(os.environ.get('SLURM_STEP_NUM_TASKS', 1)) > 1  # torchrun, srun
    if args.multiprocessing_distributed is None:
        args.multiprocessing_distributed = torch.cuda.is_available() and args.gpu is None and not launched
    if (args.nodes > 1 or args.node_rank > 0) and not (args.multiprocessing_distributed or launched):
        raise util.UserError(f'--world_size {args.nodes} --rank {args.node_rank}: several nodes need one process '
                             f'per GPU on each (GPUs and --multiprocessing_distributed, or torchrun/srun)')
    args.nmb_crops = args.nmb_crops or [1] * len(CROP_FRACTIONS)
    args.size_crops = args.size_crops or [round(args.size * f) for f in CROP_FRACTIONS]
    args.min_scale_crops = args.min_scale_crops or [0.2, 0.172, 0.143, 0.114, 0.086]
    args.max_scale_crops = args.max_scale_crops or [1.0, 0.86, 0.715, 0.571, 0.429]
    every_crop = range(sum(args.nmb_crops))
    # in crop order, each once (the released code keeps them as sets)
    args.pick_weak = sorted(set(every_crop if args.pick_weak is None else args.pick_weak))
    args.pick_strong = sorted(set(every_crop if args.pick_strong is None else args.pick_strong))
    crops = '_'.join(f'{n}x{s}' for n, s in zip(args.nmb_crops, args.size_crops))
    picks = lambda pick: ''.join(map(str, pick))
    name = (f'CLSA_{args.dataset}_{args.model}_lr_{args.learning_rate}_decay_{args.weight_decay}'
            f'_bsz_{args.batch_size}_t_{args.moco_t}_m_{args.moco_m}_k_{args.moco_k}_alpha_{args.alpha}'
            f'_aug_{args.aug_times}_ct_{args.clsa_t}_crops_{crops}_weak_{picks(args.pick_weak)}'
            f'_strong_{picks(args.pick_strong)}_trial_{args.trial}')
    if args.sym:
        name += '_sym'
    options.name_run(args, name, 'CLSA')
    return args


def set_loader(args):
    mean, std = datasets.mean_std(args)
    try:
        views = augment.CLSATransform(args.size, args.nmb_crops, args.size_crops, args.min_scale_crops,
                                      args.max_scale_crops, args.pick_weak, args.pick_strong, args.aug_times,
                                      mean, std)
    except ValueError as e:
        raise util.UserError(str(e))
    train_set = datasets.image_dataset(args, True, views)
    # Every step enqueues a whole global batch: a partial last batch would break the queue's layout.
    return datasets.train_loader(train_set, args, drop_last=True), datasets.knn_loaders(args)


def set_model(args):
    trunk = build_trunk(args.model, stem=args.stem, width=args.width)
    model = EncoderWithHead(trunk, mlp_head(trunk.feat_dim, trunk.feat_dim, args.moco_dim))

    per_rank = args.batch_size // args.world_size
    if args.bn_splits is None:
        args.bn_splits = 8 if args.world_size == 1 and per_rank % 8 == 0 else 1
    if args.bn_splits > 1:
        if args.world_size > 1:
            raise util.UserError('--bn_splits emulates shuffle-BN on one process; with several, keys are '
                                 'shuffled across processes: drop --bn_splits')
        if per_rank % args.bn_splits:
            raise util.UserError(f'--batch_size {args.batch_size} is not divisible by --bn_splits {args.bn_splits}')
        model = convert_split_batchnorm(model, args.bn_splits)
    if args.moco_k % args.batch_size:
        raise util.UserError(f'--moco_k {args.moco_k} is not divisible by the global batch {args.batch_size}: '
                             f'the queue holds whole batches')

    model = distributed.distribute(model, args)
    momentum = MomentumEncoder(util.unwrap(model)).to(args.device)
    # One queue shared by all ranks, as MoCo's DDP-broadcast buffer: its random initial rows are rank 0's.
    queue = distributed.broadcast_from_rank0(Queue(args.moco_k, args.moco_dim).to(args.device))
    return model, momentum, queue


def learning_rate(args, epoch):
    """CLSA's per-epoch schedule: a half cosine from lr to 0, the first epoch at full lr."""
    return util.cosine_lr(args.learning_rate, (epoch - 1) / args.epochs)


def train(loader, model, momentum, queue, optimizer, scaler, guard, epoch, args):
    """One epoch; returns the average loss."""
    model.train()
    momentum.train()
    nce_loss, clsa_loss = BatchKeysMoCoLoss(args.moco_t), CLSALoss(args.clsa_t)
    batch_time, data_time = util.AverageMeter(), util.AverageMeter()
    losses, divergences = util.AverageMeter(), util.AverageMeter()
    timer = util.Timer()
    for idx, (crops, _) in enumerate(loader):
        data_time.update(timer.lap())
        crops = [distributed.to_device(c, args) for c in crops]
        key_crop, weak_crops = crops[0], crops[1:1 + len(args.pick_weak)]
        strong_crops = crops[1 + len(args.pick_weak):]
        bsz = key_crop.shape[0]
        util.warmup_learning_rate(args, epoch, idx, len(loader), optimizer)

        with util.autocast(args):
            # One forward per crop, as released: each crop's BatchNorm statistics are its own.
            q_weak = [model(c)[0] for c in weak_crops]
            q_strong = [model(c)[0] for c in strong_crops]
            if args.sym:
                q_key = model(key_crop)[0]
            with torch.no_grad():
                momentum.update(util.unwrap(model), args.moco_m)
                k = shuffled_forward(momentum, key_crop)[0]
                if args.sym:
                    k_first_weak = shuffled_forward(momentum, weak_crops[0])[0]
        # Keys of the global batch, in rank order: this rank's images are at rank * bsz.
        keys = distributed.gather(k.float())
        queue_keys, offset = queue.keys.clone(), args.rank * bsz
        # (queries, the keys their positives are among): every weak query against the key crop's keys;
        # with --sym, the key crop and the other weak crops also against the first weak crop's keys.
        branches = [(q_weak, keys)]
        if args.sym:
            branches.append((q_weak[1:] + [q_key], distributed.gather(k_first_weak.float())))
        nce = divergence = torch.zeros((), device=args.device)
        for queries, branch_keys in branches:
            for q in queries:
                nce = nce + nce_loss(q, branch_keys, queue_keys, offset)
                for q_s in q_strong:
                    divergence = divergence + clsa_loss(q, q_s, branch_keys, queue_keys)
        loss = nce + args.alpha * divergence

        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        queue.enqueue(keys)

        # the mean over ranks: every rank prints the same, and a non-finite loss anywhere stops all
        mean_loss, mean_divergence = distributed.reduce_mean(torch.stack([loss.detach(), divergence.detach()]))
        guard.update(mean_loss, idx + 1)
        losses.update(mean_loss, bsz)
        divergences.update(mean_divergence, bsz)
        batch_time.update(timer.lap())
        if (idx + 1) % args.print_freq == 0:
            guard.check(epoch, args.last_good)
            util.print_step(epoch, idx + 1, len(loader), batch_time, data_time, {'loss': losses, 'ddm': divergences})
    guard.check(epoch, args.last_good)
    return losses.avg, divergences.avg


def main():
    args = parse_option()
    ckpt = distributed.start(args)
    loader, knn = set_loader(args)
    model, momentum, queue = set_model(args)
    optimizer = torch.optim.SGD(model.parameters(), lr=args.learning_rate, momentum=args.momentum,
                                weight_decay=args.weight_decay)
    scaler = util.grad_scaler(args)
    extra = {'momentum': momentum, 'queue': queue}
    missing = [key for key in extra if ckpt and key not in ckpt]
    if missing:  # not a MoCo-family checkpoint
        raise util.UserError(f'--resume {ckpt["path"]} has no {" or ".join(missing)}: resume a main_clsa.py checkpoint')
    start_epoch = util.restore(ckpt, args, model, optimizer, scaler)
    if ckpt:
        for key, module in extra.items():
            util.load_state(module, ckpt[key], f'--resume {ckpt["path"]} ({key})')
    logger = util.Logger(args.tb_folder)
    guard = util.NonFiniteGuard(args.device)

    def monitor(epoch):
        acc = knn_accuracy(util.unwrap(model).encoder, *knn, args)
        if util.is_main():
            print(f'epoch {epoch}, kNN accuracy {acc:.2f}')
        logger.log(epoch, knn_accuracy=acc)

    if knn and start_epoch == 1:
        monitor(0)  # the randomly initialised trunk: the baseline training must beat
    for epoch in range(start_epoch, args.epochs + 1):
        loader.sampler.set_epoch(epoch)
        util.set_lr(optimizer, learning_rate(args, epoch))
        start = time.time()
        loss, divergence = train(loader, model, momentum, queue, optimizer, scaler, guard, epoch, args)
        seconds = time.time() - start
        images_per_s = len(loader) * args.batch_size / seconds
        if util.is_main():
            print(f'epoch {epoch}, total time {seconds:.2f}, loss {loss:.4f}, ddm {divergence:.4f}, '
                  f'{images_per_s:.0f} images/s')
        logger.log(epoch, loss=loss, ddm_loss=divergence, learning_rate=optimizer.param_groups[0]['lr'],
                   images_per_s=images_per_s)
        if knn and (epoch % args.knn_freq == 0 or epoch == args.epochs):
            monitor(epoch)
        util.save_epoch(args, epoch, method='CLSA', model=model, optimizer=optimizer, scaler=scaler,
                        **{key: m.state_dict() for key, m in extra.items()})


if __name__ == '__main__':
    util.run(main)
