"""SupCon (Khosla et al. 2020) and SimCLR (Chen et al. 2020) pretraining.

    python main_supcon.py --batch_size 1024 --learning_rate 0.5 --temp 0.1 --cosine
    python main_supcon.py --batch_size 1024 --learning_rate 0.5 --temp 0.5 --cosine --syncBN --method SimCLR
"""
import argparse
import time

import torch

import augment
import datasets
import distributed
import gpu_augment
import options
import util
from evaluation import knn_accuracy
from losses import SupConLoss
from networks.resnet_big import SupConResNet


def parse_option():
    parser = argparse.ArgumentParser(description='SupCon / SimCLR pretraining')
    options.add_common_options(parser, batch_size=256, learning_rate=0.05, lr_decay_epochs='700,800,900',
                               lr_decay_rate=0.1, weight_decay=1e-4, epochs=1000)
    options.add_knn_options(parser)
    parser.add_argument('--method', type=str, default='SupCon', choices=['SupCon', 'SimCLR'])
    parser.add_argument('--temp', type=float, default=0.07, help='temperature of the loss')
    parser.add_argument('--head', type=str, default='mlp', choices=['mlp', 'linear'])
    parser.add_argument('--feat_dim', type=int, default=128, help='output size of the projection head')
    args = parser.parse_args()

    options.finish_options(args, force_warm=True)
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
    return datasets.train_loader(train_set, args, device_views=device_views), datasets.knn_loaders(args)


def set_model(args):
    model = SupConResNet(args.model, head=args.head, feat_dim=args.feat_dim, stem=args.stem, width=args.width)
    criterion = SupConLoss(temperature=args.temp)
    return distributed.distribute(model, args), criterion


def train(loader, model, criterion, optimizer, scaler, guard, epoch, args):
    """One epoch; returns the average loss."""
    model.train()
    batch_time, data_time, losses = util.AverageMeter(), util.AverageMeter(), util.AverageMeter()
    timer = util.Timer()
    for idx, (images, labels) in enumerate(loader):
        data_time.update(timer.lap())
        images = distributed.to_device(torch.cat(images, 0), args)
        labels = labels.to(args.device, non_blocking=True)
        bsz = labels.shape[0]
        util.warmup_learning_rate(args, epoch, idx, len(loader), optimizer)

        with util.autocast(args):
            features = model(images)
        features = torch.stack(features.split(bsz), 1)  # [bsz, n_views, D]
        # Negatives come from the whole global batch: every rank computes the global loss, and
        # the gathered rows' gradients are summed back to their ranks.
        features = distributed.gather_with_grad(features)
        loss = criterion(features, distributed.gather(labels) if args.method == 'SupCon' else None)

        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()

        guard.update(loss, idx + 1)
        losses.update(loss, bsz)
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
    model, criterion = set_model(args)
    optimizer = torch.optim.SGD(model.parameters(), lr=args.learning_rate, momentum=args.momentum,
                                weight_decay=args.weight_decay, **util.fused(args))
    scaler = util.grad_scaler(args)
    start_epoch = util.restore(ckpt, args, model, optimizer, scaler)
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
        util.adjust_learning_rate(args, optimizer, epoch)
        start = time.time()
        loss = train(loader, model, criterion, optimizer, scaler, guard, epoch, args)
        seconds = time.time() - start
        images_per_s = len(loader.dataset) * 2 / seconds
        if util.is_main():
            print(f'epoch {epoch}, total time {seconds:.2f}, loss {loss:.4f}, {images_per_s:.0f} views/s')
        logger.log(epoch, loss=loss, learning_rate=optimizer.param_groups[0]['lr'], views_per_s=images_per_s)

        if knn and (epoch % args.knn_freq == 0 or epoch == args.epochs):
            monitor(epoch)

        util.save_epoch(args, epoch, method=args.method, model=model, optimizer=optimizer,
                        scaler=scaler)


if __name__ == '__main__':
    util.run(main)
