"""Projection / prediction MLPs put on top of a trunk's pooled features."""
import torch
import torch.nn as nn
import torch.nn.functional as F


def mlp_head(dim_in, hidden, dim_out, num_layers=2, bn=False, last_bn=False, last_bias=True):
    """(num_layers - 1) x [Linear -> (BN) -> ReLU], then a final Linear, then (BN without affine).

    With bn=True the hidden Linears have no bias: the BatchNorm1d right after subtracts the mean,
    which cancels any bias. Likewise the final Linear has no bias when last_bn=True; that last BN has
    no affine parameters (SimCLR v2 / MoCo v3 / SCE style: the loss sees standardised outputs).
    last_bias=False drops the final Linear's bias without a BN after it (SCE's released predictor,
    `last_bias: False`).

    MoCo v2 projection (Linear(2048, 2048) -> ReLU -> Linear(2048, 128), biases, no BN):
        mlp_head(2048, 2048, 128)
    SCE / BYOL-style projector (Linear(no bias) -> BN -> ReLU -> Linear -> BN(affine=False)):
        mlp_head(2048, 4096, 256, bn=True, last_bn=True)
    SCE's predictor (Linear(no bias) -> BN -> ReLU -> Linear(no bias)):
        mlp_head(256, 4096, 256, bn=True, last_bias=False)
    num_layers=1 gives a single Linear (a linear head).
    """
    if num_layers < 1:
        raise ValueError(f'num_layers must be >= 1, got {num_layers}')
    layers, d = [], dim_in
    for _ in range(num_layers - 1):
        layers.append(nn.Linear(d, hidden, bias=not bn))
        if bn:
            layers.append(nn.BatchNorm1d(hidden))
        layers.append(nn.ReLU(inplace=True))
        d = hidden
    layers.append(nn.Linear(d, dim_out, bias=last_bias and not last_bn))
    if last_bn:
        layers.append(nn.BatchNorm1d(dim_out, affine=False))
    return nn.Sequential(*layers)


class EncoderWithHead(nn.Module):
    """Trunk (under `encoder`, as every model here) followed by a projection head and, optionally, a
    prediction head (SCE / BYOL's online branch; a momentum copy sets `predictor` to None). Takes one
    batch or a list of crops, in one DDP forward. Returns (L2-normalised outputs, trunk features),
    rows in the order of the crops.

    mutual_pass=True (the default; MoCo, CLSA, SCE --mutual_pass): consecutive crops of equal size go
    through the trunk together (one call per resolution) and the heads see all crops at once, so
    every BatchNorm normalises over the pooled crops. mutual_pass=False (SCE's released configs):
    each crop goes through trunk, projector and predictor on its own, so BatchNorm statistics (and
    running-statistic updates, one per crop) are per crop."""

    def __init__(self, encoder, head, predictor=None, mutual_pass=True):
        super().__init__()
        self.encoder = encoder
        self.head = head
        self.predictor = predictor
        self.mutual_pass = mutual_pass

    def project(self, feats):
        out = self.head(feats)
        return out if self.predictor is None else self.predictor(out)

    def forward(self, crops):
        if torch.is_tensor(crops):
            crops = [crops]
        if not self.mutual_pass:
            feats = [self.encoder(crop) for crop in crops]
            out = torch.cat([self.project(f) for f in feats])
            return F.normalize(out, dim=1), torch.cat(feats)
        feats, start = [], 0
        while start < len(crops):  # runs of consecutive crops with one resolution
            end = start + 1
            while end < len(crops) and crops[end].shape[-2:] == crops[start].shape[-2:]:
                end += 1
            feats.append(self.encoder(torch.cat(crops[start:end])))
            start = end
        feats = torch.cat(feats)
        return F.normalize(self.project(feats), dim=1), feats
