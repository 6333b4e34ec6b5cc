"""MoCoLoss and KNNLoss checked against plain-Python references (loops over rows, float64 scalars)."""
import math

import pytest
import torch
import torch.nn.functional as F

from losses import KNNLoss, MoCoLoss


def dot(a, b):
    return sum(x * y for x, y in zip(a, b))


def log_softmax_list(logits):
    m = max(logits)
    log_z = m + math.log(sum(math.exp(s - m) for s in logits))
    return [s - log_z for s in logits]


def reference_moco(q, k, queue, temperature):
    """InfoNCE: -log softmax([q·k, q·queue_1, ..., q·queue_K] / T)[0], averaged over rows."""
    q, k, queue = q.double().tolist(), k.double().tolist(), queue.double().tolist()
    total = 0.0
    for qi, ki in zip(q, k):
        logits = [dot(qi, ki) / temperature] + [dot(qi, n) / temperature for n in queue]
        total += -log_softmax_list(logits)[0]
    return total / len(q)


def reference_knn(q, q_backbone, queue, queue_backbone, topk, temperature):
    """-mean over the topk backbone neighbours j of log softmax_j(q·queue / T), averaged over rows."""
    q, qb = q.double().tolist(), q_backbone.double().tolist()
    queue, queue_b = queue.double().tolist(), queue_backbone.double().tolist()
    total = 0.0
    for qi, qbi in zip(q, qb):
        sims = [dot(qbi, nb) for nb in queue_b]
        neighbours = sorted(range(len(queue)), key=lambda j: -sims[j])[:topk]
        log_prob = log_softmax_list([dot(qi, n) / temperature for n in queue])
        total += -sum(log_prob[j] for j in neighbours) / topk
    return total / len(q)


def rows(n, dim, seed, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(n, dim, generator=g, dtype=dtype), dim=1)


# ---------------------------------------------------------------- MoCoLoss

@pytest.mark.parametrize('temperature', [0.07, 0.2, 1.0])
def test_moco_matches_reference(temperature):
    q, k, queue = rows(6, 8, 0), rows(6, 8, 1), rows(20, 8, 2)
    loss = MoCoLoss(temperature)(q, k, queue)
    assert loss.dim() == 0 and loss.dtype == torch.float64
    assert loss.item() == pytest.approx(reference_moco(q, k, queue, temperature), abs=1e-6)


def test_moco_equals_cross_entropy_on_hand_built_logits():
    q, k, queue = rows(5, 16, 3), rows(5, 16, 4), rows(32, 16, 5)
    logits = torch.cat([torch.einsum('nd,nd->n', q, k)[:, None], torch.einsum('nd,kd->nk', q, queue)], 1) / 0.2
    expected = F.cross_entropy(logits, torch.zeros(5, dtype=torch.long))
    assert torch.allclose(MoCoLoss(0.2)(q, k, queue), expected, atol=1e-12, rtol=0)


def test_moco_tiny_by_hand():
    # q = k = e1, queue = [e2, -e1], T = 0.5  ->  logits = [1, 0, -1] / 0.5 = [2, 0, -2]
    # loss = -log(e^2 / (e^2 + 1 + e^-2)) = log(1 + e^-2 + e^-4)
    #      = log(1 + 0.1353352832 + 0.0183156389) = log(1.1536509221) = 0.1429316285
    q = torch.tensor([[1.0, 0.0]], dtype=torch.float64)
    queue = torch.tensor([[0.0, 1.0], [-1.0, 0.0]], dtype=torch.float64)
    assert MoCoLoss(0.5)(q, q.clone(), queue).item() == pytest.approx(0.1429316285, abs=1e-9)


def test_moco_decreases_as_q_moves_towards_k():
    q0, k, queue = rows(8, 64, 6), rows(8, 64, 7), rows(128, 64, 8)
    crit = MoCoLoss(0.2)
    losses = [crit(F.normalize((1 - t) * q0 + t * k, dim=1), k, queue).item() for t in (0.0, 0.25, 0.5, 0.75, 1.0)]
    assert all(a > b for a, b in zip(losses, losses[1:])), losses


def test_moco_gradient_flows_to_q_only():
    q, k, queue = rows(4, 8, 9).requires_grad_(), rows(4, 8, 10).requires_grad_(), rows(12, 8, 11).requires_grad_()
    MoCoLoss(0.2)(q, k, queue).backward()
    assert q.grad is not None and q.grad.abs().sum() > 0
    assert k.grad is None and queue.grad is None


def test_moco_bf16_autocast_is_float32():
    q, k, queue = rows(8, 32, 12, torch.float32), rows(8, 32, 13, torch.float32), rows(64, 32, 14, torch.float32)
    crit = MoCoLoss(0.2)
    plain = crit(q, k, queue)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        amp = crit(q, k, queue)
        amp_bf16_inputs = crit(q.bfloat16(), k.bfloat16(), queue.bfloat16())
    assert amp.dtype == torch.float32 and amp_bf16_inputs.dtype == torch.float32
    assert abs(amp.item() - plain.item()) < 1e-5


@pytest.mark.parametrize('shapes', [
    ((4, 8), (4, 7), (10, 8)),   # k dim
    ((4, 8), (3, 8), (10, 8)),   # k rows
    ((4, 8), (4, 8), (10, 7)),   # queue dim
    ((8,), (8,), (10, 8)),       # not rows
    ((4, 8), (4, 8), (80,)),     # queue not [K, D]
])
def test_moco_shape_errors(shapes):
    q, k, queue = (torch.randn(*s) for s in shapes)
    with pytest.raises(ValueError):
        MoCoLoss()(q, k, queue)


# ---------------------------------------------------------------- KNNLoss

@pytest.mark.parametrize('topk', [1, 3, 7])
@pytest.mark.parametrize('temperature', [0.1, 0.2])
def test_knn_matches_reference(topk, temperature):
    q, qb = rows(6, 8, 20), rows(6, 12, 21)
    queue, queue_b = rows(25, 8, 22), rows(25, 12, 23)
    loss = KNNLoss(topk, temperature)(q, qb, queue, queue_b)
    assert loss.dim() == 0 and loss.dtype == torch.float64
    assert loss.item() == pytest.approx(reference_knn(q, qb, queue, queue_b, topk, temperature), abs=1e-6)


def test_knn_tiny_by_hand():
    # q = e1, queue = [e1, e2, -e1], T = 1  ->  logits [1, 0, -1], log Z = log(e + 1 + 1/e) = 1.4076059645
    # q_backbone = e2, queue_backbone = [e1, e2, (0.6, 0.8)]  ->  similarities [0, 1, 0.8]: top-2 = {1, 2}
    # loss = -(log_prob[1] + log_prob[2]) / 2 = log Z - (0 + (-1)) / 2 = 1.4076059645 + 0.5 = 1.9076059645
    q = torch.tensor([[1.0, 0.0]], dtype=torch.float64)
    queue = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]], dtype=torch.float64)
    qb = torch.tensor([[0.0, 1.0]], dtype=torch.float64)
    queue_b = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]], dtype=torch.float64)
    assert KNNLoss(2, 1.0)(q, qb, queue, queue_b).item() == pytest.approx(1.9076059645, abs=1e-9)


def test_knn_top1_known_neighbour():
    q, qb = rows(5, 8, 30), rows(5, 16, 31)
    queue, queue_b = rows(40, 8, 32), rows(40, 16, 33)
    target = torch.tensor([3, 17, 0, 39, 22])   # row i's backbone feature is planted at queue index target[i]
    queue_b[target] = qb                        # similarity 1, every other entry < 1
    loss = KNNLoss(1, 0.2)(q, qb, queue, queue_b)
    expected = -torch.log_softmax(q @ queue.T / 0.2, dim=1)[torch.arange(5), target].mean()
    assert torch.allclose(loss, expected, atol=1e-12, rtol=0)


def test_knn_topk_equal_queue_size_takes_every_entry():
    q, qb, queue, queue_b = rows(4, 8, 40), rows(4, 6, 41), rows(9, 8, 42), rows(9, 6, 43)
    expected = -torch.log_softmax(q @ queue.T / 0.2, dim=1).mean()
    assert torch.allclose(KNNLoss(9, 0.2)(q, qb, queue, queue_b), expected, atol=1e-12, rtol=0)


def test_knn_gradient_flows_to_q_only():
    q, qb = rows(4, 8, 50).requires_grad_(), rows(4, 6, 51).requires_grad_()
    queue, queue_b = rows(12, 8, 52).requires_grad_(), rows(12, 6, 53).requires_grad_()
    KNNLoss(3, 0.2)(q, qb, queue, queue_b).backward()
    assert q.grad is not None and q.grad.abs().sum() > 0
    assert qb.grad is None and queue.grad is None and queue_b.grad is None


def test_knn_bf16_autocast_is_float32():
    q, qb = rows(8, 32, 60, torch.float32), rows(8, 48, 61, torch.float32)
    queue, queue_b = rows(64, 32, 62, torch.float32), rows(64, 48, 63, torch.float32)
    crit = KNNLoss(5, 0.2)
    plain = crit(q, qb, queue, queue_b)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        amp = crit(q, qb, queue, queue_b)
        amp_bf16_inputs = crit(q.bfloat16(), qb.bfloat16(), queue.bfloat16(), queue_b.bfloat16())
    assert amp.dtype == torch.float32 and amp_bf16_inputs.dtype == torch.float32
    assert abs(amp.item() - plain.item()) < 1e-5


@pytest.mark.parametrize('shapes', [
    ((4, 8), (4, 6), (10, 7), (10, 6)),   # queue dim != q dim
    ((4, 8), (4, 6), (10, 8), (10, 5)),   # queue_backbone dim != q_backbone dim
    ((4, 8), (3, 6), (10, 8), (10, 6)),   # q_backbone rows != q rows
    ((4, 8), (4, 6), (10, 8), (9, 6)),    # queue_backbone rows != queue rows
    ((8,), (4, 6), (10, 8), (10, 6)),     # q not rows
])
def test_knn_shape_errors(shapes):
    tensors = (torch.randn(*s) for s in shapes)
    with pytest.raises(ValueError):
        KNNLoss(3)(*tensors)


def test_knn_topk_larger_than_queue():
    q, qb, queue, queue_b = rows(2, 4, 70), rows(2, 3, 71), rows(5, 4, 72), rows(5, 3, 73)
    with pytest.raises(ValueError):
        KNNLoss(6)(q, qb, queue, queue_b)
    with pytest.raises(ValueError):
        KNNLoss(0)
