"""SupCon's key side with a momentum encoder (main_supcon.py --momentum_encoder): the momentum copy
of the online SupConResNet, and the queue of its past keys with their images' labels.

A training step reads, in order (the loss sees the queue as it was before this step):
    q = model(x)
    k = momentum.encode(model, x)                   # momentum update, then the keys of every view
    loss = criterion(gather(q), gather(k), momentum.queue.keys, gather(labels), momentum.queue.labels)
    loss.backward(); ...
    momentum.enqueue(gather(k), gather(labels))     # every key of the global batch
"""
import torch

from networks.momentum import Queue


class LabelledQueue(Queue):
    """A Queue whose rows carry the label of the image that gave the key (buffer `labels` [size],
    saved with the keys and the pointer). It starts as MoCo's queue does, random unit rows, labelled
    -1: negatives of every anchor, never positives (as are the keys SimCLR enqueues, unlabelled)."""

    def __init__(self, size, dim):
        super().__init__(size, dim)
        self.register_buffer('labels', torch.full((size,), -1, dtype=torch.long))

    @torch.no_grad()
    def enqueue(self, batch, labels):
        """Write the rows of `batch` and their `labels` at ptr (all ranks' rows, in the same order)."""
        start = self.ptr.clone()
        super().enqueue(batch)  # checks the size, writes the keys, advances ptr
        rows = (start + torch.arange(batch.shape[0], device=start.device)) % self.labels.shape[0]
        self.labels.index_copy_(0, rows, labels.to(self.labels))


class MomentumKeys:
    """The momentum (key) encoder `encoder` (a networks.momentum.MomentumEncoder of the online
    model), its coefficient `m`, and the LabelledQueue `queue` of its keys."""

    def __init__(self, encoder, queue, m):
        self.encoder, self.queue, self.m = encoder, queue, m

    def state(self):
        """What the checkpoint saves and --resume restores, under MoCo's names."""
        return {'momentum_encoder': self.encoder, 'queue': self.queue}

    @torch.no_grad()
    def encode(self, online, images):
        """Move the key encoder towards `online` (param_k <- m param_k + (1 - m) param_q), as MoCo
        does before each step's keys, then encode `images` (every view) with it: L2-normalised keys.
        The encoder runs in training mode: its BatchNorm normalises with this batch's statistics,
        as the online encoder's does."""
        self.encoder.train()
        self.encoder.update(online, self.m)
        return self.encoder(images)

    @torch.no_grad()
    def enqueue(self, keys, labels=None):
        """keys [bsz, n_views, D] of the whole global batch, labels [bsz]; None (SimCLR): -1."""
        bsz, n_views, dim = keys.shape
        labels = (torch.full((bsz * n_views,), -1, dtype=torch.long, device=keys.device) if labels is None
                  else labels.repeat_interleave(n_views))
        self.queue.enqueue(keys.float().reshape(bsz * n_views, dim), labels)
