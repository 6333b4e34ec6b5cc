"""Contrastive losses as pure tensor maths: every argument is a batch of rows, every loss a scalar mean.
Computation runs in at least float32, autocast or not, with log-sum-exp, never log(sum(exp))."""
import torch
import torch.nn as nn


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
        log_prob = logits - logits.masked_fill(is_self, float('-inf')).logsumexp(dim=1, keepdim=True)
        pos = mask.repeat(anchor_count, n_views).masked_fill(is_self, 0)

        # weighted mean over positives; the self entry is zeroed so a lone row (log_prob = inf) gives 0, not NaN
        n_pos = pos.sum(dim=1)
        mean_log_prob_pos = (pos * log_prob.masked_fill(is_self, 0)).sum(dim=1) / torch.where(n_pos < 1e-6, 1.0, n_pos)
        # anchors without positives contribute 0 yet count in the mean, as in the released code
        return -(self.temperature / self.base_temperature) * mean_log_prob_pos.mean()
