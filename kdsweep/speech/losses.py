"""CTC and CTC-distillation losses: pure tensor functions (no ray, no mlflow).

Shapes are batch-first throughout: logits / log-probs [B, T, V], hidden states [B, T, D],
lengths [B] (valid frames per utterance). Padded frames never influence any loss.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from kdsweep.errors import KDSweepError


def frame_mask(lengths: Tensor, max_len: int) -> Tensor:
    """Boolean mask [B, max_len], True on valid frames (t < lengths[b])."""
    return torch.arange(max_len, device=lengths.device)[None, :] < lengths[:, None]


def ctc_loss(
    log_probs: Tensor,
    targets: Tensor,
    in_lens: Tensor,
    tgt_lens: Tensor,
    blank: int = 0,
    labeled: Tensor | None = None,
    label_smoothing: float = 0.0,
) -> Tensor:
    """CTC loss, batch-first ``log_probs`` [B, T, V] (raw logits are accepted too).

    ``label_smoothing`` eps: CTC has no built-in label smoothing (no per-frame target exists),
    so this is the standard mix ``(1 - eps) * CTC + eps * KL(uniform || p_t)`` with the KL
    averaged over each utterance's unpadded frames (``in_lens``) and then over the batch:
    ``KL(u || p_t) = -log V - mean_v log p_t(v)``, which pulls every frame's posteriors toward
    uniform (a confidence penalty; 0 exactly when p_t is uniform). eps = 0 is plain CTC.

    ``labeled`` (bool [B], optional) restricts the loss to labeled utterances: unlabeled
    (transfer-set) rows are dropped before CTC runs, so their targets are never read and they get
    no gradient from this term. The mean is over the labeled rows (like the text task's masked
    CE); a batch without any labeled row gives exactly 0 (with a graph), not 0/0.

    Reduction: each utterance's negative log-likelihood is divided by its target length, then
    averaged over the batch (the same as torch's ``reduction="mean"``, written out so that empty
    targets divide by 1, not 0). Per-character normalization keeps the loss scale independent of
    sentence length, so one learning rate / KD weight suits short and long corpora alike.
    ``zero_infinity=True`` zeroes utterances whose targets cannot be aligned (more labels than
    frames after subsampling) instead of letting one bad utterance turn the batch into inf/NaN.
    Computed in float32 (CTC's log-sum-exp recursions are unstable in half precision).
    """
    if labeled is not None:
        keep = labeled.to(device=log_probs.device, dtype=torch.bool)
        if not bool(keep.any()):
            return log_probs.float().sum() * 0.0
        if not bool(keep.all()):
            targets = select_targets(targets, tgt_lens, keep)
            log_probs, in_lens, tgt_lens = log_probs[keep], in_lens[keep], tgt_lens[keep]
    # log_softmax is idempotent, so this is a no-op for log-probs and normalizes raw logits.
    lp = F.log_softmax(log_probs.float(), dim=-1).transpose(0, 1)  # [T, B, V] for torch
    per_utt = F.ctc_loss(
        lp, targets, in_lens, tgt_lens, blank=blank, reduction="none", zero_infinity=True
    )
    ctc = (per_utt / tgt_lens.clamp_min(1).to(per_utt.dtype)).mean()
    if label_smoothing <= 0:
        return ctc
    return (1 - label_smoothing) * ctc + label_smoothing * uniform_kl(lp.transpose(0, 1), in_lens)


def uniform_kl(log_probs: Tensor, lengths: Tensor) -> Tensor:
    """KL(uniform || p_t) of batch-first log-probs [B, T, V], mean over each utterance's valid
    frames, then over the batch (CTC label smoothing's regulariser)."""
    v = log_probs.shape[-1]
    per_frame = -math.log(v) - log_probs.mean(-1)  # [B, T]
    mask = frame_mask(lengths.to(log_probs.device), log_probs.shape[1]).to(per_frame.dtype)
    per_utt = (per_frame * mask).sum(1) / mask.sum(1).clamp_min(1)
    return per_utt.mean()


def select_targets(targets: Tensor, tgt_lens: Tensor, keep: Tensor) -> Tensor:
    """The targets of the rows `keep` (bool [B]), padded [B, L] or concatenated 1-D."""
    if targets.dim() == 2:
        return targets[keep.to(targets.device)]
    ends = torch.cumsum(tgt_lens.cpu(), 0).tolist()
    spans = zip([0, *ends[:-1]], ends, keep.cpu().tolist())
    return torch.cat([targets[a:b] for a, b, k in spans if k])


def ctc_frame_kd_loss(
    student_logits: Tensor,
    teacher_logits: Tensor,
    lengths: Tensor,
    temperature: float = 1.0,
    blank_frame_weight: float = 1.0,
    blank: int = 0,
) -> Tensor:
    """Frame-level KD: KL(teacher_T || student_T) * T**2, averaged over valid frames.

    Both [B, T, V] logits are softened by ``temperature``; the teacher is detached. The blank
    symbol is part of both distributions (full-distribution frame KD: the teacher's blank/label
    timing is part of what the student should copy). CTC outputs are blank-dominated (often
    70-90% of frames), which can drown out the informative label frames, so frames whose
    teacher argmax is blank get weight ``blank_frame_weight`` (1.0 = plain average, the default;
    0.0 = skip blank-dominated frames; the argmax does not depend on the temperature). The
    average is weighted: sum(w_t * KL_t) / sum(w_t) over valid frames. The T**2 factor keeps
    gradient magnitudes comparable across temperatures (Hinton et al., 2015).
    """
    if student_logits.shape != teacher_logits.shape:
        raise KDSweepError(
            f"teacher_logits: shape {tuple(teacher_logits.shape)} does not match student "
            f"{tuple(student_logits.shape)} (same frame stacking and vocabulary needed)"
        )
    if temperature <= 0:
        raise KDSweepError(f"temperature: must be > 0, got {temperature}")
    t = float(temperature)
    s_logp = F.log_softmax(student_logits.float() / t, dim=-1)
    t_logits = teacher_logits.detach().float()
    t_logp = F.log_softmax(t_logits / t, dim=-1)
    # sum_v p_t (log p_t - log p_s); xlogy-style via exp(logp) keeps p_t = 0 terms at exactly 0
    kl = (t_logp.exp() * (t_logp - s_logp)).sum(-1)  # [B, T]
    weights = frame_mask(lengths.to(kl.device), kl.shape[1]).to(kl.dtype)
    if blank_frame_weight != 1.0:
        is_blank = t_logits.argmax(-1) == blank
        weights = weights * torch.where(is_blank, blank_frame_weight, 1.0).to(kl.dtype)
    # clamp: all-blank batches with weight 0 give 0 loss instead of 0/0
    return (kl * weights).sum() / weights.sum().clamp_min(1e-8) * t**2


def masked_hidden_mse(student_h: Tensor, teacher_h: Tensor, lengths: Tensor) -> Tensor:
    """MSE between [B, T, D] hidden states over valid frames (mean over frames and D).

    ``student_h`` must already be projected to the teacher's width; the teacher is detached.
    """
    if student_h.shape != teacher_h.shape:
        raise KDSweepError(
            f"teacher_h: shape {tuple(teacher_h.shape)} does not match student "
            f"{tuple(student_h.shape)} (project the student to the teacher width first)"
        )
    mask = frame_mask(lengths.to(student_h.device), student_h.shape[1]).to(student_h.dtype)
    sq = (student_h - teacher_h.detach()).pow(2).mean(-1)  # [B, T]
    return (sq * mask).sum() / mask.sum().clamp_min(1.0)


def temperature_at(epoch: int, milestones: Sequence[int], values: Sequence[float]) -> float:
    """Piecewise-constant schedule: ``values[i]`` for milestones[i-1] <= epoch < milestones[i].

    Like torch's MultiStepLR, the value switches *at* the milestone epoch (0-based epochs):
    milestones [30, 70], values [4.0, 3.5, 3.0] -> epochs 0-29: 4.0, 30-69: 3.5, 70+: 3.0.
    """
    if len(values) != len(milestones) + 1:
        raise KDSweepError(
            f"values: need len(milestones) + 1 = {len(milestones) + 1} values, got {len(values)}"
        )
    if any(b < a for a, b in zip(milestones, milestones[1:])):
        raise KDSweepError(f"milestones: must be non-decreasing, got {list(milestones)}")
    return float(values[bisect.bisect_right(list(milestones), epoch)])


def scale_milestones(
    milestones: Sequence[int], reference_epochs: int, max_epochs: int
) -> list[int]:
    """Rescale milestones from a ``reference_epochs`` schedule to ``max_epochs``.

    Rounded half-up and clamped to [1, max_epochs], so e.g. [30, 70] of 80 -> [8, 18] of 20 and
    [4, 9] of 10. Very short runs may merge milestones (the middle value is then skipped);
    a milestone equal to max_epochs is never reached.
    """
    if reference_epochs <= 0 or max_epochs <= 0:
        raise KDSweepError(
            f"reference_epochs/max_epochs: must be > 0, got {reference_epochs}/{max_epochs}"
        )
    scaled = [min(max_epochs, max(1, math.floor(m * max_epochs / reference_epochs + 0.5)))
              for m in milestones]  # fmt: skip
    return scaled
