"""networks/momentum.py (EMA encoder, schedule, queue, shuffle-BN, split BN) and networks/heads.py."""
import copy
import io

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn as nn

from conftest import free_port
from networks.heads import mlp_head
from networks.momentum import (MomentumEncoder, Queue, SplitBatchNorm, convert_split_batchnorm,
                               cosine_momentum, shuffled_forward)
from networks.resnet_big import build_trunk


# ---------------------------------------------------------------- momentum encoder and schedule

def test_ema_update_by_hand():
    online = nn.Linear(2, 1)
    with torch.no_grad():
        online.weight.copy_(torch.tensor([[1., 2.]]))
        online.bias.copy_(torch.tensor([0.]))
    ema = MomentumEncoder(online)
    with torch.no_grad():
        online.weight.copy_(torch.tensor([[3., 4.]]))
        online.bias.copy_(torch.tensor([1.]))
    ema.update(online, 0.9)  # 0.9 * [1, 2] + 0.1 * [3, 4]; 0.9 * 0 + 0.1 * 1
    assert torch.allclose(ema.module.weight, torch.tensor([[1.2, 2.2]]))
    assert torch.allclose(ema.module.bias, torch.tensor([0.1]))
    with torch.no_grad():
        online.weight.zero_()
        online.bias.fill_(2.)
    ema.update(online, 0.9)  # 0.9 * [1.2, 2.2] + 0; 0.9 * 0.1 + 0.1 * 2
    assert torch.allclose(ema.module.weight, torch.tensor([[1.08, 1.98]]))
    assert torch.allclose(ema.module.bias, torch.tensor([0.29]))
    assert torch.equal(online.weight, torch.zeros(1, 2))  # the online module is only read


def test_ema_frozen_and_buffers_untouched():
    online = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    ema = MomentumEncoder(online)
    assert all(not p.requires_grad for p in ema.parameters())
    assert all(p.requires_grad for p in online.parameters())
    with torch.no_grad():
        online[1].running_mean.fill_(5.)
        online[1].running_var.fill_(7.)
    online[1].num_batches_tracked.fill_(3)
    before = {k: v.clone() for k, v in ema.module.named_buffers()}
    ema.update(online, 0.5)
    for k, v in ema.module.named_buffers():
        assert torch.equal(v, before[k]), k
    out = ema(torch.randn(5, 3))
    assert not out.requires_grad  # a target: no graph is built
    with pytest.raises(ValueError, match='has no parameter'):
        ema.update(nn.Linear(3, 4), 0.5)


def test_cosine_momentum():
    assert cosine_momentum(0.99, 0, 100) == pytest.approx(0.99)
    assert cosine_momentum(0.99, 50, 100) == pytest.approx(0.995)
    assert cosine_momentum(0.99, 100, 100) == pytest.approx(1.0)


# ---------------------------------------------------------------- queue

def rows(*values):
    return torch.tensor([[float(v), -float(v)] for v in values])


def test_queue_enqueue_by_hand():
    q = Queue(6, 2)
    init = q.keys.clone()
    assert torch.allclose(init.norm(dim=1), torch.ones(6))
    assert q.ptr.dtype == torch.long and int(q.ptr) == 0
    q.enqueue(rows(1, 2))
    assert int(q.ptr) == 2
    assert torch.equal(q.keys[:2], rows(1, 2)) and torch.equal(q.keys[2:], init[2:])
    q.enqueue(rows(3, 4))
    q.enqueue(rows(5, 6))
    assert int(q.ptr) == 0  # full turn
    q.enqueue(rows(7, 8))  # overwrites the oldest
    assert torch.equal(q.keys, rows(7, 8, 3, 4, 5, 6)) and int(q.ptr) == 2
    # batches of 3 from ptr 2: rows 2-4, then a write that wraps around (5, 0, 1)
    q.enqueue(rows(9, 10, 11))
    q.enqueue(rows(12, 13, 14))
    assert torch.equal(q.keys, rows(13, 14, 9, 10, 11, 12)) and int(q.ptr) == 2
    with pytest.raises(ValueError, match=r'queue size 6 .*batch size 4'):
        q.enqueue(rows(1, 2, 3, 4))
    assert int(q.ptr) == 2  # a refused batch leaves the queue as it was


def test_queue_state_dict_round_trip_and_alignment():
    a = Queue(6, 2)
    a.enqueue(rows(1, 2, 3))
    buf = io.BytesIO()
    torch.save(a.state_dict(), buf)
    assert set(a.state_dict()) == {'keys', 'ptr'}
    b = Queue(6, 2)
    b.load_state_dict(torch.load(io.BytesIO(buf.getvalue()), weights_only=True))
    assert torch.equal(b.keys, a.keys) and int(b.ptr) == 3
    for q in (a, b):  # the same next step on both
        q.enqueue(rows(4, 5, 6))
    assert torch.equal(a.keys, b.keys) and int(a.ptr) == int(b.ptr) == 0

    keys, feats = Queue(6, 2), Queue(6, 5)  # e.g. MoCo's keys and their trunk features
    for i in range(5):
        k = rows(2 * i, 2 * i + 1)
        keys.enqueue(k)
        feats.enqueue(k[:, :1].expand(2, 5))
        assert int(keys.ptr) == int(feats.ptr)
    assert torch.equal(keys.keys[:, :1], feats.keys[:, :1])


def test_queue_clone_before_enqueue():
    """The loss reads the queue, then enqueue writes it in place: backward needs the clone."""
    queue = Queue(4, 3)
    w = torch.randn(2, 3, requires_grad=True)
    loss = (w @ queue.keys.T).logsumexp(1).sum()
    queue.enqueue(torch.randn(2, 3))
    with pytest.raises(RuntimeError, match='inplace'):
        loss.backward()
    loss = (w @ queue.keys.clone().T).logsumexp(1).sum()
    queue.enqueue(torch.randn(2, 3))
    loss.backward()
    assert w.grad is not None


# ---------------------------------------------------------------- split batch norm

def random_bn(bn):
    with torch.no_grad():
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.uniform_(-1, 1)
        bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(0.5, 2)
    return bn


def test_split_batchnorm_matches_per_split_batchnorm():
    torch.manual_seed(0)
    x = torch.randn(8, 3, 4, 4) * 2 + torch.arange(8.).view(8, 1, 1, 1)  # chunks with different stats
    sbn = SplitBatchNorm(3, 4)
    random_bn(sbn)
    assert sbn.state_dict().keys() == nn.BatchNorm2d(3).state_dict().keys()
    refs = [nn.BatchNorm2d(3) for _ in range(4)]
    for r in refs:
        r.load_state_dict(sbn.state_dict())

    whole = nn.BatchNorm2d(3)
    whole.load_state_dict(sbn.state_dict())

    out = sbn(x)
    expected = torch.cat([r(chunk) for r, chunk in zip(refs, x.chunk(4))])
    assert torch.allclose(out, expected, atol=1e-5)
    assert not torch.allclose(out, whole(x), atol=1e-3)  # not whole-batch statistics
    for name in ('running_mean', 'running_var'):
        mean = torch.stack([getattr(r, name) for r in refs]).mean(0)
        assert torch.allclose(getattr(sbn, name), mean, atol=1e-6), name
    assert int(sbn.num_batches_tracked) == 1

    g = torch.randn_like(out)  # gradients of the shared affine parameters sum over the splits
    (out * g).sum().backward()
    (expected * g).sum().backward()
    assert torch.allclose(sbn.weight.grad, sum(r.weight.grad for r in refs), atol=1e-4)
    assert torch.allclose(sbn.bias.grad, sum(r.bias.grad for r in refs), atol=1e-4)

    sbn.eval()
    plain = nn.BatchNorm2d(3).eval()
    plain.load_state_dict(sbn.state_dict())
    assert torch.allclose(sbn(x), plain(x), atol=1e-6)

    sbn.train()
    with pytest.raises(ValueError, match='batch size 6 .*num_splits 4'):
        sbn(x[:6])
    sbn.eval()
    sbn(x[:6])  # eval is plain BN: any batch size


def test_convert_split_batchnorm_on_a_trunk():
    torch.manual_seed(0)
    trunk = build_trunk('resnet18', width=4)
    for m in trunk.modules():
        if isinstance(m, nn.BatchNorm2d):
            random_bn(m)
    keys = trunk.state_dict().keys()
    x = torch.randn(4, 3, 16, 16)
    trunk.eval()
    before = trunk(x)
    weight = trunk.bn1.weight
    converted = convert_split_batchnorm(trunk, 2)
    assert converted is trunk  # converted in place
    bns = [m for m in trunk.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    assert bns and all(isinstance(m, SplitBatchNorm) and m.num_splits == 2 for m in bns)
    assert trunk.bn1.weight is weight  # shared parameters: optimiser references stay valid
    assert trunk.state_dict().keys() == keys
    assert torch.allclose(trunk(x), before, atol=1e-6)  # still eval mode: plain BN
    trunk.train()
    assert trunk(x).shape == before.shape
    with pytest.raises(ValueError, match='not divisible by num_splits 2'):
        trunk(x[:3])
    assert isinstance(convert_split_batchnorm(nn.BatchNorm2d(3), 2), SplitBatchNorm)


# ---------------------------------------------------------------- shuffle BN

def test_shuffled_forward_single_process_per_sample_encoder():
    torch.manual_seed(0)
    enc = nn.Sequential(nn.Conv2d(3, 4, 3), random_bn(nn.BatchNorm2d(4))).eval()
    x = torch.randn(6, 3, 5, 5)
    assert torch.allclose(shuffled_forward(enc, x), enc(x), atol=1e-6)
    flat = lambda t: t.flatten(1)  # noqa: E731
    assert torch.equal(shuffled_forward(flat, x), x.flatten(1))
    pair = shuffled_forward(lambda t: (flat(t), 2 * flat(t)), x)
    assert isinstance(pair, tuple) and torch.equal(pair[0], x.flatten(1)) and torch.equal(pair[1], 2 * x.flatten(1))
    pair = shuffled_forward(lambda t: [flat(t), flat(t)[:, :1]], x)
    assert isinstance(pair, list) and torch.equal(pair[1], x.flatten(1)[:, :1])


def test_shuffled_forward_single_process_split_bn():
    torch.manual_seed(0)
    enc = nn.Sequential(nn.Conv2d(3, 4, 3), SplitBatchNorm(4, 2)).train()
    x = torch.randn(8, 3, 5, 5) + torch.arange(8.).view(8, 1, 1, 1)
    unshuffled = copy.deepcopy(enc)(x)
    torch.manual_seed(1)
    perm = torch.randperm(8)
    expected = copy.deepcopy(enc)(x[perm])[perm.argsort()]  # split BN over the permuted batch
    torch.manual_seed(1)
    out = shuffled_forward(enc, x)
    assert torch.allclose(out, expected, atol=1e-6)
    assert not torch.allclose(out, unshuffled, atol=1e-3)  # the splits mixed different samples


class RoutingEncoder(nn.Module):
    """Train-mode BN output (depends on the batch) and the input rows themselves (depend on the row
    alone: they show where each row went)."""

    def __init__(self):
        super().__init__()
        self.bn = nn.BatchNorm2d(3)

    def forward(self, x):
        return self.bn(x), x.flatten(1)


def _two_rank_worker(rank, port):
    torch.set_num_threads(1)
    dist.init_process_group('gloo', init_method=f'tcp://127.0.0.1:{port}', rank=rank, world_size=2)
    try:
        n = 4
        data = [torch.randn(n, 3, 2, 2, generator=torch.Generator().manual_seed(10 + r)) + 3 * r for r in range(2)]
        x = data[rank]
        torch.manual_seed(rank)  # different RNG per rank: only rank 0's permutation may be used
        enc = RoutingEncoder().train()
        bn_out, rows_out = shuffled_forward(enc, x)
        assert torch.equal(rows_out, x.flatten(1)), f'rank {rank}: rows did not come back in order'

        # What rank 0 drew (seed 0, first draw) decides the chunks: rank r normalised chunk r of the
        # permuted global batch, which is SplitBatchNorm with 2 splits on one process.
        perm = torch.randperm(2 * n, generator=torch.Generator().manual_seed(0))
        x_all = torch.cat(data)
        expected = SplitBatchNorm(3, 2).train()(x_all[perm])[perm.argsort()][rank * n:(rank + 1) * n]
        assert torch.allclose(bn_out, expected, atol=1e-5), f'rank {rank}: wrong shuffle-BN output'
        assert not torch.allclose(bn_out, nn.BatchNorm2d(3).train()(x), atol=1e-3)

        single = shuffled_forward(lambda t: t.flatten(1) * 2, x)  # a plain tensor output
        assert torch.equal(single, 2 * x.flatten(1))
    finally:
        dist.destroy_process_group()


def test_shuffled_forward_two_processes():
    mp.spawn(_two_rank_worker, args=(free_port(),), nprocs=2, join=True)


# ---------------------------------------------------------------- heads

def test_mlp_head_moco_v2():
    head = mlp_head(16, 16, 8)
    kinds = [type(m) for m in head]
    assert kinds == [nn.Linear, nn.ReLU, nn.Linear]
    assert all(m.bias is not None for m in head if isinstance(m, nn.Linear))
    assert head(torch.randn(5, 16)).shape == (5, 8)


def test_mlp_head_bn():
    head = mlp_head(16, 32, 8, num_layers=3, bn=True, last_bn=True)
    kinds = [type(m) for m in head]
    assert kinds == [nn.Linear, nn.BatchNorm1d, nn.ReLU] * 2 + [nn.Linear, nn.BatchNorm1d]
    assert all(m.bias is None for m in head if isinstance(m, nn.Linear))  # every Linear feeds a BN
    assert head[1].affine and not head[-1].affine and head[-1].num_features == 8
    out = head(torch.randn(10, 16))
    assert out.shape == (10, 8)
    assert torch.allclose(out.mean(0), torch.zeros(8), atol=1e-5)  # standardised by the last BN

    head = mlp_head(16, 32, 8, bn=True)  # BYOL-style: final Linear with its bias, no last BN
    assert [type(m) for m in head] == [nn.Linear, nn.BatchNorm1d, nn.ReLU, nn.Linear]
    assert head[0].bias is None and head[-1].bias is not None
    assert [type(m) for m in mlp_head(16, 32, 8, num_layers=1)] == [nn.Linear]
    with pytest.raises(ValueError):
        mlp_head(16, 32, 8, num_layers=0)


@pytest.mark.parametrize('bn, shape', [(nn.BatchNorm1d, (8, 5)), (nn.BatchNorm2d, (8, 5, 3, 3)),
                                       (nn.BatchNorm3d, (8, 5, 2, 3, 3))])
def test_split_batchnorm_of_every_rank_equals_per_chunk_batchnorm(bn, shape):
    # before the consolidation only BatchNorm2d was split: SCE's BatchNorm1d heads and the video
    # trunks' BatchNorm3d kept whole-batch statistics under --bn_splits
    torch.manual_seed(0)
    x = torch.randn(shape)
    split = convert_split_batchnorm(nn.Sequential(bn(5)), 4)[0].train()
    assert isinstance(split, SplitBatchNorm)
    refs = [bn(5).train() for _ in range(4)]
    expected = torch.cat([ref(chunk) for ref, chunk in zip(refs, x.chunk(4))])
    assert torch.allclose(split(x), expected, atol=1e-5)
    assert torch.allclose(split.running_mean, torch.stack([r.running_mean for r in refs]).mean(0), atol=1e-6)
