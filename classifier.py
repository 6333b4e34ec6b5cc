"""Training a classifier, as main_ce.py (the whole network) and main_linear.py (a linear layer on a
frozen trunk) both do: their schedule, and one epoch of cross-entropy steps."""
import torch
import torch.nn as nn
import torch.nn.functional as F

import distributed
import optim
import util


def lr_at(args, epoch, step, steps):
    """With --warmup_epochs (SCE's video protocols; fine-tuning: 0): per step, a linear warm-up from 0,
    then a cosine to 0. Else SupContrast's schedule (optim.supcontrast_lr) with the script's or the
    protocol's defaults (linear: supcon x0.2 at 60, 75, 90; moco x0.1 at 60, 80; sce and clsa a
    per-epoch cosine to 0 and to lr x 0.1^3)."""
    if args.warmup_epochs is not None:
        return optim.warmup_cosine(args.learning_rate, (epoch - 1) * steps + step, args.warmup_epochs * steps,
                                   args.epochs * steps)
    return optim.supcontrast_lr(args, epoch, step, steps)


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
        loss_acc = distributed.reduce_mean(torch.stack([loss.detach(), util.accuracy(logits.detach(), labels)[0]]))
        progress.step(idx, len(labels), loss=loss_acc[0], train_acc=loss_acc[1])
    return progress.end()
