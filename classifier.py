"""Training a classifier, as main_ce.py (the whole network) and main_linear.py (a linear layer on a
frozen trunk) both do: their schedule, an epoch of cross-entropy steps, and the run's epochs."""
import torch
import torch.nn as nn
import torch.nn.functional as F

import checkpoints
import datasets
import distributed
import optim
import util
from evaluation import KNNMonitor, Validation, test_checkpoint
from video_datasets import VIDEO_DATASETS, video_dataset


def loaders(args, train_views):
    """(training, validation) loaders, the training split through train_views(mean, std) (a clip
    transform for a video --dataset); with --test, (None, the loader of every test view). Sets
    args.n_classes."""
    if args.test:
        test_set = datasets.eval_dataset(args, False, test_views=True)
        args.n_classes = datasets.num_classes(args, test_set)
        return None, datasets.eval_loader(test_set, args)
    views = train_views(*datasets.mean_std(args))
    train_set = (video_dataset(args, True, views) if args.dataset in VIDEO_DATASETS
                 else datasets.image_dataset(args, True, views))
    datasets.require_labels(train_set, 'a classifier')
    args.n_classes = datasets.num_classes(args, train_set)
    return datasets.train_loader(train_set, args), datasets.eval_loader(datasets.eval_dataset(args, False), args)


def lr_at(args, epoch, step, steps):
    """With --warmup_epochs (SCE's protocols: images 0, videos 8; fine-tuning: 0): per step, a linear
    warm-up from 0, then a cosine to 0 (eztorch's: the first step after the warm-up at full lr, the
    last one just above 0). With args.final_lr (main_linear's CLSA protocol): per epoch, the lincls
    cosine of CLSA's authors from lr (the first epoch) towards final_lr, reached after the last
    epoch, as MoCo-style code counts epochs from 0. Else SupContrast's schedule
    (optim.supcontrast_lr) with the script's or the protocol's defaults (linear: supcon x0.2 at 60,
    75, 90; moco x0.1 at 60, 80)."""
    if args.warmup_epochs is not None:
        return optim.warmup_cosine(args.learning_rate, (epoch - 1) * steps + step, args.warmup_epochs * steps,
                                   args.epochs * steps)
    if getattr(args, 'final_lr', None) is not None:
        return optim.cosine(args.learning_rate, (epoch - 1) / args.epochs, args.final_lr)
    return optim.supcontrast_lr(args, epoch, step, steps)


def init_normal(linear):
    """Weights N(0, 0.01), bias 0: the classifier init of MoCo's and CLSA's lincls and of
    PyTorchVideo's heads (SCE's video probe and fine-tuning)."""
    nn.init.normal_(linear.weight, std=0.01)
    nn.init.zeros_(linear.bias)


class FrozenTrunk(nn.Module):
    """A trunk that stays in eval mode (BatchNorm keeps its pretrained statistics) and computes
    features without autograd: what a linear probe trains on."""

    def __init__(self, trunk):
        super().__init__()
        self.trunk = trunk.requires_grad_(False)

    def train(self, mode=True):
        return super().train(False)

    def forward(self, x):
        with torch.no_grad():
            return self.trunk(x)


def train(loader, model, optimizer, scaler, epoch, args):
    """One epoch of the classifier `model`; returns its progress (loss, accuracy, time)."""
    model.train()
    progress = util.EpochProgress(epoch, len(loader), args)
    for idx, (images, labels) in enumerate(loader):
        progress.data_ready()
        images = distributed.to_device(images, args)
        labels = labels.to(args.device, non_blocking=True)
        optim.set_lr(optimizer, lr_at(args, epoch, idx, len(loader)))

        with util.autocast(args):
            logits = model(images)
        loss = F.cross_entropy(logits.float(), labels)

        optim.step(optimizer, scaler, loss)
        # the global batch's loss and accuracy on every rank, as with one process
        progress.step(idx, len(labels), loss=loss, train_acc=util.accuracy(logits.detach(), labels)[0])
    return progress.end()


def fit(model, saved, method, train_loader, val_loader, ckpt, args, knn_loaders=None):
    """The run: resume `ckpt`, then each epoch train `model`, validate every --val_freq epochs, log,
    run the kNN monitor on the trunk when `knn_loaders` are given (main_ce --knn_freq),
    and save `saved` (what the checkpoints hold: the model, or main_linear's probe with its trunk),
    best.pth at the best validation top-1; finally print the best accuracy. With --test, only
    evaluate `saved` (loaded from --ckpt) on the validation split."""
    if args.test:
        test_checkpoint(saved, val_loader, args)
        return
    optimizer = optim.build_optimizer([p for p in model.parameters() if p.requires_grad], args)
    scaler = util.grad_scaler(args)
    start_epoch = checkpoints.restore(ckpt, args, saved, optimizer, scaler, method)
    logger = util.Logger(args.tb_folder, args)
    validation = Validation(saved, val_loader, args, ckpt)
    trunk = util.unwrap(model).encoder if knn_loaders else None  # main_linear's probe has no .encoder
    knn = KNNMonitor(knn_loaders, trunk, args, logger, start_epoch)
    for epoch in range(start_epoch, args.epochs + 1):
        train_loader.sampler.set_epoch(epoch)
        progress = train(train_loader, model, optimizer, scaler, epoch, args)
        best, line, scalars = validation(epoch)
        logger.epoch(epoch, progress, line, learning_rate=optimizer.param_groups[0]['lr'], **scalars)
        knn(epoch)
        checkpoints.save_epoch(args, epoch, best=best, method=method, model=saved, optimizer=optimizer,
                               scaler=scaler, best_acc=validation.best_acc, best_acc5=validation.best_acc5)
    validation.report()
