"""Evaluation of representations: classifier accuracy, trunk features (averaged over test views),
weighted kNN and retrieval recall@k."""
import hashlib
import math
import os

import torch
import torch.distributed as dist
import torch.nn.functional as F

from distributed import gather, to_device
from checkpoints import load_checkpoint, load_state
from util import UserError, accuracy, autocast, is_main, unwrap, world_size
from video_datasets import VIDEO_DATASETS


def per_view(model, batch, args):
    """Model outputs [B, V, ...] of one batch. A batch of video test views [B, V, C, T, H, W]
    (V = clips x crops) goes through the model as one batch of B * V clips; any other batch is a
    single view (V = 1)."""
    x = batch.flatten(0, 1) if batch.dim() == 6 else batch
    with autocast(args):
        out = model(to_device(x, args)).float()
    return out.view(len(batch), -1, *out.shape[1:])


@torch.no_grad()
def evaluate(model, loader, args):
    """Cross-entropy and top-1/top-5 accuracy (percent) of a classifier over a sharded loader,
    summed over ranks. A video with several test views is classified by its softmax averaged
    over them."""
    model.eval()
    totals = torch.zeros(5, device=args.device)  # loss sum, top-1 hits, top-5 hits, count, left out
    for images, labels in loader:
        labels = labels.to(args.device, non_blocking=True)
        log_probs = per_view(model, images, args).log_softmax(-1)  # [B, V, classes]
        # log of the mean softmax over the views (with one view: log_softmax of the logits)
        log_probs = log_probs.logsumexp(1) - math.log(log_probs.shape[1])
        readable = labels >= 0  # -1: an unreadable video (video_datasets.VideoClips), left out
        log_probs, labels = log_probs[readable], labels[readable]
        n = len(labels)
        if n:
            top1, top5 = accuracy(log_probs, labels, (1, 5))
            totals[:4] += torch.stack([F.nll_loss(log_probs, labels, reduction='sum'), top1 * n / 100,
                                       top5 * n / 100, torch.tensor(float(n), device=args.device)])
        totals[4] += (~readable).sum()
    if world_size() > 1:
        dist.all_reduce(totals)
    loss, hit1, hit5, n, left_out = totals.tolist()
    report_left_out(left_out, n)
    return loss / max(n, 1), 100 * hit1 / max(n, 1), 100 * hit5 / max(n, 1)


def report_left_out(left_out, kept):
    if left_out and is_main():
        print(f'note: {int(left_out)} unreadable videos left out of this evaluation ({int(kept)} evaluated)',
              flush=True)


class Validation:
    """--val_freq: a classifier's validation loss and top-1/top-5 accuracy after every N epochs and
    the last, and the best top-1 so far with the top-5 of its epoch (resumed from a checkpoint's)."""

    def __init__(self, model, loader, args, ckpt):
        self.model, self.loader, self.args = model, loader, args
        self.best_acc, self.best_acc5 = (ckpt['best_acc'], ckpt.get('best_acc5', 0.0)) if ckpt else (0.0, 0.0)

    def __call__(self, epoch):
        """(is this epoch the best so far, text for the epoch line, scalars to log)."""
        if epoch % self.args.val_freq and epoch != self.args.epochs:
            return False, '', {}
        loss, acc, acc5 = evaluate(self.model, self.loader, self.args)
        best = acc >= self.best_acc
        if best:
            self.best_acc, self.best_acc5 = acc, acc5
        return best, f', val acc {acc:.2f} (top-5 {acc5:.2f}), best {self.best_acc:.2f}', dict(
            val_loss=loss, val_acc=acc, val_acc5=acc5)

    def report(self):
        if is_main():
            print(f'best accuracy: {self.best_acc:.2f} (top-5 {self.best_acc5:.2f})')


def test_checkpoint(model, loader, args):
    """--test best|last (main_linear.py, main_ce.py): load this run's best.pth or last.pth into
    model and print its accuracy on loader, which holds every test view (datasets.eval_dataset)."""
    path = os.path.join(args.save_folder, f'{args.test}.pth')
    if not os.path.isfile(path):
        raise UserError(f'--test {args.test}: {path} does not exist; run the same command without --test first')
    ckpt = load_checkpoint(path, '--test')
    load_state(unwrap(model), ckpt['model'], path)
    _, acc1, acc5 = evaluate(model, loader, args)
    views = (f'{args.test_clips} clips x {args.test_crops} crops per video' if args.dataset in VIDEO_DATASETS
             else 'one view per image')
    if is_main():
        print(f'test accuracy of {path} (epoch {ckpt["epoch"]}, {views}): {acc1:.2f} (top-5 {acc5:.2f})')
    return acc1, acc5


def view_features(trunk, views, args):
    """Trunk features [B, D] of one batch, averaged over its test views: a list of batches of
    the same samples (crops), or a batch of video test views [B, V, C, T, H, W] (clips x crops)."""
    if not isinstance(views, (list, tuple)):
        views = [views]
    return torch.cat([per_view(trunk, v, args) for v in views], 1).mean(1)


@torch.no_grad()
def extract_features(trunk, loader, args, normalize=True):
    """Trunk features (L2-normalised unless normalize=False) and labels of a sharded loader,
    gathered from all ranks in dataset order."""
    trunk.eval()
    feats, labels = [], []
    for images, target in loader:
        f = view_features(trunk, images, args)
        feats.append(F.normalize(f, dim=1) if normalize else f)
        labels.append(target.to(args.device))
    feats, labels = torch.cat(feats), torch.cat(labels)
    if world_size() > 1:  # shards are rank::world; pad to equal length, gather, re-interleave
        n = torch.tensor([len(labels)], device=args.device)
        counts = gather(n).tolist()
        pad = max(counts) - len(labels)
        feats = gather(torch.cat([feats, feats.new_zeros(pad, feats.shape[1])]))
        labels = gather(torch.cat([labels, labels.new_full((pad,), -1)]))
        m = max(counts)
        order = [r * m + i for i in range(m) for r in range(world_size()) if i < counts[r]]
        feats, labels = feats[order], labels[order]
    # -1: an unreadable video (video_datasets.VideoClips), left out; multi-label rows (VOC) are all kept
    readable = labels >= 0 if labels.dim() == 1 else labels.new_ones(len(labels), dtype=torch.bool)
    report_left_out(int((~readable).sum()), int(readable.sum()))
    return feats[readable], labels[readable]


def checkpoint_file_key(path):
    """What tells a checkpoint file's contents apart, for feature caches: its path, size and time
    (last.pth is rewritten every epoch)."""
    stat = os.stat(path)
    return {'ckpt': os.path.abspath(path), 'ckpt_bytes': stat.st_size, 'ckpt_mtime_ns': stat.st_mtime_ns}


def folder_fingerprint(folder, exclude=None):
    """A digest of every file under `folder` (relative path, size, modification time): cached
    features of a folder whose files were added, removed or rewritten are not reused. `exclude`:
    a folder left out (the feature cache itself, when it lies inside the data)."""
    digest = hashlib.sha1()
    skip = os.path.realpath(exclude) if exclude else None
    for root, dirs, files in os.walk(folder, followlinks=True):
        dirs[:] = sorted(d for d in dirs if os.path.realpath(os.path.join(root, d)) != skip)
        for name in sorted(files):
            path = os.path.join(root, name)
            stat = os.stat(path)
            digest.update(f'{os.path.relpath(path, folder)}\0{stat.st_size}\0{stat.st_mtime_ns}\n'.encode())
    return digest.hexdigest()


def cached_features(path, key, extract):
    """extract()'s {split: (features, labels) as numpy, or None}, read from `path` when it was written
    there for the same `key` (a dict of plain values), else extracted and written there by rank 0."""
    if os.path.isfile(path):
        try:
            cached = torch.load(path, weights_only=True)
            if cached['key'] == key:
                print(f'features read from {path}')
                return {s: None if f is None else tuple(t.numpy() for t in f) for s, f in cached['features'].items()}
        except Exception:
            print(f'note: the feature cache {path} is unreadable: extracting again')
    out = extract()
    if is_main():
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = f'{path}.tmp{os.getpid()}'
        torch.save({'key': key, 'features': {s: None if f is None else [torch.from_numpy(a) for a in f]
                                             for s, f in out.items()}}, tmp)
        os.replace(tmp, path)
    return out


def knn_vote(sim, neighbour_labels, num_classes, t):
    """Weighted kNN vote (Wu et al. 2018): each neighbour (a column of sim / neighbour_labels
    [n, k]) votes for its class with weight exp(sim / t). Returns the winning classes."""
    votes = sim.new_zeros(len(sim), num_classes)
    votes.scatter_add_(1, neighbour_labels, (sim / t).exp())
    return votes.argmax(1)


def knn_predict(test_feats, bank_feats, bank_labels, num_classes, k=200, t=0.1, chunk=1024):
    """Weighted kNN: the k most cosine-similar bank entries (features L2-normalised) vote.
    Returns predicted classes."""
    preds = []
    k = min(k, len(bank_labels))
    for q in test_feats.split(chunk):
        sim, idx = (q @ bank_feats.T).topk(k, dim=1)
        preds.append(knn_vote(sim, bank_labels[idx], num_classes, t))
    return torch.cat(preds)


def knn_accuracies(query, query_labels, bank, bank_labels, ks=(10, 20, 100, 200), temperatures=(0.07, 0.1),
                   chunk=1024):
    """Weighted kNN top-1 accuracy (percent) of every (k, t) pair, from one cosine-similarity
    search for the max(ks) nearest bank entries (the first k of them are the k nearest)."""
    query, bank = F.normalize(query.float(), dim=1), F.normalize(bank.float(), dim=1)
    num_classes = int(max(bank_labels.max(), query_labels.max())) + 1
    nearest = min(max(ks), len(bank_labels))
    hits = {(k, t): 0 for k in ks for t in temperatures}
    for q, y in zip(query.split(chunk), query_labels.split(chunk)):
        sim, idx = (q @ bank.T).topk(nearest, dim=1)
        for k, t in hits:
            hits[k, t] += (knn_vote(sim[:, :k], bank_labels[idx[:, :k]], num_classes, t) == y).sum().item()
    return {key: 100 * h / len(query_labels) for key, h in hits.items()}


def recall_at_k(query, query_labels, bank, bank_labels, ks=(1, 5, 10, 20, 50), chunk=1024):
    """Retrieval recall (percent) at each k: each set is centred on its own mean and
    L2-normalised; a query is a hit at k when any of its k most cosine-similar bank entries
    shares its label."""
    query = F.normalize(query.float() - query.float().mean(0), dim=1)
    bank = F.normalize(bank.float() - bank.float().mean(0), dim=1)
    nearest = min(max(ks), len(bank_labels))
    hits = torch.zeros(len(ks))
    for q, y in zip(query.split(chunk), query_labels.split(chunk)):
        idx = (q @ bank.T).topk(nearest, dim=1).indices
        same = bank_labels[idx] == y[:, None]
        hits += torch.tensor([same[:, :k].any(1).sum().item() for k in ks], dtype=torch.float)
    return {k: 100 * h / len(query_labels) for k, h in zip(ks, hits.tolist())}


class KNNMonitor:
    """The kNN monitor of pretraining: the weighted kNN top-1 accuracy of the trunk (test split
    against the training split; --knn_k, --knn_t) before training (the random trunk: the baseline
    training must beat), every --knn_freq epochs and after the last; printed and logged as
    knn_accuracy. loaders: datasets.knn_loaders' (None: off). A run that starts at epoch 1 measures
    the random trunk (epoch 0) at once."""

    def __init__(self, loaders, trunk, args, logger, start_epoch):
        self.loaders, self.trunk, self.args, self.logger = loaders, trunk, args, logger
        if start_epoch == 1:
            self(0)

    def __call__(self, epoch):
        """After `epoch` (0: before the first), when it is due."""
        a = self.args
        if self.loaders is None or not (epoch == 0 or epoch % a.knn_freq == 0 or epoch == a.epochs):
            return
        acc = knn_accuracy(self.trunk, *self.loaders, a)
        if is_main():
            print(f'epoch {epoch}, kNN accuracy {acc:.2f}', flush=True)
        self.logger.log(epoch, knn_accuracy=acc)


def knn_accuracy(trunk, bank_loader, test_loader, args):
    """Top-1 kNN accuracy (percent) of the trunk: test features against the bank's."""
    bank, bank_labels = extract_features(trunk, bank_loader, args)
    test, test_labels = extract_features(trunk, test_loader, args)
    num_classes = int(bank_labels.max()) + 1
    pred = knn_predict(test, bank, bank_labels, num_classes, args.knn_k, args.knn_t)
    return (pred == test_labels).float().mean().item() * 100
