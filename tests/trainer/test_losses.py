"""The contrastive losses, heads and momentum pieces against closed forms and brute-force references (one rank;
tests/trainer/test_contrastive_dist.py checks them across ranks)."""

import math

import pytest
import torch
import torch.nn.functional as F

from medscale.trainer.heads import MlpHead, Prototypes
from medscale.trainer.losses import (
    KeyInfoNCELoss,
    NormalizedMSELoss,
    NTXentLoss,
    QueueInfoNCELoss,
    SwavLoss,
    sinkhorn,
)
from medscale.trainer.momentum import cosine_momentum, ema_update, frozen_copy


def ntxent_reference(z_a, z_b, t):
    """NT-Xent by its definition, one anchor at a time."""
    z = F.normalize(torch.cat([z_a, z_b]), dim=1)
    n, total = z_a.shape[0], 0.0
    for i in range(2 * n):
        partner = (i + n) % (2 * n)
        others = sum(math.exp(float(z[i] @ z[j]) / t) for j in range(2 * n) if j != i)
        total += -math.log(math.exp(float(z[i] @ z[partner]) / t) / others)
    return total / (2 * n)


def test_ntxent_closed_form_on_hand_made_vectors():
    # two samples whose views agree exactly, orthogonal to each other: every anchor sees its partner at cosine 1
    # and two others at cosine 0, so the loss is log(1 + 2 exp(-1/t))
    z = torch.tensor([[1.0, 0.0], [0.0, 3.0]], dtype=torch.float64)
    for t in (0.1, 0.5, 1.0):
        assert float(NTXentLoss(t)(z, z.clone())) == pytest.approx(math.log(1 + 2 * math.exp(-1 / t)), rel=1e-6)


def test_ntxent_matches_the_brute_force_definition():
    torch.manual_seed(0)
    z_a, z_b = torch.randn(5, 7), torch.randn(5, 7)
    assert float(NTXentLoss(0.3)(z_a, z_b)) == pytest.approx(ntxent_reference(z_a, z_b, 0.3), rel=1e-5)


def test_queue_infonce_closed_form():
    q = k = torch.tensor([[2.0, 0.0]])
    queue = torch.tensor([[0.0, 1.0], [-1.0, 0.0]])  # logits 1, 0, -1 (over t)
    t = 0.5
    expected = -math.log(math.exp(1 / t) / (math.exp(1 / t) + 1 + math.exp(-1 / t)))
    assert float(QueueInfoNCELoss(t)(q, k, queue)) == pytest.approx(expected, rel=1e-6)


def test_key_infonce_is_cross_entropy_over_the_keys_times_two_t():
    torch.manual_seed(1)
    q, k, t = torch.randn(4, 6), torch.randn(4, 6), 0.2
    logits = F.normalize(q, dim=1) @ F.normalize(k, dim=1).T / t
    expected = sum(-torch.log_softmax(logits[i], 0)[i] for i in range(4)) / 4 * 2 * t
    assert float(KeyInfoNCELoss(t)(q, k)) == pytest.approx(float(expected), rel=1e-6)


def test_normalized_mse_closed_forms():
    loss = NormalizedMSELoss()
    p = torch.tensor([[3.0, 0.0]])
    assert float(loss(p, torch.tensor([[5.0, 0.0]]))) == pytest.approx(0.0, abs=1e-7)
    assert float(loss(p, torch.tensor([[0.0, 2.0]]))) == pytest.approx(2.0)
    assert float(loss(p, torch.tensor([[-1.0, 0.0]]))) == pytest.approx(4.0)
    torch.manual_seed(2)
    a, b = torch.randn(6, 5), torch.randn(6, 5)  # 2 - 2 cos is the squared distance of the unit vectors
    assert float(loss(a, b)) == pytest.approx(float(((F.normalize(a) - F.normalize(b)) ** 2).sum(1).mean()), rel=1e-5)


def test_sinkhorn_rows_sum_to_one_and_prototypes_share_the_batch():
    torch.manual_seed(3)
    scores = F.normalize(torch.randn(64, 8), dim=1) @ F.normalize(torch.randn(10, 8), dim=1).T  # [B, K] cosines
    for iterations in (3, 200):
        codes = sinkhorn(scores, eps=0.05, iterations=iterations)
        assert codes.shape == (64, 10) and (codes >= 0).all()
        torch.testing.assert_close(codes.sum(1), torch.ones(64))  # each sample's code is a distribution
    # with enough iterations each prototype gets B / K of the batch (3 iterations only approach it)
    torch.testing.assert_close(codes.sum(0), torch.full((10,), 6.4), rtol=1e-3, atol=1e-3)
    few = sinkhorn(scores, eps=0.05, iterations=3).sum(0)
    plain = torch.softmax(scores / 0.05, dim=1).sum(0)  # no balancing at all
    assert (few - 6.4).abs().max() < (plain - 6.4).abs().max()


def test_swav_loss_is_the_swapped_cross_entropy():
    torch.manual_seed(4)
    scores = [torch.randn(6, 5).tanh() for _ in range(3)]  # two large views and one small one
    t = 0.1
    codes = [sinkhorn(scores[v], 0.05, 3) for v in (0, 1)]

    def ce(q, s):
        return float(-(q * torch.log_softmax(s / t, dim=1)).sum(1).mean())

    expected = ((ce(codes[0], scores[1]) + ce(codes[0], scores[2])) / 2 +
                (ce(codes[1], scores[0]) + ce(codes[1], scores[2])) / 2) / 2
    assert float(SwavLoss(t, 0.05, 3)(scores, (0, 1))) == pytest.approx(expected, rel=1e-5)


def test_swav_queue_only_changes_the_codes():
    torch.manual_seed(5)
    scores = [torch.randn(6, 5).tanh() for _ in range(2)]
    queued = [torch.randn(20, 5).tanh(), torch.randn(20, 5).tanh()]
    codes = sinkhorn(torch.cat([queued[0], scores[0]]), 0.05, 3)[-6:]
    with_queue = SwavLoss(0.1)(scores, (0,), queued[:1])
    assert float(with_queue) == pytest.approx(float(-(codes * torch.log_softmax(scores[1] / 0.1, 1)).sum(1).mean()),
                                              rel=1e-5)


def test_cosine_momentum_schedule():
    assert cosine_momentum(0, 100, 0.996) == pytest.approx(0.996)
    assert cosine_momentum(50, 100, 0.996) == pytest.approx(0.998)
    assert cosine_momentum(100, 100, 0.996) == pytest.approx(1.0)
    assert cosine_momentum(500, 100, 0.996) == pytest.approx(1.0)


def test_ema_update_closed_form_and_frozen_copy():
    online = torch.nn.Linear(3, 2)
    target = frozen_copy(online)
    assert not any(p.requires_grad for p in target.parameters())
    before = target.weight.detach().clone()
    with torch.no_grad():
        online.weight.add_(1.0)
    ema_update(target, online, 0.9)
    torch.testing.assert_close(target.weight, 0.9 * before + 0.1 * online.weight.detach())


def test_mlp_head_layout():
    head = MlpHead(16, 32, 8, layers=3, batch_norm=True)
    linears = [m for m in head.modules() if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features, m.bias is not None) for m in linears] == \
        [(16, 32, False), (32, 32, False), (32, 8, True)]
    assert sum(isinstance(m, torch.nn.BatchNorm1d) for m in head.modules()) == 2
    assert head(torch.randn(4, 16)).shape == (4, 8)
    plain = MlpHead(16, 32, 8, layers=1, batch_norm=True)
    assert [type(m) for m in plain.net] == [torch.nn.Linear]


def test_prototypes_are_unit_vectors_and_can_be_frozen():
    protos = Prototypes(8, 5)
    with torch.no_grad():
        protos.layer.weight.mul_(3.0)
    protos.normalize_()
    torch.testing.assert_close(protos.layer.weight.norm(dim=1), torch.ones(5))
    z = F.normalize(torch.randn(4, 8), dim=1).requires_grad_()
    protos(z, frozen=True).sum().backward()
    assert protos.layer.weight.grad is None
    protos(z).sum().backward()
    assert protos.layer.weight.grad is not None
