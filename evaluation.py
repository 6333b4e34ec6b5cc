"""Evaluation of representations: classifier accuracy, trunk features, weighted kNN."""
import torch
import torch.distributed as dist
import torch.nn.functional as F

from distributed import gather, to_device
from util import accuracy, autocast, world_size


@torch.no_grad()
def evaluate(model, loader, args):
    """Cross-entropy and top-1/top-5 accuracy (percent) of a classifier over a sharded loader,
    summed over ranks."""
    model.eval()
    totals = torch.zeros(4, device=args.device)  # loss sum, top-1 hits, top-5 hits, count
    for images, labels in loader:
        labels = labels.to(args.device, non_blocking=True)
        with autocast(args):
            logits = model(to_device(images, args)).float()
        top1, top5 = accuracy(logits, labels, (1, 5))
        n = len(labels)
        totals += torch.stack([F.cross_entropy(logits, labels, reduction='sum'), top1 * n / 100,
                               top5 * n / 100, torch.tensor(float(n), device=args.device)])
    if world_size() > 1:
        dist.all_reduce(totals)
    loss, hit1, hit5, n = totals.tolist()
    return loss / max(n, 1), 100 * hit1 / max(n, 1), 100 * hit5 / max(n, 1)


@torch.no_grad()
def extract_features(trunk, loader, args):
    """L2-normalised trunk features and labels of a sharded loader, gathered from all ranks in
    dataset order."""
    trunk.eval()
    feats, labels = [], []
    for images, target in loader:
        with autocast(args):
            f = trunk(to_device(images, args))
        feats.append(F.normalize(f.float(), dim=1))
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
    return feats, labels


def knn_predict(test_feats, bank_feats, bank_labels, num_classes, k=200, t=0.1, chunk=1024):
    """Weighted kNN (Wu et al. 2018): the k most cosine-similar bank entries vote for their
    class with weight exp(sim / t). Returns predicted classes."""
    preds = []
    k = min(k, len(bank_labels))
    for q in test_feats.split(chunk):
        sim, idx = (q @ bank_feats.T).topk(k, dim=1)
        votes = torch.zeros(len(q), num_classes, device=q.device)
        votes.scatter_add_(1, bank_labels[idx], (sim / t).exp())
        preds.append(votes.argmax(1))
    return torch.cat(preds)


def knn_accuracy(trunk, bank_loader, test_loader, args):
    """Top-1 kNN accuracy (percent) of the trunk: test features against the bank's."""
    bank, bank_labels = extract_features(trunk, bank_loader, args)
    test, test_labels = extract_features(trunk, test_loader, args)
    num_classes = int(bank_labels.max()) + 1
    pred = knn_predict(test, bank, bank_labels, num_classes, args.knn_k, args.knn_t)
    return (pred == test_labels).float().mean().item() * 100
