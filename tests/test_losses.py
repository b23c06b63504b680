"""Distillation losses: pure tensor functions, checked against hand computations."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from kdsweep.losses import (
    attention_kd_loss,
    decoupled_kd_loss,
    hard_kd_loss,
    hidden_cosine_loss,
    hidden_mse_loss,
    soft_kd_loss,
    soft_kd_objective,
    standardize_states,
)

pytestmark = pytest.mark.unit


@pytest.fixture
def logits():
    g = torch.Generator().manual_seed(0)
    student = torch.randn(8, 5, generator=g) * 3
    teacher = torch.randn(8, 5, generator=g) * 3
    labels = torch.randint(0, 5, (8,), generator=g)
    return student, teacher, labels


def _kl_by_hand(student: torch.Tensor, teacher: torch.Tensor, t: float) -> torch.Tensor:
    """KL(p_teacher || p_student) at temperature t, per example, averaged over the batch."""
    p = torch.softmax(teacher.double() / t, dim=-1)
    q = torch.softmax(student.double() / t, dim=-1)
    return (p * (p.log() - q.log())).sum(-1).mean()


def test_identical_logits_give_zero_kl(logits):
    student, _, _ = logits
    for t in (1.0, 2.0, 8.0):
        assert soft_kd_loss(student, student.clone(), t).item() == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("t", [1.0, 2.0, 4.0, 8.0])
def test_soft_kd_is_t_squared_times_kl(logits, t):
    student, teacher, _ = logits
    expected = t**2 * _kl_by_hand(student, teacher, t)
    assert soft_kd_loss(student, teacher, t).double().item() == pytest.approx(
        expected.item(), rel=1e-5
    )


def test_kl_is_nonnegative_and_positive_when_different(logits):
    student, teacher, _ = logits
    g = torch.Generator().manual_seed(1)
    for _ in range(20):
        s, te = torch.randn(4, 7, generator=g) * 5, torch.randn(4, 7, generator=g) * 5
        assert soft_kd_loss(s, te, 2.0).item() >= 0.0
    assert soft_kd_loss(student, teacher, 2.0).item() > 1e-3


def test_soft_kd_gradient_scale_stays_comparable_across_t(logits):
    """The T**2 factor: without it the soft-target gradient shrinks ~1/T**2; with it it does not.

    For large T the gradient of T^2*KL w.r.t. student logits tends to (s - t)/K (centred), so
    its norm converges instead of vanishing.
    """
    student, teacher, _ = logits
    norms = {}
    for t in (1.0, 4.0, 16.0, 64.0):
        s = student.clone().requires_grad_(True)
        soft_kd_loss(s, teacher, t).backward()
        norms[t] = s.grad.norm().item()
    # Unscaled KL's gradient would drop by 64**2 / 16**2 = 16x between T=16 and T=64.
    assert norms[64.0] / norms[16.0] == pytest.approx(1.0, rel=0.1)
    assert norms[64.0] / norms[4.0] == pytest.approx(1.0, rel=0.5)
    # And the large-T limit matches the centred logit difference / (K * batch).
    k, b = student.shape[1], student.shape[0]
    diff = (student - student.mean(-1, keepdim=True)) - (teacher - teacher.mean(-1, keepdim=True))
    assert norms[64.0] == pytest.approx((diff / (k * b)).norm().item(), rel=0.05)


def test_alpha_zero_is_plain_ce_exactly(logits):
    student, teacher, labels = logits
    total, ce, kd = soft_kd_objective(student, teacher, labels, alpha=0.0, temperature=4.0)
    assert torch.equal(total, F.cross_entropy(student, labels))
    assert torch.equal(ce, F.cross_entropy(student, labels))
    assert kd.item() > 0  # still reported, just not weighted in


def test_alpha_one_is_pure_kd_and_mixture_is_linear(logits):
    student, teacher, labels = logits
    total1, ce, kd = soft_kd_objective(student, teacher, labels, alpha=1.0, temperature=2.0)
    assert total1.item() == pytest.approx(kd.item(), rel=1e-6)
    total, ce, kd = soft_kd_objective(student, teacher, labels, alpha=0.3, temperature=2.0)
    assert total.item() == pytest.approx(0.3 * kd.item() + 0.7 * ce.item(), rel=1e-6)


def test_soft_kd_handles_extreme_and_half_precision_logits():
    s = torch.tensor([[1000.0, -1000.0, 0.0]], dtype=torch.float16)
    t = torch.tensor([[-1000.0, 1000.0, 0.0]], dtype=torch.float16)
    loss = soft_kd_loss(s, t, 1.0)
    assert loss.dtype == torch.float32
    assert torch.isfinite(loss)


def test_hard_kd_alpha_one_is_ce_on_teacher_argmax(logits):
    student, teacher, labels = logits
    total, ce, kd = hard_kd_loss(student, teacher, labels, alpha=1.0)
    expected = F.cross_entropy(student, teacher.argmax(-1))
    assert total.item() == pytest.approx(expected.item(), rel=1e-6)
    assert kd.item() == pytest.approx(expected.item(), rel=1e-6)
    assert ce.item() == pytest.approx(F.cross_entropy(student, labels).item(), rel=1e-6)
    # alpha=0: gold labels only.
    total0, _, _ = hard_kd_loss(student, teacher, labels, alpha=0.0)
    assert total0.item() == pytest.approx(ce.item(), rel=1e-6)


def _mask(lengths: list[int], s: int) -> torch.Tensor:
    return (torch.arange(s)[None, :] < torch.tensor(lengths)[:, None]).long()


def test_hidden_mse_ignores_padded_positions():
    g = torch.Generator().manual_seed(2)
    b, s, h = 3, 6, 4
    student, teacher = torch.randn(b, s, h, generator=g), torch.randn(b, s, h, generator=g)
    mask = _mask([6, 3, 1], s)
    base = hidden_mse_loss(student, teacher, mask)
    # By hand: mean over real tokens and hidden units.
    real = mask.bool()
    expected = ((student - teacher) ** 2)[real].mean()
    assert base.item() == pytest.approx(expected.item(), rel=1e-6)
    # Garbage at padded positions changes nothing.
    s2, t2 = student.clone(), teacher.clone()
    s2[~real] = 1e4
    t2[~real] = -1e4
    assert hidden_mse_loss(s2, t2, mask).item() == pytest.approx(base.item(), rel=1e-6)
    # Identical states at real tokens -> zero, whatever the padding holds.
    assert hidden_mse_loss(teacher.clone(), t2, mask).item() == pytest.approx(0.0, abs=1e-6)


def test_hidden_cosine_is_one_minus_cos_over_real_tokens_and_ignores_scale():
    g = torch.Generator().manual_seed(3)
    b, s, h = 3, 5, 4
    student, teacher = torch.randn(b, s, h, generator=g), torch.randn(b, s, h, generator=g)
    mask = _mask([5, 2, 1], s)
    real = mask.bool()
    by_hand = (1 - F.cosine_similarity(student[real], teacher[real], dim=-1)).mean()
    base = hidden_cosine_loss(student, teacher, mask)
    assert base.item() == pytest.approx(by_hand.item(), rel=1e-6)
    assert hidden_cosine_loss(student * 7.5, teacher, mask).item() == pytest.approx(base.item())
    s2 = student.clone()
    s2[~real] = 0.0  # all-zero padding (eps guards the division) and garbage change nothing
    assert hidden_cosine_loss(s2, teacher, mask).item() == pytest.approx(base.item(), rel=1e-6)
    assert hidden_cosine_loss(teacher, teacher, mask).item() == pytest.approx(0.0, abs=1e-6)
    assert hidden_cosine_loss(-teacher, teacher, mask).item() == pytest.approx(2.0, abs=1e-6)


def _attention_maps(b: int, s: int, mask: torch.Tensor, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    scores = torch.randn(b, s, s, generator=g)
    scores = scores.masked_fill(mask[:, None, :] == 0, float("-inf"))  # no attention to padding
    return torch.softmax(scores, dim=-1)


def test_attention_kd_zero_for_identical_maps():
    mask = _mask([5, 2], 5)
    a = _attention_maps(2, 5, mask, 0)
    assert attention_kd_loss(a, a.clone(), mask).item() == pytest.approx(0.0, abs=1e-6)


def test_attention_kd_positive_and_ignores_padded_query_rows():
    b, s = 2, 5
    mask = _mask([5, 2], s)
    teacher, student = _attention_maps(b, s, mask, 0), _attention_maps(b, s, mask, 1)
    base = attention_kd_loss(student, teacher, mask)
    assert base.item() > 0
    # By hand: KL per real query row, averaged over real query rows.
    t, st = teacher.clamp_min(1e-8), student.clamp_min(1e-8)
    rows = (t * (t.log() - st.log())).sum(-1)
    assert base.item() == pytest.approx(rows[mask.bool()].mean().item(), rel=1e-5)
    # Rewriting the rows of padded queries (any distribution) leaves the loss unchanged.
    s2, t2 = student.clone(), teacher.clone()
    pad_rows = ~mask.bool()
    s2[pad_rows] = torch.tensor([1.0, 0, 0, 0, 0])
    t2[pad_rows] = torch.tensor([0, 0, 0, 0, 1.0])
    assert attention_kd_loss(s2, t2, mask).item() == pytest.approx(base.item(), rel=1e-6)


# ---------------------------------------------------------------- decoupled KD
def test_decoupled_kd_by_hand():
    """Student uniform over 3 classes, teacher [4, 3, 1] / 8, target 0:
    TCKD = KL([1/2, 1/2] || [1/3, 2/3]) = 1/2 ln(9/8);
    NCKD = KL([3/4, 1/4] || [1/2, 1/2]) = 3/4 ln(3/2) - 1/4 ln 2; both times T^2."""
    import math

    student = torch.zeros(1, 3)
    teacher = torch.tensor([[math.log(4), math.log(3), 0.0]])
    tckd, nckd = decoupled_kd_loss(student, teacher, torch.tensor([0]), temperature=1.0)
    assert tckd.item() == pytest.approx(0.5 * math.log(9 / 8), rel=1e-6)
    assert nckd.item() == pytest.approx(0.75 * math.log(1.5) - 0.25 * math.log(2), rel=1e-6)
    # T = 2 on logits twice as large: the same distributions, so both terms times T^2 = 4.
    t2, n2 = decoupled_kd_loss(student * 2, teacher * 2, torch.tensor([0]), temperature=2.0)
    assert (t2.item(), n2.item()) == pytest.approx((4 * tckd.item(), 4 * nckd.item()), rel=1e-5)


def test_decoupled_kd_recomposes_classic_kd(logits):
    """The paper's identity, per example: KD = TCKD + (1 - p_target_teacher) * NCKD."""
    student, teacher, labels = logits
    for i in range(len(labels)):
        s, t, y = student[i : i + 1], teacher[i : i + 1], labels[i : i + 1]
        tckd, nckd = decoupled_kd_loss(s, t, y, temperature=3.0)
        p_target = torch.softmax(t / 3.0, dim=-1)[0, y].item()
        kd = soft_kd_loss(s, t, temperature=3.0)
        assert kd.item() == pytest.approx(tckd.item() + (1 - p_target) * nckd.item(), rel=1e-4)
    same_t, same_n = decoupled_kd_loss(teacher, teacher, labels, temperature=3.0)
    assert same_t.item() == pytest.approx(0, abs=1e-6) and same_n.item() == pytest.approx(
        0, abs=1e-6
    )
    extreme = decoupled_kd_loss(student * 1e3, teacher.half() * 100, labels, temperature=1.0)
    assert all(torch.isfinite(x) for x in extreme)


def _anisotropic_teacher(g: torch.Generator, b: int = 4, s: int = 8, h: int = 16):
    """Teacher states like a BERT layer's: a large shared component plus an input-dependent
    part (what the student should learn)."""
    common = 3.0 * torch.randn(h, generator=g)
    return common + torch.randn(b, s, h, generator=g), common


def test_standardize_states_centres_on_the_given_mean_and_normalises_each_token():
    g = torch.Generator().manual_seed(5)
    t, common = _anisotropic_teacher(g)
    z = standardize_states(t * 4.0 + 1.0)
    assert z.mean(-1).abs().max() < 1e-5 and (z.var(-1, unbiased=False) - 1).abs().max() < 1e-3
    # scale and shift per token do not matter
    assert torch.allclose(z, standardize_states(t), atol=1e-4)
    centred = standardize_states(t, common)
    assert torch.allclose(centred, standardize_states(t - common), atol=1e-6)


def test_standardised_hidden_mse_gives_a_collapsed_student_no_reward():
    """Raw MSE rewards a student whose states ignore the input (it predicts the teacher's mean
    state: the collapse that kept CE at ln K); standardised and centred, that student scores
    like a random one (~2 per unit), and only input-dependent agreement lowers the loss."""
    g = torch.Generator().manual_seed(6)
    t, common = _anisotropic_teacher(g, b=16, s=16, h=32)
    mask = torch.ones(16, 16, dtype=torch.long)
    mean = t.mean(dim=(0, 1))
    constant = mean.expand_as(t).clone()  # collapsed: the same state for every token
    rand = torch.randn(t.shape, generator=g)
    raw = {k: hidden_mse_loss(v, t, mask).item() for k, v in (("c", constant), ("r", rand))}
    assert raw["c"] < 0.15 * raw["r"]  # today's loss: collapse is by far the best move
    std_t = standardize_states(t, mean)
    fixed = {
        k: hidden_mse_loss(standardize_states(v + 1e-3 * torch.randn(t.shape, generator=g)),
                           std_t, mask).item()
        for k, v in (("c", constant), ("r", rand))
    }  # fmt: skip
    assert fixed["c"] > 1.6 and fixed["r"] > 1.6  # both ~2: no information, no reward
    aligned = standardize_states(t - mean + 0.3 * torch.randn(t.shape, generator=g))
    assert hidden_mse_loss(aligned, std_t, mask).item() < 0.2
    # the teacher's own centred states against themselves: 0
    assert hidden_mse_loss(std_t, std_t, mask).item() == pytest.approx(0.0, abs=1e-6)


def test_centred_cosine_gives_a_collapsed_student_no_reward():
    g = torch.Generator().manual_seed(7)
    t, _ = _anisotropic_teacher(g, b=16, s=16, h=32)
    mask = torch.ones(16, 16, dtype=torch.long)
    mean = t.mean(dim=(0, 1))
    constant = mean.expand_as(t).clone()
    assert hidden_cosine_loss(constant, t, mask).item() < 0.2  # raw: the mean direction wins
    assert hidden_cosine_loss(constant, t - mean, mask).item() > 0.8  # centred: ~1, no reward
    assert hidden_cosine_loss(t - mean, t - mean, mask).item() == pytest.approx(0.0, abs=1e-5)


def test_mean_hidden_state_over_real_tokens_in_chunks():
    from kdsweep.text.feature_rows import mean_hidden_state

    g = torch.Generator().manual_seed(8)
    feats = torch.randn(5, 2, 6, 3, generator=g)
    mask = _mask([6, 3, 1, 4, 2], 6)
    feats.permute(0, 2, 1, 3)[~mask.bool()] = 1e3  # padding never counts (float16 holds 1e3)
    got = mean_hidden_state(feats.numpy().astype("float16"), mask, chunk=2)
    real = feats.half().float().permute(0, 2, 1, 3)[mask.bool()]  # [tokens, L, H]
    assert got.shape == (2, 3) and torch.allclose(got, real.mean(0), atol=1e-4)


def test_content_attention_drops_cls_and_sep_keys_and_renormalises():
    from kdsweep.losses import content_attention

    g = torch.Generator().manual_seed(9)
    mask = _mask([5, 3, 2], 6)
    attn = torch.softmax(torch.randn(3, 6, 6, generator=g), -1) * mask[:, None, :]
    attn = attn / attn.sum(-1, keepdim=True)
    out = content_attention(attn, mask)
    # row 0: keys 0 ([CLS]) and 4 (its [SEP]) gone, keys 1-3 renormalised; padding stays 0
    assert torch.all(out[0, :, [0, 4, 5]] == 0)
    assert torch.allclose(out[0].sum(-1), torch.ones(6))
    ref = attn[0, :, 1:4] / attn[0, :, 1:4].sum(-1, keepdim=True)
    assert torch.allclose(out[0, :, 1:4], ref, atol=1e-6)
    assert torch.all(out[1, :, [0, 2]] == 0) and torch.allclose(out[1, :, 1], torch.ones(6))
    assert torch.all(out[2] == 0)  # [CLS] [SEP] only: no content key
    # a teacher that puts its mass on [CLS]/[SEP] whatever the text: with content keys only,
    # a student attending uniformly to the content is already matched
    sink = torch.zeros(1, 5, 5)
    sink[0, :, 0], sink[0, :, 4], sink[0, :, 1:4] = 0.45, 0.45, 0.1 / 3
    uniform = torch.full((1, 5, 5), 0.2)
    m = torch.ones(1, 5, dtype=torch.long)
    assert attention_kd_loss(uniform, sink, m).item() > 0.5
    got = attention_kd_loss(content_attention(uniform, m), content_attention(sink, m), m)
    assert got.item() == pytest.approx(0.0, abs=1e-6)
