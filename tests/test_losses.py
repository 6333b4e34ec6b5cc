"""SupConLoss checked against a plain-Python reference (loops over anchors, float64 scalars)."""
import math

import pytest
import torch
import torch.nn.functional as F

from losses import SupConLoss


def reference_supcon(features, pos_weight, contrast_mode='all', temperature=0.07, base_temperature=0.07):
    """Textbook SupCon: pos_weight[i][j] weighs sample j as a positive of an anchor from sample i."""
    bsz, n_views = features.shape[:2]
    vecs = features.reshape(bsz, n_views, -1).double().tolist()
    # contrast set in view-major order: (view, sample)
    contrast = [(v, i) for v in range(n_views) for i in range(bsz)]
    anchors = contrast if contrast_mode == 'all' else contrast[:bsz]
    total = 0.0
    for a, (va, ia) in enumerate(anchors):
        x = vecs[ia][va]
        logit = {c: sum(p * q for p, q in zip(x, vecs[ic][vc])) / temperature
                 for c, (vc, ic) in enumerate(contrast) if c != a}
        log_denom = math.log(sum(math.exp(s) for s in logit.values()))
        weights = {c: float(pos_weight[ia][contrast[c][1]]) for c in logit}
        w_sum = sum(weights.values())
        if w_sum > 0:
            mean_pos = sum(w * (logit[c] - log_denom) for c, w in weights.items()) / w_sum
            total += -(temperature / base_temperature) * mean_pos
        # an anchor with no positives adds 0 but still counts in the mean
    return total / len(anchors)


def label_mask(labels):
    return [[float(a == b) for b in labels] for a in labels]


def identity_mask(bsz):
    return [[float(i == j) for j in range(bsz)] for i in range(bsz)]


def random_features(bsz, n_views, dim, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(bsz, n_views, dim, generator=g, dtype=dtype), dim=-1)


@pytest.mark.parametrize('n_views', [2, 3])
@pytest.mark.parametrize('mode', ['all', 'one'])
def test_simclr_matches_reference(n_views, mode):
    f = random_features(6, n_views, 8, seed=n_views)
    loss = SupConLoss(temperature=0.1, contrast_mode=mode)(f)
    ref = reference_supcon(f, identity_mask(6), mode, temperature=0.1)
    assert loss.dim() == 0 and loss.dtype == torch.float64
    assert loss.item() == pytest.approx(ref, abs=1e-6)


@pytest.mark.parametrize('n_views', [2, 3])
@pytest.mark.parametrize('mode', ['all', 'one'])
def test_supcon_labels_match_reference(n_views, mode):
    f = random_features(8, n_views, 5, seed=10 + n_views)
    labels = torch.tensor([0, 1, 0, 2, 1, 1, 3, 0])
    loss = SupConLoss(temperature=0.2, contrast_mode=mode)(f, labels=labels)
    ref = reference_supcon(f, label_mask(labels.tolist()), mode, temperature=0.2)
    assert loss.item() == pytest.approx(ref, abs=1e-6)


def test_explicit_mask_equals_labels():
    f = random_features(8, 2, 6, seed=3)
    labels = torch.tensor([0, 1, 0, 2, 1, 1, 3, 0])
    mask = labels[:, None] == labels[None, :]
    crit = SupConLoss(temperature=0.1)
    from_labels = crit(f, labels=labels)
    assert crit(f, mask=mask).item() == from_labels.item()          # bool mask
    assert crit(f, mask=mask.double()).item() == from_labels.item()  # float mask


def test_asymmetric_weighted_mask_matches_reference():
    f = random_features(5, 2, 4, seed=4)
    g = torch.Generator().manual_seed(5)
    mask = torch.rand(5, 5, generator=g, dtype=torch.float64) * (torch.rand(5, 5, generator=g) > 0.5)
    assert not torch.equal(mask, mask.T)
    loss = SupConLoss(temperature=0.1)(f, mask=mask)
    assert loss.item() == pytest.approx(reference_supcon(f, mask.tolist(), temperature=0.1), abs=1e-6)


def test_no_positives_gives_exact_zero():
    f = random_features(5, 1, 4, seed=6)
    crit = SupConLoss()
    for loss in (crit(f, labels=torch.arange(5)), crit(f)):  # one view, unique labels / SimCLR
        assert torch.isfinite(loss) and loss.item() == 0.0
    lone = crit(random_features(1, 1, 4), labels=torch.tensor([0]))  # nothing to contrast with at all
    assert torch.isfinite(lone) and lone.item() == 0.0


def test_some_anchors_without_positives():
    f = random_features(6, 1, 4, seed=7).requires_grad_()
    labels = [0, 0, 1, 2, 1, 3]  # samples 3 and 5 have no positive
    loss = SupConLoss(temperature=0.1)(f, labels=torch.tensor(labels))
    ref = reference_supcon(f.detach(), label_mask(labels), temperature=0.1)
    assert loss.item() == pytest.approx(ref, abs=1e-6)
    loss.backward()
    assert torch.isfinite(f.grad).all()


def test_base_temperature_scales_loss():
    f = random_features(6, 2, 8, seed=8)
    labels = torch.tensor([0, 1, 2, 0, 1, 2])
    same = SupConLoss(temperature=0.1, base_temperature=0.1)(f, labels=labels)
    scaled = SupConLoss(temperature=0.1, base_temperature=0.07)(f, labels=labels)
    assert scaled.item() == pytest.approx(same.item() * 0.1 / 0.07, abs=1e-6)
    ref = reference_supcon(f, label_mask(labels.tolist()), temperature=0.1, base_temperature=0.07)
    assert scaled.item() == pytest.approx(ref, abs=1e-6)


def test_extra_feature_dims_are_flattened():
    f = random_features(4, 2, 6, seed=9)
    crit = SupConLoss()
    assert crit(f.reshape(4, 2, 2, 3)).item() == crit(f).item()


def test_hand_computed_case():
    # sample 0 = (e1, e1), sample 1 = (e2, e2); T = base_T = 1. Every anchor sees, besides itself,
    # its own other view (logit 1) and the two views of the other sample (logit 0): denominator e + 2.
    f = torch.tensor([[[1., 0.], [1., 0.]], [[0., 1.], [0., 1.]]])
    crit = SupConLoss(temperature=1.0, base_temperature=1.0)
    # SimCLR: one positive, logit 1  ->  loss = log(e + 2) - 1 = 0.5514447...
    assert crit(f).item() == pytest.approx(math.log(math.e + 2) - 1, abs=1e-6)
    assert crit(f).item() == pytest.approx(0.5514447139320511, abs=1e-6)
    # same label: positives have logits 1, 0, 0 -> mean 1/3  ->  loss = log(e + 2) - 1/3 = 1.2181114...
    assert crit(f, labels=torch.tensor([7, 7])).item() == pytest.approx(1.2181113805987177, abs=1e-6)


def test_aligned_views_beat_shuffled_views():
    eye = torch.eye(4)
    aligned = torch.stack([eye, eye], dim=1)              # both views of sample i = e_i
    shuffled = torch.stack([eye, eye.roll(1, 0)], dim=1)  # view 1 of sample i = e_{i-1}
    crit = SupConLoss(temperature=0.1)
    assert crit(aligned).item() < crit(shuffled).item()


def test_gradcheck():
    f = random_features(3, 2, 3, seed=11).requires_grad_()
    labels = torch.tensor([0, 1, 0])
    crit = SupConLoss(temperature=0.5)
    assert torch.autograd.gradcheck(lambda x: crit(x, labels=labels), (f,))
    crit(f, labels=labels).backward()
    assert torch.isfinite(f.grad).all() and f.grad.abs().sum() > 0


def test_bf16_input_computes_in_float32():
    f = random_features(8, 2, 16, seed=12, dtype=torch.float32)
    labels = torch.tensor([0, 1, 2, 3, 0, 1, 2, 3])
    crit = SupConLoss(temperature=0.1)
    low = crit(f.bfloat16(), labels=labels)
    assert low.dtype == torch.float32
    assert low.item() == crit(f.bfloat16().float(), labels=labels).item()  # cast first, then exact float32 maths
    assert low.item() == pytest.approx(crit(f, labels=labels).item(), rel=2e-2)


def test_autocast_keeps_float32():
    f = random_features(8, 2, 16, seed=13, dtype=torch.float32)
    crit = SupConLoss(temperature=0.1)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        amp = crit(f)
    assert amp.dtype == torch.float32 and amp.item() == pytest.approx(crit(f).item(), abs=1e-6)


def test_bad_input_raises():
    f = random_features(4, 2, 3)
    labels = torch.tensor([0, 1, 0, 1])
    with pytest.raises(ValueError):
        SupConLoss()(f, labels=labels, mask=torch.eye(4))
    with pytest.raises(ValueError):
        SupConLoss()(f[:, 0])
    with pytest.raises(ValueError):
        SupConLoss()(f, labels=torch.tensor([0, 1]))
    with pytest.raises(ValueError):
        SupConLoss(contrast_mode='two')
