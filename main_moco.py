"""MoCo v2 pretraining (He et al. 2020; Chen et al. 2020) with the options of "Revisiting
Contrastive Methods for Unsupervised Learning of Visual Representations" (Van Gansbeke et al.
2021): multi-scale constrained cropping, AutoAugment on chosen crops, and the kNN loss.

    python main_moco.py --dataset imagenet --data_folder DIR --mlp --moco_t 0.2 --aug_plus --cos
    python main_moco.py -a resnet50 --lr 0.3 --batch-size 256 DIR --mlp --moco-t 0.2 --cos --moco-m 0.995 \
        --size_crops 160 96 --min_scale_crops 0.2 0.05 --max_scale_crops 1.0 0.14 --num_crops 2 4 \
        --constrained-cropping --auto-augment 0 2 3 4 5 --aux-topk 20 --aux-weight 0.4
"""
import argparse
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

import augment
import datasets
import distributed
import gpu_augment
import options
import util
from evaluation import knn_accuracy
from losses import KNNLoss, MoCoLoss
from networks.heads import EncoderWithHead, mlp_head
from networks.momentum import MomentumEncoder, Queue, convert_split_batchnorm, shuffled_forward
from networks.resnet_big import build_trunk


def parse_option():
    parser = argparse.ArgumentParser(description='MoCo v2 pretraining with the Revisiting-contrastive options')
    options.add_common_options(parser, batch_size=256, learning_rate=0.03, lr_decay_epochs='120,160',
                               lr_decay_rate=0.1, weight_decay=1e-4, epochs=200)
    parser.set_defaults(dataset='imagenet', size=224)
    options.add_knn_options(parser)
    options.add_launcher_options(parser)
    parser.add_argument('data', nargs='?', default=None, help='dataset folder, as MoCo takes it (= --data_folder)')
    parser.add_argument('--schedule', type=int, nargs='*', default=None,
                        help="MoCo's spelling of --lr_decay_epochs: epochs where lr drops 10x")

    g = parser.add_argument_group('MoCo')
    g.add_argument('--moco_dim', '--moco-dim', type=int, default=128, help='key dimension')
    g.add_argument('--moco_k', '--moco-k', type=int, default=65536, help='queue size')
    g.add_argument('--moco_m', '--moco-m', type=float, default=0.999, help='key-encoder momentum')
    g.add_argument('--moco_t', '--moco-t', type=float, default=0.07, help='softmax temperature')
    g.add_argument('--mlp', action='store_true', help='MoCo v2 head: 2-layer MLP instead of a linear layer')
    g.add_argument('--aug_plus', '--aug-plus', action='store_true', help='MoCo v2 augmentation (blur, SimCLR jitter)')
    g.add_argument('--bn_splits', type=int, default=None,
                   help='one process: BatchNorm statistics over this many sub-batches, keys shuffled '
                        'between them (MoCo\'s single-GPU shuffle-BN; default 8 when the batch allows)')

    g = parser.add_argument_group('Revisiting contrastive methods')
    g.add_argument('--nmb_crops', '--num_crops', type=int, nargs='+', default=None,
                   help='crops per resolution (default 2): the first two large crops are query and key')
    g.add_argument('--size_crops', type=int, nargs='+', default=None, help='crop sizes (default --size)')
    g.add_argument('--min_scale_crops', type=float, nargs='+', default=None, help='default 0.2')
    g.add_argument('--max_scale_crops', type=float, nargs='+', default=None, help='default 1.0')
    g.add_argument('--constrained_cropping', '--constrained-cropping', action='store_true',
                   help='small crops overlap the key crop')
    g.add_argument('--auto_augment', '--auto-augment', type=int, nargs='+', default=[],
                   help='crop indices that get AutoAugment half of the time (never 1, the key)')
    g.add_argument('--aux_topk', '--aux-topk', type=int, default=50, help='neighbours of the kNN loss')
    g.add_argument('--aux_weight', '--aux-weight', type=float, default=0.0, help='weight of the kNN loss (0 = off)')
    args = parser.parse_args()

    if args.data is not None:
        args.data_folder = args.data
    if args.schedule is not None:
        args.lr_decay_epochs = ','.join(map(str, args.schedule))
    options.finish_options(args, force_warm=False)
    if args.warm:  # --warm: linear warm-up to where MoCo's schedule stands after the warm-up epochs
        args.warmup_to = learning_rate(args, args.warm_epochs + 1)
    # Any crop option selects the Revisiting multi-crop pipeline (MoCo v2 augmentation per crop),
    # as the released code's scripts do for the baseline too.
    args.multi_crop = any(getattr(args, k) is not None for k in
                          ('nmb_crops', 'size_crops', 'min_scale_crops', 'max_scale_crops'))
    args.multi_crop |= args.constrained_cropping or bool(args.auto_augment)
    args.nmb_crops = args.nmb_crops or [2]
    args.size_crops = args.size_crops or [args.size] * len(args.nmb_crops)
    args.min_scale_crops = args.min_scale_crops or [0.2] * len(args.nmb_crops)
    args.max_scale_crops = args.max_scale_crops or [1.0] * len(args.nmb_crops)
    name = (f'MoCo_{args.dataset}_{args.model}_lr_{args.learning_rate}_decay_{args.weight_decay}'
            f'_bsz_{args.batch_size}_t_{args.moco_t}_m_{args.moco_m}_k_{args.moco_k}_trial_{args.trial}')
    if args.mlp:
        name += '_mlp'
    if args.aug_plus:
        name += '_augplus'
    if args.multi_crop:
        name += '_crops_' + '_'.join(f'{n}x{s}' for n, s in zip(args.nmb_crops, args.size_crops))
    if args.constrained_cropping:
        name += '_constrained'
    if args.auto_augment:
        name += '_autoaug'
    if args.aux_weight > 0:
        name += f'_knn_{args.aux_topk}_{args.aux_weight}'
    options.name_run(args, name, 'MoCo')
    return args


def set_loader(args):
    mean, std = datasets.mean_std(args)
    if args.gpu_aug:
        return device_loader(args, mean, std), datasets.knn_loaders(args)
    try:
        if args.multi_crop:
            views = augment.MultiCropTransform(args.nmb_crops, args.size_crops, args.min_scale_crops,
                                               args.max_scale_crops, mean, std, args.constrained_cropping,
                                               args.auto_augment)
        else:
            views = augment.TwoCropTransform(augment.moco_transform(args.size, mean, std, args.aug_plus))
    except ValueError as e:
        raise util.UserError(str(e))
    if args.multi_crop and not args.aug_plus and util.is_main():
        print('note: multi-crop views always use the MoCo v2 augmentation')
    train_set = datasets.image_dataset(args, True, views)
    # Every step enqueues a whole global batch: a partial last batch would break the queue's layout.
    return datasets.train_loader(train_set, args, drop_last=True), datasets.knn_loaders(args)


def device_loader(args, mean, std):
    """--gpu_aug: MoCo v2's views (two crops, or the multi-crop groups) drawn on the device."""
    if not args.aug_plus and not args.multi_crop:
        raise util.UserError('--gpu_aug serves MoCo v2\'s augmentation: add --aug_plus (or drop --gpu_aug for v1\'s)')
    if args.constrained_cropping or args.auto_augment:
        raise util.UserError('--gpu_aug has no constrained cropping or AutoAugment: drop --gpu_aug or those options')
    try:
        augment.MultiCropTransform(args.nmb_crops, args.size_crops, args.min_scale_crops, args.max_scale_crops,
                                   mean, std)  # checks the crop options
    except ValueError as e:
        raise util.UserError(str(e))
    views = [gpu_augment.moco_v2_view(size, mean, std, (lo, hi)) for n, size, lo, hi in
             zip(args.nmb_crops, args.size_crops, args.min_scale_crops, args.max_scale_crops) for _ in range(n)]
    train_set = datasets.image_dataset(args, True, None)
    return datasets.train_loader(train_set, args, drop_last=True, device_views=views)


def set_model(args):
    trunk = build_trunk(args.model, stem=args.stem, width=args.width)
    head = (mlp_head(trunk.feat_dim, trunk.feat_dim, args.moco_dim) if args.mlp
            else nn.Linear(trunk.feat_dim, args.moco_dim))
    model = EncoderWithHead(trunk, head)

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
    queue_backbone = (distributed.broadcast_from_rank0(Queue(args.moco_k, trunk.feat_dim).to(args.device))
                      if args.aux_weight > 0 else None)
    return model, momentum, queue, queue_backbone


def learning_rate(args, epoch):
    """MoCo's per-epoch schedule: a half cosine from lr to 0 (the first epoch at full lr), or x0.1
    after each milestone."""
    if args.cosine:
        return util.cosine_lr(args.learning_rate, (epoch - 1) / args.epochs)
    return util.step_lr(args.learning_rate, epoch, args.lr_decay_epochs, args.lr_decay_rate)


def train(loader, model, momentum, queue, queue_backbone, optimizer, scaler, guard, epoch, args):
    """One epoch; returns the average loss."""
    model.train()
    momentum.train()
    moco_loss, knn_loss = MoCoLoss(args.moco_t), KNNLoss(args.aux_topk, args.moco_t)
    batch_time, data_time, losses = util.AverageMeter(), util.AverageMeter(), util.AverageMeter()
    timer = util.Timer()
    for idx, (crops, _) in enumerate(loader):
        data_time.update(timer.lap())
        crops = [distributed.to_device(c, args) for c in crops]
        query_crops, key_crop = crops[:1] + crops[2:], crops[1]
        bsz = key_crop.shape[0]
        util.warmup_learning_rate(args, epoch, idx, len(loader), optimizer)

        with util.autocast(args):
            q, q_trunk = model(query_crops)  # [bsz * (crops - 1), D], crop-major
            with torch.no_grad():
                momentum.update(util.unwrap(model), args.moco_m)
                k, k_trunk = shuffled_forward(momentum, key_crop)
        keys = k.repeat(len(query_crops), 1)  # every query crop's positive is its image's key
        loss = moco_loss(q, keys, queue.keys.clone())
        if queue_backbone is not None:
            aux = knn_loss(q, F.normalize(q_trunk.float(), dim=1), queue.keys.clone(), queue_backbone.keys.clone())
            loss = loss + args.aux_weight * aux

        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        queue.enqueue(distributed.gather(k.float()))
        if queue_backbone is not None:  # enqueued with the same batches, so row-aligned with `queue`
            queue_backbone.enqueue(distributed.gather(F.normalize(k_trunk.float(), dim=1)))

        # the mean over ranks: every rank prints the same, and a non-finite loss anywhere stops all
        mean_loss = distributed.reduce_mean(loss.detach())
        guard.update(mean_loss, idx + 1)
        losses.update(mean_loss, bsz)
        batch_time.update(timer.lap())
        if (idx + 1) % args.print_freq == 0:
            guard.check(epoch, args.last_good)
            util.print_step(epoch, idx + 1, len(loader), batch_time, data_time, {'loss': losses})
    guard.check(epoch, args.last_good)
    return losses.avg


def main():
    args = parse_option()
    ckpt = distributed.start(args)
    loader, knn = set_loader(args)
    model, momentum, queue, queue_backbone = set_model(args)
    optimizer = torch.optim.SGD(model.parameters(), lr=args.learning_rate, momentum=args.momentum,
                                weight_decay=args.weight_decay, **util.fused(args))
    scaler = util.grad_scaler(args)
    extra = {'momentum': momentum, 'queue': queue, 'queue_backbone': queue_backbone}
    missing = [key for key, module in extra.items() if ckpt and module is not None and key not in ckpt]
    if missing:  # not a MoCo checkpoint, or one trained without the kNN loss's queue_backbone
        raise util.UserError(f'--resume {ckpt["path"]} has no {" or ".join(missing)}: resume a main_moco.py '
                             f'checkpoint trained with the same options (--aux_weight > 0 or not)')
    start_epoch = util.restore(ckpt, args, model, optimizer, scaler)
    if ckpt:
        for key, module in extra.items():
            if module is not None:
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
        loss = train(loader, model, momentum, queue, queue_backbone, optimizer, scaler, guard, epoch, args)
        seconds = time.time() - start
        images_per_s = len(loader) * args.batch_size / seconds
        if util.is_main():
            print(f'epoch {epoch}, total time {seconds:.2f}, loss {loss:.4f}, {images_per_s:.0f} images/s')
        logger.log(epoch, loss=loss, learning_rate=optimizer.param_groups[0]['lr'], images_per_s=images_per_s)
        if knn and (epoch % args.knn_freq == 0 or epoch == args.epochs):
            monitor(epoch)
        util.save_epoch(args, epoch, method='MoCo', model=model, optimizer=optimizer, scaler=scaler,
                        **{key: m.state_dict() for key, m in extra.items() if m is not None})


if __name__ == '__main__':
    util.run(main)
