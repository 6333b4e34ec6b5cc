"""Contrastive losses as pure tensor maths: every argument is a batch of rows, every loss a scalar mean.
Computation runs in at least float32, autocast or not, with log-sum-exp, never log(sum(exp))."""
import torch
import torch.nn as nn
import torch.nn.functional as F


class SupConLoss(nn.Module):
    """Supervised contrastive loss (Khosla et al. 2020); SimCLR's NT-Xent when given no labels and no mask."""

    def __init__(self, temperature=0.07, contrast_mode='all', base_temperature=0.07):
        super().__init__()
        if contrast_mode not in ('all', 'one'):
            raise ValueError(f"contrast_mode must be 'all' or 'one', got {contrast_mode!r}")
        self.temperature = temperature
        self.contrast_mode = contrast_mode
        self.base_temperature = base_temperature

    def forward(self, features, labels=None, mask=None):
        """features [bsz, n_views, ...] with L2-normalised rows; labels [bsz], or mask [bsz, bsz] where
        mask[i, j] weighs sample j as a positive of anchor i. Neither: only a sample's other views are positives."""
        if features.dim() < 3:
            raise ValueError('features must be [bsz, n_views, ...], at least 3 dimensions')
        if labels is not None and mask is not None:
            raise ValueError('give labels or mask, not both')
        bsz, n_views = features.shape[:2]
        # at least float32: bf16/fp16 logits / temperature would lose the digits that the softmax needs
        features = features.reshape(bsz, n_views, -1).to(torch.promote_types(features.dtype, torch.float32))
        device, dtype = features.device, features.dtype

        if labels is not None:
            labels = labels.reshape(-1, 1)
            if labels.shape[0] != bsz:
                raise ValueError(f'{labels.shape[0]} labels for {bsz} samples')
            mask = (labels == labels.T).to(dtype)
        elif mask is None:
            mask = torch.eye(bsz, device=device, dtype=dtype)
        else:
            mask = mask.to(device=device, dtype=dtype)

        # contrast set: every view of every sample, view-major (view 0 of all samples, then view 1, ...)
        contrast = features.transpose(0, 1).reshape(n_views * bsz, -1)
        anchor_count = n_views if self.contrast_mode == 'all' else 1
        anchor = contrast[:anchor_count * bsz]  # view-major, so the first bsz rows are view 0
        with torch.autocast(device.type, enabled=False):  # AMP would run this matmul in half precision
            logits = anchor @ contrast.T / self.temperature

        # anchor row i is contrast column i: drop it from the denominator and from the positives
        is_self = torch.eye(*logits.shape, dtype=torch.bool, device=device)
        pos = mask.repeat(anchor_count, n_views).masked_fill(is_self, 0)
        # anchors without positives contribute 0 yet count in the mean, as in the released code
        return -(self.temperature / self.base_temperature) * _mean_log_prob_pos(logits, pos, is_self).mean()


def _mean_log_prob_pos(logits, pos, dropped=None):
    """Per anchor row: the pos-weighted mean of log softmax(logits) over the row's columns, the
    `dropped` ones (bool, logits' shape) left out of the softmax; 0 for a row without positives."""
    if dropped is None:
        return (pos * (logits - logits.logsumexp(dim=1, keepdim=True))).sum(dim=1) / _at_least_one(pos.sum(dim=1))
    log_prob = logits - logits.masked_fill(dropped, float('-inf')).logsumexp(dim=1, keepdim=True)
    # dropped entries are zeroed, so a row with nothing else (log_prob = inf) gives 0, not NaN
    return (pos * log_prob.masked_fill(dropped, 0)).sum(dim=1) / _at_least_one(pos.sum(dim=1))


def _at_least_one(n_pos):
    return torch.where(n_pos < 1e-6, 1.0, n_pos)


class SupConMomentumLoss(nn.Module):
    """SupCon with a momentum encoder and a queue of labelled keys (the SupContrast README's ImageNet
    model, "small batch size with the trick of the momentum encoder"). The anchors are the queries,
    every view of every sample; the contrast set C is every key of the batch (the momentum encoder's,
    every view) and the queue. For anchor i with query q_i and label y_i:

        P(i)   = {c in C : label(c) = y_i}        (its own keys included: the other view's, and the
                                                   same view's, a key and not the query itself)
        loss_i = -(T / T_base) / |P(i)| * sum_{p in P(i)} log( exp(q_i.c_p / T) / sum_{c in C} exp(q_i.c / T) )

    and the loss is the mean over anchors. Queue rows labelled -1 (MoCo's random initial rows, and
    the keys SimCLR enqueues) are negatives of every anchor, never positives. Without labels
    (SimCLR) the positives are the anchor's own sample's keys and every queue row is a negative."""

    def __init__(self, temperature=0.07, base_temperature=0.07):
        super().__init__()
        self.temperature = temperature
        self.base_temperature = base_temperature

    def forward(self, features, keys, queue, labels=None, queue_labels=None):
        """features [bsz, n_views, D] queries and keys [bsz, n_keys, D] of the same samples, queue [K, D],
        all rows L2-normalised; labels [bsz] (>= 0) with queue_labels [K], or neither (SimCLR). Keys and
        queue get no gradient."""
        if features.dim() != 3 or keys.dim() != 3 or keys.shape[0] != features.shape[0]:
            raise ValueError(f'features and keys must be [bsz, views, D] of the same samples, got '
                             f'{list(features.shape)} and {list(keys.shape)}')
        _check_rows('queue', queue, features.shape[2])
        bsz, n_views, dim = features.shape
        n_keys = keys.shape[1]
        features, keys, queue = _at_least_float32(features, keys.detach(), queue.detach())
        device, dtype = features.device, features.dtype

        if labels is None:  # SimCLR: a sample's own keys only, every queue row a negative
            mask = torch.eye(bsz, device=device, dtype=dtype)
            queue_pos = torch.zeros(bsz, queue.shape[0], device=device, dtype=dtype)
        else:
            if queue_labels is None or labels.numel() != bsz or queue_labels.numel() != queue.shape[0]:
                raise ValueError(f'labels [{bsz}] and queue_labels [{queue.shape[0]}] go together')
            labels, queue_labels = labels.reshape(-1, 1), queue_labels.reshape(1, -1)
            mask = (labels == labels.T).to(dtype)
            queue_pos = ((labels == queue_labels) & (queue_labels >= 0)).to(dtype)

        # view-major rows, as SupConLoss: view 0 of every sample, then view 1, ...
        anchor = features.transpose(0, 1).reshape(n_views * bsz, dim)
        contrast = torch.cat([keys.transpose(0, 1).reshape(n_keys * bsz, dim), queue])
        with torch.autocast(device.type, enabled=False):  # AMP would run this matmul in half precision
            logits = anchor @ contrast.T / self.temperature
        pos = torch.cat([mask.repeat(n_views, n_keys), queue_pos.repeat(n_views, 1)], dim=1)
        return -(self.temperature / self.base_temperature) * _mean_log_prob_pos(logits, pos).mean()


def _at_least_float32(*tensors):
    """Cast to at least float32 (float64 stays float64): bf16/fp16 logits / temperature lose the softmax's digits."""
    return [t.to(torch.promote_types(t.dtype, torch.float32)) for t in tensors]


def _check_rows(name, t, dim=None):
    if t.dim() != 2 or (dim is not None and t.shape[1] != dim):
        raise ValueError(f'{name} must be [rows, {dim if dim is not None else "D"}], got {list(t.shape)}')


def _queries_keys_queue(q, k, queue):
    """Checked shapes (one key per query); at least float32, keys and queue detached."""
    _check_rows('q', q)
    _check_rows('k', k, q.shape[1])
    _check_rows('queue', queue, q.shape[1])
    if k.shape[0] != q.shape[0]:
        raise ValueError(f'{k.shape[0]} keys for {q.shape[0]} queries')
    return _at_least_float32(q, k.detach(), queue.detach())


def _key_queue_logits(q, k, queue, temperature):
    """[q.k, q.queue] / temperature: each query's own key at index 0, the queue after it."""
    return torch.cat([(q * k).sum(dim=1, keepdim=True), q @ queue.T], dim=1) / temperature


class MoCoLoss(nn.Module):
    """MoCo's InfoNCE (He et al. 2020): the own key k at index 0 is the positive, the queue's rows the negatives."""

    def __init__(self, temperature=0.2):
        super().__init__()
        self.temperature = temperature

    def forward(self, q, k, queue):
        """q [N, D], k [N, D], queue [K, D], all rows L2-normalised. Keys and queue get no gradient."""
        q, k, queue = _queries_keys_queue(q, k, queue)
        with torch.autocast(q.device.type, enabled=False):  # AMP would run these products in half precision
            logits = _key_queue_logits(q, k, queue, self.temperature)
        labels = torch.zeros(q.shape[0], dtype=torch.long, device=q.device)
        return F.cross_entropy(logits, labels)


class SCELoss(nn.Module):
    """Similarity Contrastive Estimation (Denize et al., WACV 2023): a soft contrastive target that
    mixes the one-hot InfoNCE label with the momentum key's own similarity distribution over the
    queue. coeff=1 is MoCo's InfoNCE.

    target = coeff * onehot + (1 - coeff) * softmax([0, k.queue] / temperature_m)   (L1-normalised)
    loss   = cross-entropy(target, softmax([q.k, q.queue] / temperature))
    The target's positive slot holds similarity 0 (not k.k = 1), as the released code computes it."""

    def __init__(self, coeff=0.5, temperature=0.1, temperature_m=0.05):
        super().__init__()
        if not 0 <= coeff <= 1:
            raise ValueError(f'coeff must lie in [0, 1], got {coeff}')
        self.coeff, self.temperature, self.temperature_m = coeff, temperature, temperature_m

    def forward(self, q, k, queue):
        """q [N, D], k [N, D], queue [K, D], all rows L2-normalised. Keys and queue get no gradient."""
        q, k, queue = _queries_keys_queue(q, k, queue)
        with torch.autocast(q.device.type, enabled=False):  # AMP would run these products in half precision
            logits_q = _key_queue_logits(q, k, queue, self.temperature)
            sim_k = torch.cat([torch.zeros_like(k[:, :1]), k @ queue.T], dim=1)
            target = (1 - self.coeff) * F.softmax(sim_k / self.temperature_m, dim=1)
            target[:, 0] += self.coeff
            target = target / target.sum(dim=1, keepdim=True)
            return -(target * F.log_softmax(logits_q, dim=1)).sum(dim=1).mean()


class KNNLoss(nn.Module):
    """Auxiliary kNN loss of Van Gansbeke et al. 2021: the topk queue entries nearest to the query in backbone
    (trunk avg-pool) space are its positives, under a softmax of q·queue/T over the queue alone."""

    def __init__(self, topk=20, temperature=0.2):
        super().__init__()
        if topk < 1:
            raise ValueError(f'topk must be at least 1, got {topk}')
        self.topk = topk
        self.temperature = temperature

    def forward(self, q, q_backbone, queue, queue_backbone):
        """q [N, D], q_backbone [N, Db], queue [K, D], queue_backbone [K, Db], all rows L2-normalised.
        q_backbone only selects the neighbours: gradient flows to q alone."""
        _check_rows('q', q)
        _check_rows('q_backbone', q_backbone)
        _check_rows('queue', queue, q.shape[1])
        _check_rows('queue_backbone', queue_backbone, q_backbone.shape[1])
        if q_backbone.shape[0] != q.shape[0]:
            raise ValueError(f'{q_backbone.shape[0]} backbone features for {q.shape[0]} queries')
        if queue_backbone.shape[0] != queue.shape[0]:
            raise ValueError(f'queue holds {queue.shape[0]} keys but queue_backbone {queue_backbone.shape[0]}')
        if self.topk > queue.shape[0]:
            raise ValueError(f'topk={self.topk} exceeds the queue size {queue.shape[0]}')
        q, queue, q_backbone, queue_backbone = _at_least_float32(
            q, queue.detach(), q_backbone.detach(), queue_backbone.detach())
        with torch.autocast(q.device.type, enabled=False):  # AMP would run these products in half precision
            knn = (q_backbone @ queue_backbone.T).topk(self.topk, dim=1).indices  # [N, topk]
            log_prob = F.log_softmax(q @ queue.T / self.temperature, dim=1)         # [N, K]
        return -log_prob.gather(1, knn).mean(dim=1).mean()


class BatchKeysMoCoLoss(nn.Module):
    """CLSA's InfoNCE: the candidates are every key of the (global) batch, then the queue; query i's
    positive is keys[offset + i], so the other images' keys of this step are negatives too. On a rank,
    offset = rank * per-rank batch locates its own images in the gathered keys."""

    def __init__(self, temperature=0.2):
        super().__init__()
        self.temperature = temperature

    def forward(self, q, keys, queue, offset=0):
        """q [N, D], keys [M, D], queue [K, D], all rows L2-normalised, offset + N <= M. Keys and queue
        get no gradient."""
        _check_rows('q', q)
        _check_rows('keys', keys, q.shape[1])
        _check_rows('queue', queue, q.shape[1])
        if not 0 <= offset <= keys.shape[0] - q.shape[0]:
            raise ValueError(f'positives keys[{offset}:{offset + q.shape[0]}] lie outside the {keys.shape[0]} keys')
        q, keys, queue = _at_least_float32(q, keys.detach(), queue.detach())
        with torch.autocast(q.device.type, enabled=False):  # AMP would run these products in half precision
            logits = torch.cat([q @ keys.T, q @ queue.T], dim=1) / self.temperature
        labels = torch.arange(offset, offset + q.shape[0], device=q.device)
        return F.cross_entropy(logits, labels)


class CLSALoss(nn.Module):
    """CLSA's distribution divergence (Wang & Qi 2021): a weakly augmented query's softmax over the
    candidates [every key of the batch; queue] is the target (detached) of the strongly augmented
    query's distribution over the same candidates: -sum target * log p_strong, averaged over rows.

    The released code builds the target from the weak query's InfoNCE logits (at moco_t) rescaled
    by moco_t / clsa_t: that is softmax([q_weak.k, q_weak.queue] / clsa_t), computed here directly."""

    def __init__(self, temperature=0.2):
        super().__init__()
        self.temperature = temperature

    def forward(self, q_weak, q_strong, k, queue):
        """q_weak [N, D], q_strong [N, D] (row i: the same image), k [M, D] (every key of the batch),
        queue [K, D], all rows L2-normalised. Only q_strong gets a gradient."""
        _check_rows('q_weak', q_weak)
        _check_rows('q_strong', q_strong, q_weak.shape[1])
        _check_rows('k', k, q_weak.shape[1])
        _check_rows('queue', queue, q_weak.shape[1])
        if q_strong.shape[0] != q_weak.shape[0]:
            raise ValueError(f'{q_strong.shape[0]} strong queries for {q_weak.shape[0]} weak ones')
        q_weak, q_strong, k, queue = _at_least_float32(q_weak.detach(), q_strong, k.detach(), queue.detach())
        with torch.autocast(q_strong.device.type, enabled=False):  # AMP would run these products in half precision
            logits = lambda q: torch.cat([q @ k.T, q @ queue.T], dim=1) / self.temperature
            target = F.softmax(logits(q_weak), dim=1)
            # log_softmax, not log(softmax): a strong probability that underflows to 0 gives a finite term
            log_p_strong = F.log_softmax(logits(q_strong), dim=1)
        return -(target * log_p_strong).sum(dim=1).mean()
