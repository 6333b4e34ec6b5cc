"""SupCon (Khosla et al. 2020) and SimCLR (Chen et al. 2020) pretraining.

    python main_supcon.py --batch_size 1024 --learning_rate 0.5 --temp 0.1 --cosine
    python main_supcon.py --batch_size 1024 --learning_rate 0.5 --temp 0.5 --cosine --syncBN --method SimCLR
"""
import torch

import augment
import datasets
import distributed
import gpu_augment
import optim
import options
import pretraining
import util
from losses import SupConLoss
from networks.resnet_big import SupConResNet


def parse_option():
    parser = options.parser('SupCon / SimCLR pretraining')
    options.add_common_options(parser, batch_size=256, learning_rate=0.05, lr_decay_epochs='700,800,900',
                               lr_decay_rate=0.1, weight_decay=1e-4, epochs=1000)
    options.add_knn_options(parser)
    parser.add_argument('--method', type=str, default='SupCon', choices=['SupCon', 'SimCLR'])
    parser.add_argument('--temp', type=float, default=0.07, help='temperature of the loss')
    parser.add_argument('--head', type=str, default='mlp', choices=['mlp', 'linear'])
    parser.add_argument('--feat_dim', type=int, default=128, help='output size of the projection head')
    args, given = options.parse(parser)

    options.check_schedule(args, given)
    options.finish_options(args, given)
    args.warm |= args.batch_size > 256  # large batches warm up, as SupContrast does
    name = (f'{args.method}_{args.dataset}_{args.model}_lr_{args.learning_rate}_decay_{args.weight_decay}'
            f'_bsz_{args.batch_size}_temp_{args.temp}_trial_{args.trial}')
    options.name_run(args, name, 'SupCon')
    return args


def set_loader(args):
    mean, std = datasets.mean_std(args)
    if args.gpu_aug:  # the same two views, drawn for the whole batch on the device
        views, device_views = None, [gpu_augment.supcon_view(args.size, mean, std)] * 2
    else:
        views, device_views = augment.TwoCropTransform(augment.supcon_transform(args.size, mean, std)), None
    train_set = datasets.image_dataset(args, True, views)
    if args.method == 'SupCon':  # SimCLR needs no labels
        datasets.require_labels(train_set, 'SupCon (--method SimCLR does not)')
    return datasets.train_loader(train_set, args, device_views=device_views), datasets.knn_loaders(args)


def set_model(args):
    model = SupConResNet(args.model, head=args.head, feat_dim=args.feat_dim, stem=args.stem, width=args.width)
    criterion = SupConLoss(temperature=args.temp)
    return distributed.distribute(model, args), criterion


def lr_at(args, epoch, step, steps):
    """SupContrast's schedule (optim.supcontrast_lr): per epoch a cosine to lr * rate^3 (--cosine)
    or x rate after each of --lr_decay_epochs, after --warm's per-step warm-up from 0.01."""
    return optim.supcontrast_lr(args, epoch, step, steps)


def train(loader, model, criterion, optimizer, scaler, epoch, args):
    """One epoch; returns its progress (average loss, time, images)."""
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
        features = torch.stack(features.split(bsz), 1)  # [bsz, n_views, D]
        # Negatives come from the whole global batch: every rank computes the global loss, and
        # the gathered rows' gradients are summed back to their ranks.
        features = distributed.gather_with_grad(features)
        loss = criterion(features, distributed.gather(labels) if args.method == 'SupCon' else None)

        optim.step(optimizer, scaler, loss)
        progress.step(idx, bsz, loss=loss)
    return progress.end()


def main():
    args = parse_option()
    ckpt = distributed.start(args)
    loader, knn_loaders = set_loader(args)
    model, criterion = set_model(args)
    optimizer = optim.build_optimizer(model.parameters(), args)
    run = pretraining.Run(args, ckpt, args.method, model, optimizer, knn_loaders)

    for epoch in run.epochs():
        loader.sampler.set_epoch(epoch)
        progress = train(loader, model, criterion, optimizer, run.scaler, epoch, args)
        run.end_epoch(epoch, progress)


if __name__ == '__main__':
    util.run(main)
