"""SCE pretraining: Similarity Contrastive Estimation (Denize et al., WACV 2023).

The online branch (trunk -> projector -> predictor) learns to match a soft target: the one-hot
label of InfoNCE mixed with the momentum key's own similarities to a queue of past keys.

    # ResNet-50 on ImageNet, 2x224, 200 epochs (the SCE paper's run), LARS, batch 4096, 8 GPUs:
    torchrun --nproc_per_node=8 main_sce.py --dataset imagenet --data_folder DIR --syncBN --amp bf16
    # + multi-crop 2x224 + 192 + 160 + 128 + 96:
    torchrun --nproc_per_node=8 main_sce.py --dataset imagenet --data_folder DIR --syncBN --amp bf16 \\
        --nmb_crops 2 1 1 1 1 --size_crops 224 192 160 128 96 \\
        --min_scale_crops 0.2 0.172 0.143 0.114 0.086 --max_scale_crops 1.0 0.86 0.715 0.571 0.429
    # the CIFAR-10 recipe: ResNet-18, SGD, queue 4096, weak view -> momentum encoder
    python main_sce.py --dataset cifar10

    # videos (SCE for images and videos, MVAP 2023): R3D-18 on Kinetics-200 (the default recipe of a video --dataset), R3D-50 on
    # Kinetics-400 with 8 or 16 frames; two clips per video, batch 512, LARS, sync-BN
    torchrun --nproc_per_node=8 main_sce.py --dataset kinetics --data_folder DIR --syncBN --amp bf16
    torchrun --nproc_per_node=8 main_sce.py --recipe r3d50_kinetics400 --dataset kinetics --data_folder DIR \\
        --num_frames 16 --syncBN --amp bf16

--recipe picks the defaults of a released configuration (imagenet, or cifar for the small-image
datasets, r3d18_kinetics200 for videos); any flag given overrides them.

As in eztorch's released configs (`mutual_pass: False`), every crop goes through trunk, projector
and predictor on its own, in the online and in the momentum branch, so each BatchNorm normalises
(and updates its running statistics) per crop. --mutual_pass pools them instead, faster: the online
branch's crops of one resolution share a trunk call and the heads see all its crops at once, and
(without --shuffle_bn) the key crops go through the momentum encoder as one batch. Shuffle-BN on
one process (--bn_splits) splits only the momentum encoder's BatchNorm, as released; the
predictor's last Linear has no bias (`last_bias: False`).
"""
import argparse

import torch

import augment
import datasets
import distributed
import gpu_loaders
import gpu_views
import optim
import options
import pretraining
import util
import video_augment
import video_options
from losses import SCELoss
from networks.heads import EncoderWithHead, mlp_head
from networks.momentum import (MomentumEncoder, Queue, convert_split_batchnorm, cosine_momentum,
                               shuffled_forward)
from networks.resnet_big import build_trunk
from video_datasets import VIDEO_DATASETS, video_dataset


# The released configurations. learning_rate is per 256 images: the run uses lr * batch_size / 256.
RECIPES = {
    # resnet50_imagenet.yaml: LARS, 10 warm-up epochs, symmetric loss, sync-BN, no shuffle-BN
    'imagenet': dict(model='resnet50', size=224, batch_size=4096, learning_rate=0.3, weight_decay=1e-6,
                     epochs=200, optimizer='lars', warmup_epochs=10, initial_momentum=0.99,
                     momentum_schedule='cosine', sym=True, temp=0.1, temp_m=0.07, coeff=0.5,
                     queue_size=65536, proj_hidden=4096, proj_dim=256, proj_layers=3, proj_last_bn=True,
                     pred_hidden=4096, pred_layers=2, shuffle_bn=False),
    # the paper's CIFAR setting: ResNet-18, SGD, weak view for the target, strong one for the online branch
    'cifar': dict(model='resnet18', size=32, batch_size=256, learning_rate=0.06, weight_decay=5e-4,
                  epochs=200, optimizer='sgd', warmup_epochs=5, initial_momentum=0.99,
                  momentum_schedule='constant', sym=False, temp=0.1, temp_m=0.05, coeff=0.5,
                  queue_size=4096, proj_hidden=512, proj_dim=128, proj_layers=2, proj_last_bn=False,
                  pred_hidden=512, pred_layers=0, shuffle_bn=True),
    # the video configurations (resnet3d18_kinetics200.yaml, resnet3d50_kinetics400.yaml): two clips of
    # --num_frames, LARS lr 2.4 per 256 (4.8 at batch 512), 35 warm-up epochs, temp_m 0.05; no kNN
    # monitor by default (--knn_freq N: one clip per video, but over a whole split)
    'r3d18_kinetics200': dict(model='r3d18', size=224, batch_size=512, learning_rate=2.4, weight_decay=1e-6,
                              epochs=200, optimizer='lars', warmup_epochs=35, initial_momentum=0.99,
                              momentum_schedule='cosine', sym=True, temp=0.1, temp_m=0.05, coeff=0.5,
                              queue_size=32768, proj_hidden=1024, proj_dim=256, proj_layers=3, proj_last_bn=True,
                              pred_hidden=1024, pred_layers=2, shuffle_bn=False, knn_freq=0),
    'r3d50_kinetics400': dict(model='r3d50', size=224, batch_size=512, learning_rate=2.4, weight_decay=1e-6,
                              epochs=200, optimizer='lars', warmup_epochs=35, initial_momentum=0.99,
                              momentum_schedule='cosine', sym=True, temp=0.1, temp_m=0.05, coeff=0.5,
                              queue_size=65536, proj_hidden=4096, proj_dim=256, proj_layers=3, proj_last_bn=True,
                              pred_hidden=4096, pred_layers=2, shuffle_bn=False, knn_freq=0),
}
SMALL_IMAGE_DATASETS = ('cifar10', 'cifar100', 'stl10', 'digits')


def parse_option():
    parser = options.parser('SCE pretraining')
    options.add_common_options(parser, batch_size=None, learning_rate=None, lr_decay_epochs='',
                               lr_decay_rate=None, weight_decay=None, epochs=None)
    options.add_knn_options(parser)
    options.add_launcher_options(parser)
    parser.add_argument('--recipe', choices=sorted(RECIPES), default=None,
                        help='defaults of a released configuration (default: cifar for cifar10/cifar100/stl10/digits, '
                             'r3d18_kinetics200 for videos, else imagenet)')
    options.add_optimizer_options(parser, default=None)  # the recipe's
    parser.add_argument('--warmup_epochs', type=int, help='linear warm-up from 0, then a per-step cosine to 0')

    g = parser.add_argument_group('SCE')
    g.add_argument('--temp', type=float, help='temperature of the online similarities')
    g.add_argument('--temp_m', type=float, help='temperature of the target (momentum) similarities')
    g.add_argument('--coeff', type=float, help='weight of the one-hot label in the target (1 = InfoNCE)')
    g.add_argument('--queue_size', type=int, help='keys in the queue')
    g.add_argument('--initial_momentum', type=float, help='momentum of the target encoder at step 0')
    g.add_argument('--momentum_schedule', choices=['cosine', 'constant'],
                   help='cosine: from --initial_momentum to 1 over the run, per step')
    g.add_argument('--sym', action=argparse.BooleanOptionalAction,
                   help='symmetric loss: each global crop\'s key against every other crop\'s query; '
                        '--no-sym: crop 0 (weak) feeds the target, the others the online branch')
    g.add_argument('--shuffle_bn', action=argparse.BooleanOptionalAction,
                   help='shuffle the keys\' batch for BatchNorm (across ranks, or --bn_splits on one process)')
    g.add_argument('--bn_splits', type=int, default=8,
                   help='with --shuffle_bn on one process: BatchNorm over this many sub-batches (1 = off)')
    g.add_argument('--proj_hidden', type=int)
    g.add_argument('--proj_dim', type=int)
    g.add_argument('--proj_layers', type=int, help='Linear layers of the projector')
    g.add_argument('--proj_last_bn', action=argparse.BooleanOptionalAction, help='BN without affine after the projector')
    g.add_argument('--pred_hidden', type=int)
    g.add_argument('--pred_layers', type=int, help='Linear layers of the predictor (0 = no predictor)')
    g.add_argument('--mutual_pass', action='store_true', default=False,
                   help='pool the crops for BatchNorm, faster: one trunk call per resolution and the heads over '
                        'all crops of the online branch, the key crops as one batch of the momentum encoder '
                        '(without --shuffle_bn); default: each crop on its own, as released (mutual_pass: False)')
    g.add_argument('--nmb_crops', type=int, nargs='+', default=[2], help='crops per resolution; 2 global crops first')
    g.add_argument('--size_crops', type=int, nargs='+', default=None, help='default: --size each')
    g.add_argument('--min_scale_crops', type=float, nargs='+', default=None, help='default: 0.2 each')
    g.add_argument('--max_scale_crops', type=float, nargs='+', default=None, help='default: 1.0 each')
    video_options.add_video_options(parser)

    args, given = options.parse(parser, lambda known: dict(
        recipe=(recipe := known.recipe or ('cifar' if known.dataset in SMALL_IMAGE_DATASETS else 'r3d18_kinetics200'
                                           if known.dataset in VIDEO_DATASETS else 'imagenet')),
        **RECIPES[recipe]))

    options.refuse(given, ('warm', 'warm_epochs', 'warmup_from'),
                   'main_sce.py warms up from 0 for --warmup_epochs (a recipe default); set that instead')
    options.refuse(given, ('lr_decay_epochs', 'lr_decay_rate', 'cosine'),
                   "SCE's schedule is always a warm-up then a cosine to 0; drop it")
    args.cosine = True  # always (and in the run name, as SupContrast's cosine runs)
    options.check_optimizer(args, given)
    args.lr_decay_rate = 0.0  # the cosine ends at 0
    options.check_launcher(args, given)
    options.finish_options(args, given)
    options.resolve_bn_splits(args, given, shuffled=args.shuffle_bn)
    if args.batch_size // args.bn_splits < 2:  # the momentum projector's BatchNorm1d needs two rows per split
        raise util.UserError(f'--batch_size {args.batch_size} over --bn_splits {args.bn_splits} leaves one image per '
                             f'BatchNorm split: use a batch of at least {2 * args.bn_splits}, or fewer --bn_splits')
    video_options.check_video_pretraining(args, given, ('nmb_crops', 'size_crops', 'min_scale_crops', 'max_scale_crops'),
                                    'video pretraining takes two clips of --size; drop it')
    if args.recipe == 'cifar':
        options.refuse(given, ('nmb_crops', 'size_crops', 'min_scale_crops', 'max_scale_crops'),
                       'the cifar recipe has one weak and one strong view; multi-crop needs --recipe imagenet')
    if args.pred_layers == 0:
        options.refuse(given, ('pred_hidden',), 'there is no predictor (--pred_layers 0)')
    if not args.sym and sum(args.nmb_crops) == 2:  # also the cifar recipe and --no-sym videos
        options.refuse(given, ('mutual_pass',), 'each branch encodes a single crop here (--no-sym, two crops): '
                       'there is nothing to pool')
    args.size_crops = args.size_crops or [args.size] * len(args.nmb_crops)
    args.min_scale_crops = args.min_scale_crops or [0.2] * len(args.nmb_crops)
    args.max_scale_crops = args.max_scale_crops or [1.0] * len(args.nmb_crops)
    args.scaled_lr = args.learning_rate * args.batch_size / 256
    args.num_keys = 2 if args.sym else 1  # global crops through the momentum encoder
    if args.queue_size % (args.num_keys * args.batch_size):
        raise util.UserError(f'--queue_size {args.queue_size} is not divisible by the {args.num_keys * args.batch_size} '
                             f'keys each step enqueues ({args.num_keys} x --batch_size {args.batch_size})')

    name = (f'SCE_{args.dataset}_{args.model}_lr_{args.learning_rate}_decay_{args.weight_decay}'
            f'_bsz_{args.batch_size}_temp_{args.temp}_tempm_{args.temp_m}_coeff_{args.coeff}_trial_{args.trial}')
    if sum(args.nmb_crops) > 2:
        name += '_crops_' + '_'.join(f'{n}x{s}' for n, s in zip(args.nmb_crops, args.size_crops))
    if args.sym:
        name += '_sym'
    name += video_options.video_run_name(args)
    options.name_run(args, name, 'SCE')
    return args


def set_loader(args):
    mean, std = datasets.mean_std(args)
    if args.dataset in VIDEO_DATASETS:
        # two clips of each video, each with its own view (SCE's asymmetric blur / solarize); a clip
        # becomes its temporal difference with p 0.2, as released
        views = video_augment.clip_views(args.size, mean, std)
        device_views = gpu_views.clip_device_views(args.size, mean, std)
        train_set = video_dataset(args, True, [gpu_loaders.raw_clip] * 2 if options.gpu_aug_on(args) else views,
                                  time_difference_p=0.2)
        return (datasets.train_loader(train_set, args, drop_last=True, device_views=device_views),
                datasets.knn_loaders(args))
    if args.recipe == 'cifar':
        views = augment.sce_cifar_views(args.size, mean, std)
        device_views = gpu_views.sce_cifar_device_views(args.size, mean, std)
    else:
        views = augment.sce_views(args.nmb_crops, args.size_crops, args.min_scale_crops,
                                  args.max_scale_crops, mean, std)
        device_views = gpu_views.sce_device_views(args.nmb_crops, args.size_crops, args.min_scale_crops,
                                                  args.max_scale_crops, mean, std)
    train_set = datasets.image_dataset(args, True, None if options.gpu_aug_on(args) else views)
    # every step enqueues a whole global batch: a partial last batch would break the queue's layout
    return (datasets.train_loader(train_set, args, drop_last=True, device_views=device_views),
            datasets.knn_loaders(args))


def set_model(args):
    """Online encoder (trunk, projector, predictor), its momentum copy without the predictor, the queue.
    With --bn_splits (shuffle-BN on one process) only the momentum copy's BatchNorm is split, as released."""
    trunk = build_trunk(args.model, stem=args.stem, width=args.width)
    projector = mlp_head(trunk.feat_dim, args.proj_hidden, args.proj_dim, args.proj_layers, bn=True,
                         last_bn=args.proj_last_bn)
    predictor = (mlp_head(args.proj_dim, args.pred_hidden, args.proj_dim, args.pred_layers, bn=True,
                          last_bias=False) if args.pred_layers > 0 else None)
    model = EncoderWithHead(trunk, projector, predictor, mutual_pass=args.mutual_pass)

    model = distributed.distribute(model, args)
    momentum_encoder = MomentumEncoder(util.unwrap(model), drop=('predictor',)).to(args.device)
    if args.bn_splits > 1:  # the copy's own BatchNorm (its parameters and buffers are the copy's)
        momentum_encoder.module = convert_split_batchnorm(momentum_encoder.module, args.bn_splits)
    # one queue for all ranks: its random initial rows are rank 0's
    queue = distributed.broadcast_from_rank0(Queue(args.queue_size, args.proj_dim).to(args.device))
    return model, momentum_encoder, queue


def lr_at(args, epoch, step, steps):
    """SCE's per-step schedule: linear warm-up from 0 over --warmup_epochs, then a cosine to 0, of
    the batch-scaled rate (--learning_rate x batch / 256)."""
    return optim.warmup_cosine(args.scaled_lr, (epoch - 1) * steps + step, args.warmup_epochs * steps,
                               args.epochs * steps)


def momentum_at(args, step, total_steps):
    """The target encoder's momentum: --initial_momentum, constant or rising along a cosine to 1."""
    if args.momentum_schedule == 'cosine':
        return cosine_momentum(args.initial_momentum, step, total_steps)
    return args.initial_momentum


def encode_keys(momentum, crops, args):
    """Momentum-encoder outputs of the global crops, one [bsz, D] tensor per crop: each crop on its own
    (shuffled across ranks with --shuffle_bn), or with --mutual_pass both crops as one BN batch."""
    if args.shuffle_bn:
        return [shuffled_forward(momentum, crop)[0] for crop in crops]
    keys, _ = momentum(crops)  # the copy's EncoderWithHead: per crop, or pooled with --mutual_pass
    return list(keys.chunk(len(crops)))


def pair_loss(criterion, queries, keys, queue, first_query):
    """Mean of criterion(q_j, k_i, queue) over every pair of a key (global crop i) and the query of
    another crop j (queries[n] is crop first_query + n): (crops - 1) x keys pairs, as released."""
    loss = 0
    for i, k in enumerate(keys):
        others = [qj for j, qj in enumerate(queries, first_query) if j != i]
        # all pairs have the same rows, so one call over the stacked pairs is the mean of the pairs
        loss = loss + criterion(torch.cat(others), k.repeat(len(others), 1), queue)
    return loss / len(keys)


def train(loader, model, momentum_encoder, queue, optimizer, scaler, epoch, args):
    """One epoch; returns its progress (average loss, time, images)."""
    model.train()
    momentum_encoder.train()
    criterion = SCELoss(args.coeff, args.temp, args.temp_m)
    steps = len(loader)
    progress = util.EpochProgress(epoch, steps, args)
    for idx, (crops, _) in enumerate(loader):
        progress.data_ready()
        optim.set_lr(optimizer, lr_at(args, epoch, idx, steps))
        crops = [distributed.to_device(c, args) for c in crops]
        # symmetric: every crop is a query and the 2 global ones are keys; else crop 0 is the only key
        query_crops = crops if args.sym else crops[1:]
        first_query = 0 if args.sym else 1
        bsz = crops[0].shape[0]

        with util.autocast(args):
            q, _ = model(query_crops)  # [bsz * len(query_crops), D], crop-major
            with torch.no_grad():
                keys = encode_keys(momentum_encoder, crops[:args.num_keys], args)
        loss = pair_loss(criterion, q.split(bsz), keys, queue.keys.clone(), first_query)

        optim.step(optimizer, scaler, loss)
        # after the optimiser step, as released
        momentum_encoder.update(util.unwrap(model), momentum_at(args, (epoch - 1) * steps + idx, args.epochs * steps))
        queue.enqueue(torch.cat([distributed.gather(k.float()) for k in keys]))
        progress.step(idx, bsz, loss=loss)
    return progress.end()


def main():
    args = parse_option()
    ckpt = distributed.start(args)
    loader, knn_loaders = set_loader(args)
    model, momentum_encoder, queue = set_model(args)
    optimizer = optim.build_optimizer(model.parameters(), args, kind=args.optimizer)
    run = pretraining.Run(args, ckpt, 'SCE', model, optimizer, knn_loaders,
                          state={'momentum_encoder': momentum_encoder, 'queue': queue})
    steps = len(loader)
    if util.is_main():
        print(f'recipe {args.recipe}: {args.optimizer} lr {args.scaled_lr:g} (= {args.learning_rate} x '
              f'{args.batch_size} / 256), {steps} steps per epoch')

    for epoch in run.epochs():
        loader.sampler.set_epoch(epoch)
        progress = train(loader, model, momentum_encoder, queue, optimizer, run.scaler, epoch, args)
        run.end_epoch(epoch, progress, momentum=momentum_at(args, epoch * steps - 1, args.epochs * steps))


if __name__ == '__main__':
    util.run(main)
