"""CTC and CTC-KD losses: masking, scaling, schedules."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from kdsweep.errors import KDSweepError
from kdsweep.speech.losses import (
    ctc_frame_kd_loss,
    ctc_loss,
    masked_hidden_mse,
    scale_milestones,
    temperature_at,
)

pytestmark = pytest.mark.unit

B, T, V = 3, 20, 29
LENS = torch.tensor([20, 14, 9])


def _logits(seed: int) -> torch.Tensor:
    return torch.randn(B, T, V, generator=torch.Generator().manual_seed(seed)) * 2


def _scramble_padding(x: torch.Tensor, lens: torch.Tensor) -> torch.Tensor:
    y = x.clone()
    for b, n in enumerate(lens.tolist()):
        y[b, n:] = torch.randn_like(y[b, n:]) * 10
    return y


def test_ctc_loss_ignores_padding_and_matches_torch_mean() -> None:
    logits = _logits(0)
    targets = torch.tensor([1, 5, 6, 7, 9, 3, 4, 8, 10])
    tgt_lens = torch.tensor([4, 3, 2])
    base = ctc_loss(logits, targets, LENS, tgt_lens)
    assert torch.allclose(base, ctc_loss(_scramble_padding(logits, LENS), targets, LENS, tgt_lens))
    lp = F.log_softmax(logits, -1)
    ref = F.ctc_loss(lp.transpose(0, 1), targets, LENS, tgt_lens, reduction="mean")
    assert torch.allclose(base, ref)
    assert torch.allclose(base, ctc_loss(lp, targets, LENS, tgt_lens))  # log-probs or logits


def test_ctc_loss_infeasible_target_is_zeroed_not_inf() -> None:
    logits = _logits(1)[:1, :3]
    loss = ctc_loss(logits, torch.tensor([1, 2, 3, 4, 5]), torch.tensor([3]), torch.tensor([5]))
    assert torch.isfinite(loss) and float(loss) == 0.0


def test_kd_zero_for_identical_logits_and_positive_otherwise() -> None:
    s = _logits(2)
    assert float(ctc_frame_kd_loss(s, s.clone(), LENS, temperature=3.0)) == pytest.approx(
        0.0, abs=1e-6
    )
    assert float(ctc_frame_kd_loss(s, _logits(3), LENS, temperature=3.0)) > 0


def test_kd_ignores_padded_frames() -> None:
    s, t = _logits(4), _logits(5)
    base = ctc_frame_kd_loss(s, t, LENS, 2.0)
    moved = ctc_frame_kd_loss(_scramble_padding(s, LENS), _scramble_padding(t, LENS), LENS, 2.0)
    assert torch.allclose(base, moved)


def test_kd_temperature_squared_scaling_and_value() -> None:
    s, t = _logits(6), _logits(7)
    for temp in (1.0, 2.0, 4.0):
        ps = F.log_softmax(s / temp, -1)
        pt = F.log_softmax(t / temp, -1)
        kl = F.kl_div(ps, pt, log_target=True, reduction="none").sum(-1)  # [B, T]
        mask = torch.arange(T)[None] < LENS[:, None]
        manual = kl[mask].mean() * temp**2
        assert torch.allclose(ctc_frame_kd_loss(s, t, LENS, temp), manual, atol=1e-5)


def test_kd_teacher_is_detached_and_blank_frames_can_be_skipped() -> None:
    s = _logits(8).requires_grad_()
    t = _logits(9).requires_grad_()
    ctc_frame_kd_loss(s, t, LENS, 2.0).backward()
    assert s.grad is not None and t.grad is None
    # frames where the teacher's argmax is blank: with weight 0 the student there is irrelevant
    t2 = _logits(9)
    t2[:, ::2, 0] += 20.0  # every other frame blank-dominated
    blank_frames = t2.argmax(-1) == 0
    s2 = _logits(8)
    s3 = s2.clone()
    s3[blank_frames] = torch.randn_like(s3[blank_frames]) * 5
    a = ctc_frame_kd_loss(s2, t2, LENS, 2.0, blank_frame_weight=0.0)
    b = ctc_frame_kd_loss(s3, t2, LENS, 2.0, blank_frame_weight=0.0)
    assert torch.allclose(a, b)
    full_a, full_b = (ctc_frame_kd_loss(x, t2, LENS, 2.0) for x in (s2, s3))
    assert not torch.allclose(full_a, full_b)


def test_kd_shape_mismatch_is_a_clear_error() -> None:
    with pytest.raises(KDSweepError, match="teacher_logits"):
        ctc_frame_kd_loss(_logits(0), _logits(0)[:, :10], LENS, 1.0)


def test_masked_hidden_mse() -> None:
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(B, T, 16, generator=g), torch.randn(B, T, 16, generator=g)
    assert float(masked_hidden_mse(s, s.clone(), LENS)) == 0.0
    base = masked_hidden_mse(s, t, LENS)
    assert torch.allclose(base, masked_hidden_mse(_scramble_padding(s, LENS), t, LENS))
    mask = torch.arange(T)[None] < LENS[:, None]
    assert torch.allclose(base, ((s - t) ** 2)[mask].mean())


def test_temperature_schedule_and_scaled_milestones() -> None:
    ms, vals = [30, 70], [4.0, 3.5, 3.0]
    assert [temperature_at(e, ms, vals) for e in (0, 29, 30, 69, 70, 79)] == [
        4.0, 4.0, 3.5, 3.5, 3.0, 3.0
    ]  # fmt: skip
    assert scale_milestones(ms, 80, 80) == [30, 70]
    assert scale_milestones(ms, 80, 20) == [8, 18]
    assert scale_milestones(ms, 80, 10) == [4, 9]
    assert scale_milestones(ms, 80, 1) == [1, 1]
    with pytest.raises(KDSweepError, match="values"):
        temperature_at(0, ms, [4.0, 3.0])
