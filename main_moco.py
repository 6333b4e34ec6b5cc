"""MoCo v2 pretraining (He et al. 2020; Chen et al. 2020) with the options of "Revisiting
Contrastive Methods for Unsupervised Learning of Visual Representations" (Van Gansbeke et al.
2021): multi-scale constrained cropping, AutoAugment on chosen crops, and the kNN loss.

    python main_moco.py --dataset imagenet --data_folder DIR --mlp --moco_t 0.2 --aug_plus --cos
    python main_moco.py -a resnet50 --lr 0.3 --batch-size 256 DIR --mlp --moco-t 0.2 --cos --moco-m 0.995 \
        --size_crops 160 96 --min_scale_crops 0.2 0.05 --max_scale_crops 1.0 0.14 --num_crops 2 4 \
        --constrained-cropping --auto-augment 0 2 3 4 5 --aux-topk 20 --aux-weight 0.4
    # videos (rhoMoCo, Feichtenhofer et al. CVPR 2021): clip 0 of each video is the query, its
    # --num_clips - 1 other clips the keys (the loss averaged over them, every key enqueued)
    python main_moco.py --dataset kinetics --data_folder DIR --model r3d50 --num_clips 4 --num_frames 8 \
        --mlp --moco_t 0.1 --moco_m 0.994 --moco_m_cos --cos
"""
import os

import torch
import torch.nn as nn
import torch.nn.functional as F

import augment
import datasets
import distributed
import gpu_loaders
import gpu_strong
import gpu_views
import optim
import options
import pretraining
import util
import video_augment
import video_options
from losses import KNNLoss, MoCoLoss
from networks.heads import EncoderWithHead, mlp_head
from networks.momentum import Queue, convert_split_batchnorm, cosine_momentum, shuffled_forward
from networks.resnet_big import build_trunk
from video_datasets import VIDEO_DATASETS, video_dataset

# the options of the image views (MoCo v2's and Revisiting's crops), which a video run refuses
IMAGE_VIEW_OPTIONS = ('aug_plus', 'nmb_crops', 'size_crops', 'min_scale_crops', 'max_scale_crops',
                      'constrained_cropping', 'auto_augment')


def parse_option():
    parser = options.parser('MoCo v2 pretraining with the Revisiting-contrastive options')
    options.add_common_options(parser, batch_size=256, learning_rate=0.03, lr_decay_epochs='120,160',
                               lr_decay_rate=0.1, weight_decay=1e-4, epochs=200, size=224)
    parser.set_defaults(dataset='imagenet')
    options.add_knn_options(parser)
    options.add_launcher_options(parser, per_node=True)
    parser.add_argument('data', nargs='?', default=None, help='dataset folder, as MoCo takes it (= --data_folder)')
    parser.add_argument('--schedule', type=int, nargs='*', default=None,
                        help="MoCo's spelling of --lr_decay_epochs: epochs where lr drops 10x")

    g = parser.add_argument_group('MoCo')
    g.add_argument('--moco_dim', '--moco-dim', type=int, default=128, help='key dimension')
    g.add_argument('--moco_k', '--moco-k', type=int, default=65536, help='queue size')
    g.add_argument('--moco_m', '--moco-m', type=float, default=0.999, help='key-encoder momentum')
    g.add_argument('--moco_m_cos', '--moco-m-cos', action='store_true',
                   help='the momentum rises from --moco_m to 1 along a half cosine over the run, per step '
                        '(MoCo v3\'s spelling; PySlowFast\'s MOMENTUM_ANNEALING)')
    g.add_argument('--moco_t', '--moco-t', type=float, default=0.07, help='softmax temperature')
    g.add_argument('--mlp', action='store_true', help='MoCo v2 head: 2-layer MLP instead of a linear layer')
    g.add_argument('--mlp_layers', type=int, default=2,
                   help='--mlp: its Linear layers, hidden ones of the trunk\'s width (PySlowFast: 3)')
    g.add_argument('--aug_plus', '--aug-plus', action='store_true', help='MoCo v2 augmentation (blur, SimCLR jitter)')
    g.add_argument('--bn_splits', type=int, default=8,
                   help='one process: BatchNorm statistics over this many sub-batches, keys shuffled between '
                        'them (MoCo\'s single-GPU shuffle-BN; 1 = off); several processes shuffle across them')

    g = parser.add_argument_group('Revisiting contrastive methods')
    g.add_argument('--nmb_crops', '--num_crops', type=int, nargs='+', default=[2],
                   help='crops per resolution: the first two large crops are query and key; any crop option '
                        'selects the multi-crop pipeline')
    g.add_argument('--size_crops', type=int, nargs='+', default=None, help='crop sizes (default: --size each)')
    g.add_argument('--min_scale_crops', type=float, nargs='+', default=None, help='default: 0.2 each')
    g.add_argument('--max_scale_crops', type=float, nargs='+', default=None, help='default: 1.0 each')
    g.add_argument('--constrained_cropping', '--constrained-cropping', action='store_true',
                   help='small crops overlap the key crop')
    g.add_argument('--auto_augment', '--auto-augment', type=int, nargs='+', default=[],
                   help='crop indices that get AutoAugment half of the time (never 1, the key)')
    g.add_argument('--aux_topk', '--aux-topk', type=int, default=50, help='neighbours of the kNN loss (with --aux_weight)')
    g.add_argument('--aux_weight', '--aux-weight', type=float, default=0.0, help='weight of the kNN loss (0 = off)')
    video_options.add_video_options(parser, num_clips=True)
    args, given = options.parse(parser)

    if args.data is not None:
        options.refuse(given, ('data_folder',), 'the positional data folder names it already; give one of them')
        args.data_folder = args.data
        if 'dataset' not in given:  # MoCo's ImageNet root (train/, val/), or Revisiting's COCO train2017/
            args.dataset = 'imagenet' if os.path.isdir(os.path.join(args.data, 'train')) else 'path'
    if args.schedule is not None:
        options.refuse(given, ('lr_decay_epochs',), '--schedule is MoCo\'s spelling of it; give one of them')
        args.lr_decay_epochs = ','.join(map(str, args.schedule))
    options.check_schedule(args, given)
    if args.cosine:
        options.refuse(given, ('lr_decay_rate',), "MoCo's cosine ends at 0; drop it or --cos")
    if args.aux_weight <= 0:
        options.refuse(given, ('aux_topk',), 'the kNN loss is off; give --aux-weight > 0 with it')
    options.check_launcher(args, given)
    options.per_node_batch(args, given)
    options.finish_options(args, given)
    options.resolve_bn_splits(args, given)
    video_options.check_video_pretraining(args, given, IMAGE_VIEW_OPTIONS)
    # Any crop option selects the Revisiting multi-crop pipeline (MoCo v2 augmentation per crop),
    # as the released code's scripts do for the baseline too.
    args.multi_crop = bool(given & {'nmb_crops', 'size_crops', 'min_scale_crops', 'max_scale_crops',
                                    'constrained_cropping', 'auto_augment'})
    args.size_crops = args.size_crops or [args.size] * len(args.nmb_crops)
    args.min_scale_crops = args.min_scale_crops or [0.2] * len(args.nmb_crops)
    args.max_scale_crops = args.max_scale_crops or [1.0] * len(args.nmb_crops)
    if args.moco_k % args.batch_size:
        raise util.UserError(f'--moco_k {args.moco_k} is not divisible by the global batch {args.batch_size}: '
                             f'the queue holds whole batches')
    name = (f'MoCo_{args.dataset}_{args.model}_lr_{args.learning_rate}_decay_{args.weight_decay}'
            f'_bsz_{args.batch_size}_t_{args.moco_t}_m_{args.moco_m}_k_{args.moco_k}_trial_{args.trial}')
    if args.mlp:
        name += '_mlp' + (f'{args.mlp_layers}' if args.mlp_layers != 2 else '')
    else:
        options.refuse(given, ('mlp_layers',), 'it shapes the --mlp head; add --mlp')
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
    if args.moco_m_cos:
        name += '_mcos'
    name += video_options.video_run_name(args)
    options.name_run(args, name, 'MoCo')
    return args


def set_loader(args):
    mean, std = datasets.mean_std(args)
    if args.dataset in VIDEO_DATASETS:  # rhoMoCo: --num_clips clips at independent times, one view each
        on_device = options.gpu_aug_on(args)  # workers decode, the device draws each clip's view
        view = gpu_loaders.raw_clip if on_device else video_augment.rho_clip_view(args.size, mean, std)
        train_set = video_dataset(args, True, [view] * args.num_clips)
        device_views = [gpu_views.rho_clip_device_view(args.size, mean, std)] * args.num_clips
        return (datasets.train_loader(train_set, args, drop_last=True, device_views=device_views),
                datasets.knn_loaders(args))
    in_memory = args.dataset in datasets.IN_MEMORY
    if options.gpu_aug_on(args, (args.aug_plus or args.multi_crop) and (in_memory or not args.constrained_cropping)):
        return device_loader(args, mean, std), datasets.knn_loaders(args)
    if args.multi_crop:
        views = augment.MultiCropTransform(args.nmb_crops, args.size_crops, args.min_scale_crops,
                                           args.max_scale_crops, mean, std, args.constrained_cropping,
                                           args.auto_augment)
    else:
        views = augment.TwoCropTransform(augment.moco_transform(args.size, mean, std, args.aug_plus))
    if args.multi_crop and not args.aug_plus and util.is_main():
        print('note: multi-crop views always use the MoCo v2 augmentation')
    train_set = datasets.image_dataset(args, True, views)
    # Every step enqueues a whole global batch: a partial last batch would break the queue's layout.
    return datasets.train_loader(train_set, args, drop_last=True), datasets.knn_loaders(args)


def device_loader(args, mean, std):
    """--gpu_aug: MoCo v2's views (two crops, or the multi-crop groups) drawn on the device."""
    if not args.aug_plus and not args.multi_crop:
        raise util.UserError('--gpu_aug serves MoCo v2\'s augmentation: add --aug_plus (or drop --gpu_aug for v1\'s)')
    if args.constrained_cropping and args.dataset not in datasets.IN_MEMORY:
        raise util.UserError(f'--gpu_aug draws constrained crops of in-memory datasets only '
                             f'({", ".join(datasets.IN_MEMORY)}): drop --gpu_aug or --constrained_cropping')
    views = gpu_strong.multi_crop_device_views(args.nmb_crops, args.size_crops, args.min_scale_crops,
                                               args.max_scale_crops, mean, std, args.constrained_cropping,
                                               args.auto_augment)
    train_set = datasets.image_dataset(args, True, None)
    return datasets.train_loader(train_set, args, drop_last=True, device_views=views)


def set_model(args):
    """The online encoder (trunk + head), its momentum copy, the queue (and the kNN loss's queue of
    trunk features)."""
    trunk = build_trunk(args.model, stem=args.stem, width=args.width)
    head = (mlp_head(trunk.feat_dim, trunk.feat_dim, args.moco_dim, num_layers=args.mlp_layers) if args.mlp
            else nn.Linear(trunk.feat_dim, args.moco_dim))
    model = EncoderWithHead(trunk, head)
    if args.bn_splits > 1:
        model = convert_split_batchnorm(model, args.bn_splits)
    momentum_encoder = distributed.momentum_copy(model, args)  # before --syncBN converts the online encoder
    model = distributed.distribute(model, args)
    # One queue shared by all ranks, as MoCo's DDP-broadcast buffer: its random initial rows are rank 0's.
    queue = distributed.broadcast_from_rank0(Queue(args.moco_k, args.moco_dim).to(args.device))
    queue_backbone = (distributed.broadcast_from_rank0(Queue(args.moco_k, trunk.feat_dim).to(args.device))
                      if args.aux_weight > 0 else None)
    return model, momentum_encoder, queue, queue_backbone


def lr_at(args, epoch, step, steps):
    """MoCo's per-epoch schedule: a half cosine from lr to 0 (--cos; the first epoch at full lr), or
    x0.1 after each of --lr_decay_epochs (--schedule); --warm: per step from --warmup_from to where
    it stands after the --warm_epochs."""
    def epoch_lr(e):
        if args.cosine:
            return optim.cosine(args.learning_rate, (e - 1) / args.epochs)
        return optim.step_decay(args.learning_rate, e, args.lr_decay_epochs, args.lr_decay_rate)
    if args.warm and epoch <= args.warm_epochs:
        return optim.warm_up(epoch_lr(args.warm_epochs + 1), epoch, step, steps, args)
    return epoch_lr(epoch)


def momentum_at(args, step, total_steps):
    """The key encoder's momentum: --moco_m, or with --moco_m_cos rising along a half cosine to 1."""
    return cosine_momentum(args.moco_m, step, total_steps) if args.moco_m_cos else args.moco_m


def split_crops(crops, args):
    """(query crops, key crops). Images: crop 1 is the key, the others are queries (Revisiting's small
    crops too); videos (rhoMoCo): clip 0 is the query, the other --num_clips - 1 clips are keys."""
    if args.dataset in VIDEO_DATASETS:
        return crops[:1], crops[1:]
    return crops[:1] + crops[2:], crops[1:2]


def pairs_loss(criterion, q, k, queue, queries, keys):
    """criterion over every pair of a query crop and a key crop of the same image: q holds `queries`
    crops and k `keys` crops ([bsz * crops, D], crop-major), one of the two counts being 1 (images:
    each query crop against the one key; videos: the one query clip against each key clip, as
    rhoMoCo). All pairs share the queue, so one cross-entropy over the stacked pairs is their mean."""
    return criterion(q.repeat(keys, 1), k.repeat(queries, 1), queue)


def train(loader, model, momentum_encoder, queue, queue_backbone, optimizer, scaler, epoch, args):
    """One epoch; returns its progress (average loss, time, images)."""
    model.train()
    momentum_encoder.train()
    moco_loss, knn_loss = MoCoLoss(args.moco_t), KNNLoss(args.aux_topk, args.moco_t)
    steps = len(loader)
    progress = util.EpochProgress(epoch, steps, args)
    for idx, (crops, _) in enumerate(loader):
        progress.data_ready()
        crops = [distributed.to_device(c, args) for c in crops]
        query_crops, key_crops = split_crops(crops, args)
        bsz = crops[0].shape[0]
        optim.set_lr(optimizer, lr_at(args, epoch, idx, steps))

        with util.autocast(args):
            q, q_trunk = model(query_crops)  # [bsz * query crops, D], crop-major
            with torch.no_grad():
                momentum_encoder.update(util.unwrap(model), momentum_at(args, (epoch - 1) * steps + idx,
                                                                        args.epochs * steps))
                # each key clip on its own, as PySlowFast's SEQUENTIAL: BatchNorm statistics per clip
                k, k_trunk = (torch.cat(out) for out in zip(*(shuffled_forward(momentum_encoder, c)
                                                              for c in key_crops)))
        loss = pairs_loss(moco_loss, q, k, queue.keys.clone(), len(query_crops), len(key_crops))
        if queue_backbone is not None:
            aux = knn_loss(q, F.normalize(q_trunk.float(), dim=1), queue.keys.clone(), queue_backbone.keys.clone())
            loss = loss + args.aux_weight * aux

        optim.step(optimizer, scaler, loss)
        # every key clip's batch in turn, as PySlowFast's MOCO_MULTI_VIEW_QUEUE (an image has one)
        for key, key_trunk in zip(k.split(bsz), k_trunk.split(bsz)):
            queue.enqueue(distributed.gather(key.float()))
            if queue_backbone is not None:  # enqueued with the same batches, so row-aligned with `queue`
                queue_backbone.enqueue(distributed.gather(F.normalize(key_trunk.float(), dim=1)))
        progress.step(idx, bsz, loss=loss)
    return progress.end()


def main():
    args = parse_option()
    ckpt = distributed.start(args)
    model, momentum_encoder, queue, queue_backbone = set_model(args)  # before the data, as MoCo's code does
    loader, knn_loaders = set_loader(args)
    optimizer = optim.build_optimizer(model.parameters(), args)
    state = {'momentum_encoder': momentum_encoder, 'queue': queue, 'queue_backbone': queue_backbone}
    run = pretraining.Run(args, ckpt, 'MoCo', model, optimizer, knn_loaders, state)

    for epoch in run.epochs():
        loader.sampler.set_epoch(epoch)
        progress = train(loader, model, momentum_encoder, queue, queue_backbone, optimizer, run.scaler, epoch, args)
        run.end_epoch(epoch, progress, momentum=momentum_at(args, epoch * len(loader) - 1, args.epochs * len(loader)))


if __name__ == '__main__':
    util.run(main)
