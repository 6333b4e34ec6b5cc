"""Projection / prediction MLPs put on top of a trunk's pooled features."""
import torch
import torch.nn as nn
import torch.nn.functional as F


def mlp_head(dim_in, hidden, dim_out, num_layers=2, bn=False, last_bn=False):
    """(num_layers - 1) x [Linear -> (BN) -> ReLU], then a final Linear, then (BN without affine).

    With bn=True the hidden Linears have no bias: the BatchNorm1d right after subtracts the mean,
    which cancels any bias. Likewise the final Linear has no bias when last_bn=True; that last BN has
    no affine parameters (SimCLR v2 / MoCo v3 / SCE style: the loss sees standardised outputs).

    MoCo v2 projection (Linear(2048, 2048) -> ReLU -> Linear(2048, 128), biases, no BN):
        mlp_head(2048, 2048, 128)
    SCE / BYOL-style projector (Linear(no bias) -> BN -> ReLU -> Linear -> BN(affine=False)):
        mlp_head(2048, 4096, 256, bn=True, last_bn=True)
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
    layers.append(nn.Linear(d, dim_out, bias=not last_bn))
    if last_bn:
        layers.append(nn.BatchNorm1d(dim_out, affine=False))
    return nn.Sequential(*layers)


class EncoderWithHead(nn.Module):
    """Trunk (under `encoder`, as every model here) followed by a projection head and, optionally, a
    prediction head (SCE / BYOL's online branch; a momentum copy sets `predictor` to None). Takes one
    batch or a list of crops; crops of equal size are batched together, so multi-crop inputs cost one
    trunk call per resolution and one DDP forward. Returns (L2-normalised outputs, trunk features),
    rows in the order of the crops."""

    def __init__(self, encoder, head, predictor=None):
        super().__init__()
        self.encoder = encoder
        self.head = head
        self.predictor = predictor

    def forward(self, crops):
        if torch.is_tensor(crops):
            crops = [crops]
        feats, start = [], 0
        while start < len(crops):  # runs of consecutive crops with one resolution
            end = start + 1
            while end < len(crops) and crops[end].shape[-2:] == crops[start].shape[-2:]:
                end += 1
            feats.append(self.encoder(torch.cat(crops[start:end])))
            start = end
        feats = torch.cat(feats)
        out = self.head(feats)
        if self.predictor is not None:
            out = self.predictor(out)
        return F.normalize(out, dim=1), feats
