"""SupCon (Khosla et al. 2020) and SimCLR (Chen et al. 2020) pretraining.

    python main_supcon.py --batch_size 1024 --learning_rate 0.5 --temp 0.1 --cosine
    python main_supcon.py --batch_size 1024 --learning_rate 0.5 --temp 0.5 --cosine --syncBN --method SimCLR
    # ImageNet with a momentum encoder and a queue of labelled keys (the SupContrast README's 79.1 % model)
    python main_supcon.py --dataset imagenet --data_folder DIR --model resnet50 --size 224 --batch_size 1024 \
        --learning_rate 0.5 --temp 0.1 --cosine --epochs 200 --momentum_encoder --moco_k 65536 --moco_m 0.999
    # videos (rhoSimCLR, Feichtenhofer et al. CVPR 2021): the --num_clips clips of each video are its views
    python main_supcon.py --method SimCLR --dataset kinetics --data_folder DIR --model r3d50 --size 224 \
        --num_clips 2 --num_frames 8 --temp 0.1 --cosine
"""
import torch

import augment
import datasets
import distributed
import gpu_augment
import gpu_loaders
import gpu_views
import optim
import options
import pretraining
import util
import video_augment
import video_options
from losses import SupConLoss, SupConMomentumLoss
from networks.resnet_big import SupConResNet
from networks.supcon_momentum import LabelledQueue, MomentumKeys
from video_datasets import VIDEO_DATASETS, video_dataset


def parse_option():
    parser = options.parser('SupCon / SimCLR pretraining')
    options.add_common_options(parser, batch_size=256, learning_rate=0.05, lr_decay_epochs='700,800,900',
                               lr_decay_rate=0.1, weight_decay=1e-4, epochs=1000)
    options.add_knn_options(parser)
    parser.add_argument('--method', type=str, default='SupCon', choices=['SupCon', 'SimCLR'])
    parser.add_argument('--temp', type=float, default=0.07, help='temperature of the loss')
    parser.add_argument('--head', type=str, default='mlp', choices=['mlp', 'linear'])
    parser.add_argument('--mlp_layers', type=int, default=2,
                        help='Linear layers of the mlp head, hidden ones of the trunk\'s width (PySlowFast: 3)')
    parser.add_argument('--feat_dim', type=int, default=128, help='output size of the projection head')
    options.add_optimizer_options(parser, default='sgd')
    g = parser.add_argument_group('momentum encoder (SupContrast\'s ImageNet model; MoCo\'s spellings and defaults, '
                                  'which the SupContrast README does not state)')
    g.add_argument('--momentum_encoder', action='store_true',
                   help='contrast each query with the keys of a momentum copy of the model (every view of the '
                        'batch) and a queue of past keys and their labels, for small batches')
    g.add_argument('--moco_k', '--moco-k', type=int, default=65536,
                   help='queue size, in keys (a multiple of 2 views x --batch_size)')
    g.add_argument('--moco_m', '--moco-m', type=float, default=0.999, help='key-encoder momentum')
    video_options.add_video_options(parser, num_clips=True)
    args, given = options.parse(parser)

    options.check_schedule(args, given)
    options.check_optimizer(args, given)
    args.warm |= args.batch_size > 256  # large batches warm up, as SupContrast does
    options.finish_options(args, given)
    video_options.check_video_pretraining(args, given, ('momentum_encoder',),
                                    "the momentum encoder is SupContrast's ImageNet model; a video run contrasts "
                                    'the --num_clips clips of the batch; drop it')
    name = (f'{args.method}_{args.dataset}_{args.model}_lr_{args.learning_rate}_decay_{args.weight_decay}'
            f'_bsz_{args.batch_size}_temp_{args.temp}_trial_{args.trial}') + video_options.video_run_name(args)
    if args.optimizer == 'lars':
        name += '_lars'
    if args.head == 'linear':
        options.refuse(given, ('mlp_layers',), 'it shapes the mlp head; this run has --head linear')
    elif args.mlp_layers != 2:
        name += f'_mlp{args.mlp_layers}'
    if args.momentum_encoder:
        # each step enqueues both views' keys of the global batch: the queue holds whole steps
        if args.moco_k % (2 * args.batch_size):
            raise util.UserError(f'--moco_k {args.moco_k} is not divisible by 2 views x the global batch '
                                 f'{args.batch_size} = {2 * args.batch_size}: the queue holds whole batches of keys')
        name += f'_momentum_k_{args.moco_k}_m_{args.moco_m}'
    else:
        options.refuse(given, ('moco_k', 'moco_m'), 'it sets the momentum encoder; add --momentum_encoder')
    options.name_run(args, name, 'SupCon')
    return args


def set_loader(args):
    mean, std = datasets.mean_std(args)
    if args.dataset in VIDEO_DATASETS:  # rho clips at independent times, each with its own view: the n_views
        on_device = options.gpu_aug_on(args)  # workers decode, the device draws each clip's view
        view = gpu_loaders.raw_clip if on_device else video_augment.rho_clip_view(args.size, mean, std)
        train_set = video_dataset(args, True, [view] * args.num_clips)
        device_views = [gpu_views.rho_clip_device_view(args.size, mean, std)] * args.num_clips
    elif options.gpu_aug_on(args):  # the same two views, drawn for the whole batch on the device
        train_set = datasets.image_dataset(args, True, None)
        device_views = [gpu_augment.supcon_view(args.size, mean, std)] * 2
    else:
        train_set = datasets.image_dataset(args, True,
                                           augment.TwoCropTransform(augment.supcon_transform(args.size, mean, std)))
        device_views = None
    if args.method == 'SupCon':  # SimCLR needs no labels
        datasets.require_labels(train_set, 'SupCon (--method SimCLR does not)')
    # the queue's layout needs full batches: the momentum encoder's runs drop a partial last one
    loader = datasets.train_loader(train_set, args, drop_last=args.momentum_encoder, device_views=device_views)
    return loader, datasets.knn_loaders(args)


def set_model(args):
    """The model, its loss and, with --momentum_encoder, the key side (momentum encoder and queue; else None)."""
    model = SupConResNet(args.model, head=args.head, feat_dim=args.feat_dim, stem=args.stem, width=args.width,
                         mlp_layers=args.mlp_layers)
    if not args.momentum_encoder:
        return distributed.distribute(model, args), SupConLoss(temperature=args.temp), None
    encoder = distributed.momentum_copy(model, args)
    if args.syncBN and args.world_size > 1:
        # No key shuffle here (positives are labelled, and plain SupCon normalises both views in one
        # batch too): the key encoder's BatchNorm follows --syncBN as the query encoder's does, so N
        # processes train what one process does.
        encoder = distributed.convert_sync_batchnorm(encoder, args.device)
    # one queue on every rank: rank 0's random initial rows
    queue = distributed.broadcast_from_rank0(LabelledQueue(args.moco_k, args.feat_dim).to(args.device))
    momentum = MomentumKeys(encoder, queue, args.moco_m)
    return distributed.distribute(model, args), SupConMomentumLoss(temperature=args.temp), momentum


def lr_at(args, epoch, step, steps):
    """SupContrast's schedule (optim.supcontrast_lr): per epoch a cosine to lr * rate^3 (--cosine)
    or x rate after each of --lr_decay_epochs, after --warm's per-step warm-up from 0.01."""
    return optim.supcontrast_lr(args, epoch, step, steps)


def train(loader, model, criterion, optimizer, scaler, epoch, args, momentum=None):
    """One epoch; returns its progress (average loss, time, images). `momentum`: the key side of
    --momentum_encoder (networks.supcon_momentum.MomentumKeys), or None."""
    model.train()
    progress = util.EpochProgress(epoch, len(loader), args)
    for idx, (images, labels) in enumerate(loader):
        progress.data_ready()
        images = distributed.to_device(torch.cat(images, 0), args)
        labels = labels.to(args.device, non_blocking=True)
        bsz = labels.shape[0]
        optim.set_lr(optimizer, lr_at(args, epoch, idx, len(loader)))

        with util.autocast(args):
            features = model(images)
            keys = None if momentum is None else momentum.encode(util.unwrap(model), images)
        features = torch.stack(features.split(bsz), 1)  # [bsz, n_views, D]
        # Negatives come from the whole global batch: every rank computes the global loss, and
        # the gathered rows' gradients are summed back to their ranks.
        features = distributed.gather_with_grad(features)
        labels = distributed.gather(labels) if args.method == 'SupCon' else None
        if momentum is None:
            loss = criterion(features, labels)
        else:
            keys = distributed.gather(torch.stack(keys.split(bsz), 1))
            loss = criterion(features, keys, momentum.queue.keys, labels, momentum.queue.labels)

        optim.step(optimizer, scaler, loss)
        if momentum is not None:  # after the loss: it contrasts with the queue as it was before this step
            momentum.enqueue(keys, labels)
        progress.step(idx, bsz, loss=loss)
    return progress.end()


def main():
    args = parse_option()
    ckpt = distributed.start(args)
    loader, knn_loaders = set_loader(args)
    model, criterion, momentum = set_model(args)
    optimizer = optim.build_optimizer(model.parameters(), args, kind=args.optimizer)
    run = pretraining.Run(args, ckpt, args.method, model, optimizer, knn_loaders,
                          momentum.state() if momentum else None)
    scalars = {'momentum': args.moco_m} if momentum else {}

    for epoch in run.epochs():
        loader.sampler.set_epoch(epoch)
        progress = train(loader, model, criterion, optimizer, run.scaler, epoch, args, momentum)
        run.end_epoch(epoch, progress, **scalars)


if __name__ == '__main__':
    util.run(main)
