"""CLSA pretraining: Contrastive Learning with Stronger Augmentations (Wang & Qi 2021). MoCo v2
(momentum encoder, queue, shuffle-BN, MLP head) whose weak queries are contrasted with every key of
the batch and the queue, plus a distribution divergence that makes each strongly augmented query
retrieve the candidates its weak view retrieves.

    python main_clsa.py --data=DIR --workers=32 --epochs=200 --start_epoch=0 --batch_size=256 --lr=0.03 \
        --weight_decay=1e-4 --print_freq=100 --world_size=1 --rank=0 --dist_url=tcp://localhost:10001 \
        --moco_dim=128 --moco_k=65536 --moco_m=0.999 --moco_t=0.2 --alpha=1 --aug_times=5 \
        --nmb_crops 1 1 --size_crops 224 96 --min_scale_crops 0.2 0.086 --max_scale_crops 1.0 0.429 \
        --pick_strong 1 --pick_weak 0 --clsa_t 0.2 --sym 0
    # videos: clip 0 of each video is the key; each other clip of --num_clips gives a weak query and a
    # strong one (CLSA's strong operations drawn once per clip, applied to every frame)
    python main_clsa.py --dataset kinetics --data_folder DIR --model r3d18 --size 112 --num_clips 3 --num_frames 8
"""
import torch

import augment
import datasets
import distributed
import gpu_strong
import optim
import options
import pretraining
import util
import video_augment
import video_options
from losses import BatchKeysMoCoLoss, CLSALoss
from networks.heads import EncoderWithHead, mlp_head
from networks.momentum import Queue, convert_split_batchnorm, shuffled_forward
from networks.resnet_big import build_trunk
from video_datasets import VIDEO_DATASETS, video_dataset

# The released crop groups at 224 px, scaled to --size when no crop option is given
CROP_FRACTIONS = (1.0, 6 / 7, 5 / 7, 4 / 7, 3 / 7)  # 224 192 160 128 96


def parse_option():
    parser = options.parser('CLSA pretraining')
    options.add_common_options(parser, batch_size=256, learning_rate=0.03, lr_decay_epochs='',
                               lr_decay_rate=None, weight_decay=1e-4, epochs=200, size=224)
    parser.set_defaults(dataset='imagenet')
    options.add_knn_options(parser)
    options.add_launcher_options(parser, per_node=True)
    # The released launcher starts one process per GPU unless told otherwise: so do we, through torchrun.
    parser.set_defaults(multiprocessing_distributed=torch.cuda.is_available())

    g = parser.add_argument_group('MoCo')
    g.add_argument('--moco_dim', '--moco-dim', type=int, default=128, help='key dimension')
    g.add_argument('--moco_k', '--moco-k', type=int, default=65536, help='queue size')
    g.add_argument('--moco_m', '--moco-m', type=float, default=0.999, help='key-encoder momentum')
    g.add_argument('--moco_t', '--moco-t', type=float, default=0.2, help='InfoNCE temperature')
    g.add_argument('--bn_splits', type=int, default=8,
                   help='one process: BatchNorm statistics over this many sub-batches, keys shuffled between '
                        'them (MoCo\'s single-GPU shuffle-BN; 1 = off); several processes shuffle across them')

    g = parser.add_argument_group('CLSA')
    g.add_argument('--alpha', type=float, default=1.0, help='weight of the distribution-divergence loss')
    g.add_argument('--clsa_t', type=float, default=0.2, help='temperature of the distribution-divergence loss')
    g.add_argument('--aug_times', type=int, default=5, help='operations drawn by the strong augmentation')
    g.add_argument('--nmb_crops', type=int, nargs='+', default=[1] * len(CROP_FRACTIONS),
                   help='crops per group; crop j is the j-th crop over all groups')
    g.add_argument('--size_crops', type=int, nargs='+', default=None,
                   help='side of each group\'s crops (default --size x 1, 6/7, 5/7, 4/7, 3/7: 224 192 160 128 96)')
    g.add_argument('--min_scale_crops', type=float, nargs='+', default=[0.2, 0.172, 0.143, 0.114, 0.086])
    g.add_argument('--max_scale_crops', type=float, nargs='+', default=[1.0, 0.86, 0.715, 0.571, 0.429])
    g.add_argument('--pick_weak', type=int, nargs='+', default=None,
                   help='crops used as weakly augmented queries (default: all)')
    g.add_argument('--pick_strong', type=int, nargs='+', default=None,
                   help='crops used as strongly augmented queries (default: all)')
    g.add_argument('--sym', type=int, choices=[0, 1], default=0,
                   help='1: also the key crop as a query, against the momentum keys of the first weak crop')
    video_options.add_video_options(parser, num_clips=True)
    args, given = options.parse(parser)

    options.refuse(given, ('lr_decay_rate', 'lr_decay_epochs', 'cosine'),
                   "CLSA's schedule is always a half cosine per epoch to 0; drop it")
    args.lr_decay_rate = 0.0  # the cosine ends at 0
    args.cosine = True  # always (and in the run name, as SupContrast's cosine runs)
    if args.gpu is not None or options.launched_processes() > 1:
        args.multiprocessing_distributed = False  # one GPU, or processes torchrun/srun started already
    options.check_launcher(args, given)
    options.per_node_batch(args, given)
    options.finish_options(args, given)
    options.resolve_bn_splits(args, given)
    video_options.check_video_pretraining(args, given, ('nmb_crops', 'size_crops', 'min_scale_crops', 'max_scale_crops',
                                                  'pick_weak', 'pick_strong'),
                                    'a video run takes a weak and a strong view of --size of each clip after the '
                                    'first (the key), --num_clips in all; drop it')
    if args.dataset in VIDEO_DATASETS:  # one group: the clips after the key, each picked weak and strong
        args.nmb_crops, args.size_crops = [args.num_clips - 1], [args.size]
        args.pick_weak = args.pick_strong = list(range(args.num_clips - 1))
    if args.moco_k % args.batch_size:
        raise util.UserError(f'--moco_k {args.moco_k} is not divisible by the global batch {args.batch_size}: '
                             f'the queue holds whole batches')
    args.size_crops = args.size_crops or [round(args.size * f) for f in CROP_FRACTIONS]
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
    name += video_options.video_run_name(args)
    options.name_run(args, name, 'CLSA')
    return args


def set_loader(args):
    mean, std = datasets.mean_std(args)
    if args.dataset in VIDEO_DATASETS:  # the key clip's view, then each other clip's (weak, strong) pair
        views = [video_augment.rho_clip_view(args.size, mean, std),
                 *[video_augment.WeakStrongClip(args.size, mean, std, args.aug_times)] * (args.num_clips - 1)]
        return (datasets.train_loader(video_dataset(args, True, views), args, drop_last=True),
                datasets.knn_loaders(args))
    views = augment.CLSATransform(args.size, args.nmb_crops, args.size_crops, args.min_scale_crops,
                                  args.max_scale_crops, args.pick_weak, args.pick_strong, args.aug_times,
                                  mean, std)
    device_views = gpu_strong.clsa_device_views(args.size, args.nmb_crops, args.size_crops, args.min_scale_crops,
                                                args.max_scale_crops, args.pick_weak, args.pick_strong,
                                                args.aug_times, mean, std) if options.gpu_aug_on(args) else None
    train_set = datasets.image_dataset(args, True, None if args.gpu_aug else views)
    # Every step enqueues a whole global batch: a partial last batch would break the queue's layout.
    return (datasets.train_loader(train_set, args, drop_last=True, device_views=device_views),
            datasets.knn_loaders(args))


def set_model(args):
    trunk = build_trunk(args.model, stem=args.stem, width=args.width)
    model = EncoderWithHead(trunk, mlp_head(trunk.feat_dim, trunk.feat_dim, args.moco_dim))
    if args.bn_splits > 1:
        model = convert_split_batchnorm(model, args.bn_splits)
    momentum_encoder = distributed.momentum_copy(model, args)  # before --syncBN converts the online encoder
    model = distributed.distribute(model, args)
    # One queue shared by all ranks, as MoCo's DDP-broadcast buffer: its random initial rows are rank 0's.
    queue = distributed.broadcast_from_rank0(Queue(args.moco_k, args.moco_dim).to(args.device))
    return model, momentum_encoder, queue


def lr_at(args, epoch, step, steps):
    """CLSA's per-epoch schedule: a half cosine from lr to 0, the first epoch at full lr; --warm:
    per step from --warmup_from to where the cosine stands after the --warm_epochs."""
    def epoch_lr(e):
        return optim.cosine(args.learning_rate, (e - 1) / args.epochs)
    if args.warm and epoch <= args.warm_epochs:
        return optim.warm_up(epoch_lr(args.warm_epochs + 1), epoch, step, steps, args)
    return epoch_lr(epoch)


def split_crops(crops, args):
    """(key crop, weak crops, strong crops) of a batch: images come in this order; videos as the key
    clip, then a (weak, strong) pair of each other clip."""
    if args.dataset in VIDEO_DATASETS:
        return crops[0], [weak for weak, _ in crops[1:]], [strong for _, strong in crops[1:]]
    return crops[0], crops[1:1 + len(args.pick_weak)], crops[1 + len(args.pick_weak):]


def train(loader, model, momentum_encoder, queue, optimizer, scaler, epoch, args):
    """One epoch; returns its progress (average loss and divergence, time, images)."""
    model.train()
    momentum_encoder.train()
    nce_loss, clsa_loss = BatchKeysMoCoLoss(args.moco_t), CLSALoss(args.clsa_t)
    progress = util.EpochProgress(epoch, len(loader), args)
    for idx, (crops, _) in enumerate(loader):
        progress.data_ready()
        key_crop, weak_crops, strong_crops = split_crops(crops, args)
        key_crop = distributed.to_device(key_crop, args)
        weak_crops = [distributed.to_device(c, args) for c in weak_crops]
        strong_crops = [distributed.to_device(c, args) for c in strong_crops]
        bsz = key_crop.shape[0]
        optim.set_lr(optimizer, lr_at(args, epoch, idx, len(loader)))

        with util.autocast(args):
            # One forward per crop, as released: each crop's BatchNorm statistics are its own.
            q_weak = [model(c)[0] for c in weak_crops]
            q_strong = [model(c)[0] for c in strong_crops]
            if args.sym:
                q_key = model(key_crop)[0]
            with torch.no_grad():
                momentum_encoder.update(util.unwrap(model), args.moco_m)
                k = shuffled_forward(momentum_encoder, key_crop)[0]
                if args.sym:
                    k_first_weak = shuffled_forward(momentum_encoder, weak_crops[0])[0]
        # Keys of the global batch, in rank order: this rank's images are at rank * bsz.
        keys = distributed.gather(k.float())
        queue_keys, offset = queue.keys.clone(), args.rank * bsz
        # (queries, the keys their positives are among): every weak query against the key crop's keys;
        # with --sym, the key crop and the other weak crops also against the first weak crop's keys,
        # which are then the ones enqueued, as released (the last branch's keys).
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

        optim.step(optimizer, scaler, loss)
        queue.enqueue(branches[-1][1])

        progress.step(idx, bsz, loss=loss, ddm_loss=divergence)
    return progress.end()


def main():
    args = parse_option()
    ckpt = distributed.start(args)
    model, momentum_encoder, queue = set_model(args)  # before the data, as MoCo's and CLSA's code do
    loader, knn_loaders = set_loader(args)
    optimizer = optim.build_optimizer(model.parameters(), args)
    run = pretraining.Run(args, ckpt, 'CLSA', model, optimizer, knn_loaders,
                          state={'momentum_encoder': momentum_encoder, 'queue': queue})

    for epoch in run.epochs():
        loader.sampler.set_epoch(epoch)
        progress = train(loader, model, momentum_encoder, queue, optimizer, run.scaler, epoch, args)
        run.end_epoch(epoch, progress, momentum=args.moco_m)


if __name__ == '__main__':
    util.run(main)
