"""Linear evaluation: a linear classifier trained on the frozen trunk of any of our checkpoints.

    python main_linear.py --batch_size 512 --learning_rate 5 --ckpt /path/to/model.pth

The trunk (model, stem, width) is rebuilt from the checkpoint; the crop size defaults to the
one it was trained with.
"""
import argparse
import time
from collections import OrderedDict

import torch
import torch.nn as nn
import torch.nn.functional as F

import augment
import datasets
import distributed
import util
from evaluation import evaluate
from networks.resnet_big import LinearClassifier


# Each method's published linear protocol: the defaults of the options below. Flags given on the
# command line override them.
PROTOCOLS = {
    'supcon': dict(learning_rate=0.1, lr_decay_epochs='60,75,90', lr_decay_rate=0.2, weight_decay=0.0,
                   epochs=100, fc_init='default', crop_min_scale=0.2),
    # MoCo's lincls: lr 30, x0.1 at 60 and 80, no weight decay, fc ~ N(0, 0.01), torchvision's crop
    'moco': dict(learning_rate=30.0, lr_decay_epochs='60,80', lr_decay_rate=0.1, weight_decay=0.0,
                 epochs=100, fc_init='normal', crop_min_scale=0.08),
}


def parse_option():
    parser = argparse.ArgumentParser(description='linear evaluation of a frozen trunk')
    util.add_common_options(parser, batch_size=256, **{k: v for k, v in PROTOCOLS['supcon'].items()
                                                        if k not in ('fc_init', 'crop_min_scale')})
    parser.add_argument('--ckpt', type=str, required=True, help='checkpoint whose trunk is evaluated')
    parser.add_argument('--protocol', choices=sorted(PROTOCOLS), default='supcon',
                        help='defaults of a published linear protocol: supcon (SupContrast), moco (MoCo v1/v2)')
    parser.add_argument('--fc_init', choices=['default', 'normal'], help="'normal': weights N(0, 0.01), bias 0")
    parser.add_argument('--crop_min_scale', type=float, help='smallest area of the training crop')
    parser.add_argument('--num_classes', type=int, default=None, help='checked against the dataset')
    parser.add_argument('--batch_size_val', type=int, default=None)
    protocol = parser.parse_known_args()[0].protocol
    parser.set_defaults(**PROTOCOLS[protocol])
    args = parser.parse_args()

    args.pretrained = util.load_checkpoint(args.ckpt)
    util.take_trunk_options(args, args.pretrained, f'--ckpt {args.ckpt}')
    if args.size is None:
        args.size = args.pretrained['args']['size']
    util.finish_options(args, force_warm=False)
    name = (f'{args.pretrained["args"]["run_name"]}_epoch_{args.pretrained["epoch"]}_linear_{args.dataset}'
            f'_lr_{args.learning_rate}_bsz_{args.batch_size}_trial_{args.trial}')
    if args.protocol != 'supcon':
        name += f'_{args.protocol}'

    util.name_run(args, name, 'Linear', name_width=False)  # the trunk's run name has the width
    return args


def set_loader(args):
    mean, std = datasets.mean_std(args)
    train_set = datasets.image_dataset(args, True, augment.crop_flip_transform(args.size, mean, std,
                                                                              args.crop_min_scale))
    val_set = datasets.image_dataset(args, False, datasets.eval_view(args))
    args.n_classes = datasets.num_classes(args, train_set)
    return datasets.train_loader(train_set, args), datasets.eval_loader(val_set, args)


def set_model(args):
    """Returns (probe, trunk, classifier): the probe (trunk under 'encoder.', classifier under
    'classifier.') is what is saved; the classifier alone is trained (DDP-wrapped if distributed)."""
    trunk = util.pretrained_trunk(args.pretrained, f'--ckpt {args.ckpt}')
    del args.pretrained  # not an option: keep it out of the saved args
    classifier = LinearClassifier(trunk.feat_dim, num_classes=args.n_classes)
    if args.fc_init == 'normal':
        nn.init.normal_(classifier.fc.weight, std=0.01)
        nn.init.zeros_(classifier.fc.bias)
    probe = nn.Sequential(OrderedDict(encoder=trunk, classifier=classifier))
    trunk.requires_grad_(False)
    trunk.to(args.device)
    if args.device.type == 'cuda':
        trunk.to(memory_format=torch.channels_last)
    return probe, trunk, distributed.distribute(classifier, args)


def train(loader, trunk, classifier, optimizer, scaler, guard, epoch, args):
    """One epoch of the classifier on frozen features; returns (average loss, top-1 accuracy)."""
    trunk.eval()  # frozen: BN keeps its pretrained statistics
    classifier.train()
    batch_time, data_time = util.AverageMeter(), util.AverageMeter()
    losses, top1 = util.AverageMeter(), util.AverageMeter()
    timer = util.Timer()
    for idx, (images, labels) in enumerate(loader):
        data_time.update(timer.lap())
        images = distributed.to_device(images, args)
        labels = labels.to(args.device, non_blocking=True)
        util.warmup_learning_rate(args, epoch, idx, len(loader), optimizer)

        with util.autocast(args):
            with torch.no_grad():
                features = trunk(images)
            logits = classifier(features)
        loss = F.cross_entropy(logits.float(), labels)

        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()

        # the global batch's loss and accuracy on every rank, as with one process (and a
        # non-finite loss on any rank stops them all)
        loss_acc = distributed.reduce_mean(torch.stack([loss.detach(), util.accuracy(logits.detach(), labels)[0]]))
        guard.update(loss_acc[0], idx + 1)
        losses.update(loss_acc[0], len(labels))
        top1.update(loss_acc[1], len(labels))
        batch_time.update(timer.lap())
        if (idx + 1) % args.print_freq == 0:
            guard.check(epoch, args.last_good)
            util.print_step(epoch, idx + 1, len(loader), batch_time, data_time, {'loss': losses, 'Acc@1': top1})
    guard.check(epoch, args.last_good)
    return losses.avg, top1.avg


def main():
    args = parse_option()
    ckpt = distributed.start(args)
    train_loader, val_loader = set_loader(args)
    probe, trunk, classifier = set_model(args)
    optimizer = torch.optim.SGD(classifier.parameters(), lr=args.learning_rate, momentum=args.momentum,
                                weight_decay=args.weight_decay)
    scaler = util.grad_scaler(args)
    start_epoch = util.restore(ckpt, args, probe, optimizer, scaler)
    best_acc, best_acc5 = (ckpt['best_acc'], ckpt['best_acc5']) if ckpt else (0.0, 0.0)
    logger = util.Logger(args.tb_folder)
    guard = util.NonFiniteGuard(args.device)

    for epoch in range(start_epoch, args.epochs + 1):
        train_loader.sampler.set_epoch(epoch)
        util.adjust_learning_rate(args, optimizer, epoch)
        start = time.time()
        loss, train_acc = train(train_loader, trunk, classifier, optimizer, scaler, guard, epoch, args)
        seconds = time.time() - start
        val_loss, val_acc, val_acc5 = evaluate(probe, val_loader, args)
        best_acc, best_acc5 = max(best_acc, val_acc), max(best_acc5, val_acc5)
        if util.is_main():
            print(f'epoch {epoch}, total time {seconds:.2f}, loss {loss:.4f}, train acc {train_acc:.2f}, '
                  f'val acc {val_acc:.2f} (top-5 {val_acc5:.2f})')
        logger.log(epoch, train_loss=loss, train_acc=train_acc, val_loss=val_loss, val_acc=val_acc,
                   val_acc5=val_acc5, learning_rate=optimizer.param_groups[0]['lr'])
        util.save_epoch(args, epoch, method='Linear', model=probe, optimizer=optimizer, scaler=scaler,
                        best_acc=best_acc, best_acc5=best_acc5)
    if util.is_main():
        print(f'best accuracy: {best_acc:.2f} (top-5 {best_acc5:.2f})')


if __name__ == '__main__':
    util.run(main)
