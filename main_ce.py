"""Supervised cross-entropy training: SupContrast's baseline, or fine-tuning a pretrained trunk.

    python main_ce.py --batch_size 1024 --learning_rate 0.8 --cosine --syncBN
    python main_ce.py --pretrained save/SupCon/cifar10_models/RUN/last.pth --learning_rate 0.05

Videos (--dataset ucf101 or hmdb51 with --split_id, or video, kinetics) default to the released
fine-tuning (VIDEO_FINETUNING) and train fast, then test: training validates every --val_freq
epochs on one clip and one crop per video and keeps best.pth; the same command with --test best
(or last) then tests that checkpoint on --test_clips x --test_crops views per video, averaging the
softmax, and trains nothing:

    python main_ce.py --pretrained save/SCE/r3d50_kinetics400/last.pth --dataset ucf101 --data_folder DIR
    python main_ce.py --pretrained save/SCE/r3d50_kinetics400/last.pth --dataset ucf101 --data_folder DIR \\
        --test best --batch_size_val 60
"""
import argparse
import time

import torch
import torch.nn.functional as F

import augment
import datasets
import distributed
import options
import util
import video_augment
from evaluation import evaluate, test_checkpoint
from networks.resnet_big import SupCEResNet
from video_datasets import (VIDEO_DATASETS, add_video_options, check_model_fits_data, frames_of_checkpoint,
                            video_dataset)

# The released fine-tuning of R3D trunks on UCF101 / HMDB51: SGD lr 0.1 per 256 clips (0.025 at
# batch 64), no weight decay, a per-step cosine to 0 without warm-up, 200 epochs, dropout 0.8 before
# the classifier, 224-px clips with colour jitter, validation every 5 epochs.
VIDEO_FINETUNING = dict(batch_size=64, learning_rate=0.025, weight_decay=0.0, epochs=200, lr_decay_epochs='',
                        warmup_epochs=0, dropout=0.8, size=224, val_freq=5)


def parse_option():
    parser = argparse.ArgumentParser(description='cross-entropy training / fine-tuning')
    options.add_common_options(parser, batch_size=256, learning_rate=0.2, lr_decay_epochs='350,400,450',
                               lr_decay_rate=0.1, weight_decay=1e-4, epochs=500)
    parser.add_argument('--pretrained', type=str, default=None, metavar='CKPT',
                        help='start from the trunk of one of our checkpoints (its model, stem, width)')
    parser.add_argument('--num_classes', type=int, default=None, help='checked against the dataset')
    parser.add_argument('--batch_size_val', type=int, default=None,
                        help='clips (images) per evaluation batch (default --batch_size); a video takes one per view')
    parser.add_argument('--dropout', type=float, default=0.0, help='dropout before the classifier')
    options.add_classifier_options(parser)
    add_video_options(parser, num_frames=None)
    video = parser.parse_known_args()[0].dataset in VIDEO_DATASETS
    if video:
        parser.set_defaults(**VIDEO_FINETUNING)
    args = parser.parse_args()
    options.check_classifier_options(args)

    if args.pretrained:
        args.pretrained_ckpt = util.load_checkpoint(args.pretrained, '--pretrained')
        util.take_trunk_options(args, args.pretrained_ckpt, f'--pretrained {args.pretrained}')
    frames_of_checkpoint(args, args.pretrained_ckpt['args'] if args.pretrained else {})
    options.finish_options(args, force_warm=args.warmup_epochs is None)
    check_model_fits_data(args)
    name = (f'SupCE_{args.dataset}_{args.model}_lr_{args.learning_rate}_decay_{args.weight_decay}'
            f'_bsz_{args.batch_size}_trial_{args.trial}')
    if args.pretrained:
        name += '_pretrained'
    if args.dataset in ('ucf101', 'hmdb51'):
        name += f'_split_{args.split_id}'
    if video:
        name += f'_frames_{args.num_frames}'
    options.name_run(args, name, 'SupCon')
    return args


def set_loader(args):
    """(training, validation) loaders; with --test, (None, the loader of every test view)."""
    if args.test:
        test_set = datasets.eval_dataset(args, False, test_views=True)
        args.n_classes = datasets.num_classes(args, test_set)
        return None, datasets.eval_loader(test_set, args)
    mean, std = datasets.mean_std(args)
    if args.dataset in VIDEO_DATASETS:
        train_set = video_dataset(args, True, video_augment.ClipScaleCropFlip(args.size, mean, std, colour=True))
    else:
        train_set = datasets.image_dataset(args, True, augment.crop_flip_transform(args.size, mean, std))
    args.n_classes = datasets.num_classes(args, train_set)
    return datasets.train_loader(train_set, args), datasets.eval_loader(datasets.eval_dataset(args, False), args)


def set_model(args):
    model = SupCEResNet(args.model, num_classes=args.n_classes, stem=args.stem, width=args.width,
                        dropout=args.dropout)
    if args.pretrained:
        trunk = util.trunk_state_dict(args.pretrained_ckpt)
        util.load_state(model.encoder, trunk, f'--pretrained {args.pretrained}')
        del args.pretrained_ckpt  # not an option: keep it out of the saved args
    return distributed.distribute(model, args)


def train(loader, model, optimizer, scaler, guard, epoch, args):
    """One epoch; returns (average loss, top-1 accuracy)."""
    model.train()
    batch_time, data_time = util.AverageMeter(), util.AverageMeter()
    losses, top1 = util.AverageMeter(), util.AverageMeter()
    timer = util.Timer()
    for idx, (images, labels) in enumerate(loader):
        data_time.update(timer.lap())
        images = distributed.to_device(images, args)
        labels = labels.to(args.device, non_blocking=True)
        util.step_learning_rate(args, optimizer, epoch, idx, len(loader))

        with util.autocast(args):
            logits = model(images)
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
    model = set_model(args)
    if args.test:
        test_checkpoint(model, val_loader, args)
        return
    optimizer = torch.optim.SGD(model.parameters(), lr=args.learning_rate, momentum=args.momentum,
                                weight_decay=args.weight_decay, **util.fused(args))
    scaler = util.grad_scaler(args)
    start_epoch = util.restore(ckpt, args, model, optimizer, scaler)
    best_acc = ckpt['best_acc'] if ckpt else 0.0
    logger = util.Logger(args.tb_folder)
    guard = util.NonFiniteGuard(args.device)

    for epoch in range(start_epoch, args.epochs + 1):
        train_loader.sampler.set_epoch(epoch)
        util.adjust_learning_rate(args, optimizer, epoch)
        start = time.time()
        loss, train_acc = train(train_loader, model, optimizer, scaler, guard, epoch, args)
        seconds = time.time() - start
        line = f'epoch {epoch}, total time {seconds:.2f}, loss {loss:.4f}, train acc {train_acc:.2f}'
        scalars = dict(train_loss=loss, train_acc=train_acc, learning_rate=optimizer.param_groups[0]['lr'],
                       images_per_s=len(train_loader.dataset) / seconds)
        best = False
        if epoch % args.val_freq == 0 or epoch == args.epochs:
            val_loss, val_acc, val_acc5 = evaluate(model, val_loader, args)
            best = val_acc >= best_acc
            best_acc = max(best_acc, val_acc)
            line += f', val acc {val_acc:.2f} (top-5 {val_acc5:.2f}), best {best_acc:.2f}'
            scalars.update(val_loss=val_loss, val_acc=val_acc, val_acc5=val_acc5)
        if util.is_main():
            print(line)
        logger.log(epoch, **scalars)
        util.save_epoch(args, epoch, best=best, method='SupCE', model=model, optimizer=optimizer, scaler=scaler,
                        best_acc=best_acc)
    if util.is_main():
        print(f'best accuracy: {best_acc:.2f}')


if __name__ == '__main__':
    util.run(main)
