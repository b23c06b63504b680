"""Token-level LM divergences against hand computations, and the top-k cache approximation."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from kdsweep.lm.losses import (
    DIVERGENCES,
    kl_terms,
    next_token_ce,
    teacher_topk,
    token_divergence,
    topk_divergence,
    topk_support,
)

pytestmark = pytest.mark.unit


def _logp(*probs: float) -> torch.Tensor:
    return torch.tensor(probs, dtype=torch.float64).log()


def test_forward_and_reverse_kl_by_hand():
    p, q = _logp(0.5, 0.5), _logp(0.9, 0.1)
    fwd = 0.5 * math.log(0.5 / 0.9) + 0.5 * math.log(0.5 / 0.1)
    rev = 0.9 * math.log(0.9 / 0.5) + 0.1 * math.log(0.1 / 0.5)
    assert float(kl_terms(p, q, "forward_kl")) == pytest.approx(fwd)
    assert float(kl_terms(p, q, "reverse_kl")) == pytest.approx(rev)


def test_jsd_by_hand_and_at_its_limits():
    p, q = _logp(0.5, 0.5), _logp(0.9, 0.1)
    beta = 0.3
    m = [beta * 0.5 + 0.7 * 0.9, beta * 0.5 + 0.7 * 0.1]
    hand = beta * sum(0.5 * math.log(0.5 / mi) for mi in m) + 0.7 * (
        0.9 * math.log(0.9 / m[0]) + 0.1 * math.log(0.1 / m[1])
    )
    assert float(kl_terms(p, q, "jsd", beta)) == pytest.approx(hand)
    fwd, rev = float(kl_terms(p, q, "forward_kl")), float(kl_terms(p, q, "reverse_kl"))
    # the ends are the two KLs exactly (TRL's convention) ...
    assert float(kl_terms(p, q, "jsd", 0.0)) == pytest.approx(fwd)
    assert float(kl_terms(p, q, "jsd", 1.0)) == pytest.approx(rev)
    # ... and the mixture formula approaches them as beta * KL and (1 - beta) * KL
    eps = 1e-5
    assert float(kl_terms(p, q, "jsd", eps)) / eps == pytest.approx(fwd, rel=1e-3)
    assert float(kl_terms(p, q, "jsd", 1 - eps)) / eps == pytest.approx(rev, rel=1e-3)
    # symmetric JSD is bounded by log 2, reached on disjoint supports
    disjoint = float(kl_terms(_logp(1.0, 1e-300), _logp(1e-300, 1.0), "jsd", 0.5))
    assert disjoint == pytest.approx(math.log(2), rel=1e-6)


def test_tvd_bounds_and_kl_of_a_distribution_with_itself():
    torch.manual_seed(0)
    p = F.log_softmax(torch.randn(5, 7, dtype=torch.float64), -1)
    q = F.log_softmax(torch.randn(5, 7, dtype=torch.float64), -1)
    tvd = kl_terms(p, q, "tvd")
    assert bool((tvd >= 0).all()) and bool((tvd <= 1).all())
    assert float(kl_terms(_logp(1.0, 1e-300), _logp(1e-300, 1.0), "tvd")) == pytest.approx(1.0)
    # Pinsker: TVD <= sqrt(KL / 2)
    assert bool((tvd <= (kl_terms(p, q, "forward_kl") / 2).sqrt() + 1e-12).all())
    for div in DIVERGENCES:
        assert float(kl_terms(p, p, div).abs().max()) < 1e-12, div


def test_masked_positions_do_not_count_and_temperature_scales():
    torch.manual_seed(1)
    s, t = torch.randn(2, 3, 11), torch.randn(2, 3, 11)
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]], dtype=torch.bool)
    t2 = t.clone()
    t2[~mask] = 100.0  # garbage at padded positions changes nothing
    for div in DIVERGENCES:
        a = token_divergence(s, t, mask, div, 2.0)
        assert float(a) == pytest.approx(float(token_divergence(s, t2, mask, div, 2.0)))
    per = kl_terms(F.log_softmax(t / 2, -1), F.log_softmax(s / 2, -1), "forward_kl")
    hand = per[mask].mean() * 4
    assert float(token_divergence(s, t, mask, "forward_kl", 2.0)) == pytest.approx(float(hand))
    assert float(token_divergence(s, t, torch.zeros_like(mask), "tvd")) == 0.0


def test_next_token_ce_matches_torch():
    torch.manual_seed(2)
    logits, y = torch.randn(2, 4, 9), torch.randint(0, 9, (2, 4))
    mask = torch.ones(2, 4, dtype=torch.bool)
    assert float(next_token_ce(logits, y, mask)) == pytest.approx(
        float(F.cross_entropy(logits.view(-1, 9), y.view(-1)))
    )


def _peaked(vocab: int = 200, rows: int = 64, scale: float = 4.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(3)
    return torch.randn(rows, vocab, generator=g) * scale


@pytest.mark.parametrize("div", DIVERGENCES)
def test_topk_is_a_lower_bound_with_the_documented_gap(div):
    """Folded divergences never exceed the full ones; the gap is r_p * KL of the tails for
    forward KL, r_q * KL for reverse KL, at most min(r_p, r_q) for TVD."""
    t, s = _peaked(), _peaked() * 0.5 + _peaked(scale=1.0)
    k = 16
    vals, idx, tail = teacher_topk(t, k)
    full = kl_terms(F.log_softmax(t, -1), F.log_softmax(s, -1), div)
    logp, logq = topk_support(s, vals, idx, tail)
    approx = kl_terms(logp, logq, div)
    assert bool((approx <= full + 1e-3).all())
    r_p, r_q = logp[..., -1].exp(), logq[..., -1].exp()
    if div == "tvd":
        assert bool((full - approx <= torch.minimum(r_p, r_q) + 1e-3).all())
    if div in ("forward_kl", "reverse_kl"):  # the exact gap: the tails' own divergence
        keep = torch.ones_like(t, dtype=torch.bool).scatter(-1, idx.long(), False)
        tp = F.log_softmax(t.masked_fill(~keep, -torch.inf), -1)
        tq = F.log_softmax(s.masked_fill(~keep, -torch.inf), -1)
        gap = (
            r_p * kl_terms(tp, tq, "forward_kl")
            if div == "forward_kl"
            else (r_q * kl_terms(tq, tp, "forward_kl"))
        )
        assert torch.allclose(full - approx, gap, atol=2e-3)  # fp16 cached log-probs


def test_topk_exact_when_the_tail_is_empty_and_close_when_small():
    t = _peaked(vocab=12)
    s = _peaked(vocab=12, scale=1.0)
    vals, idx, tail = teacher_topk(t, 12)  # k = V: nothing folded
    assert float(tail.max()) < 1e-6
    for div in DIVERGENCES:
        a = topk_divergence(s, vals, idx, tail, None, div)
        b = token_divergence(s, t, None, div)
        assert float(a) == pytest.approx(float(b), abs=2e-3)
    # a peaked teacher (tail mass < 1%): forward KL within 1% of the mean tail mass
    t = _peaked(scale=12.0)
    vals, idx, tail = teacher_topk(t, 16)
    assert float(tail.mean()) < 0.01
    a = topk_divergence(s := _peaked(scale=2.0), vals, idx, tail, None, "forward_kl")
    b = token_divergence(s, t, None, "forward_kl")
    assert float(b - a) >= -1e-3 and float(b - a) < 0.05 * float(b)


def test_topk_gradients_are_finite_and_match_at_full_support():
    t = _peaked(vocab=10, rows=4)
    s = _peaked(vocab=10, rows=4, scale=1.0).requires_grad_(True)
    vals, idx, tail = teacher_topk(t, 10)
    for div in DIVERGENCES:
        s.grad = None
        topk_divergence(s, vals, idx, tail, None, div, temperature=2.0).backward()
        assert bool(torch.isfinite(s.grad).all()), div


def test_shared_softmax_kd_and_ce_equal_the_separate_ones():
    from kdsweep.lm.losses import topk_kd_and_ce

    t, s = _peaked(rows=6).view(2, 3, -1), _peaked(rows=6, scale=1.0).view(2, 3, -1)
    y = torch.randint(0, t.shape[-1], (2, 3))
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]], dtype=torch.bool)
    vals, idx, tail = teacher_topk(t, 16)
    for temp in (1.0, 2.0):
        kd, ce = topk_kd_and_ce(s, y, vals, idx, tail, mask, "jsd", temp, 0.3)
        ref = topk_divergence(s, vals, idx, tail, mask, "jsd", temp, 0.3)
        assert float(kd) == pytest.approx(float(ref), rel=1e-5)
        assert float(ce) == pytest.approx(float(next_token_ce(s, y, mask)), rel=1e-5)
