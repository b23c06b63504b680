"""Token-level divergences for causal-LM distillation: pure tensor functions, no ray, no mlflow.

Every function takes log-probabilities over the last dimension (or logits, turned into them
once) and a boolean `mask` [B, S] of the positions that count; the result is the mean over
those positions (a batch with none gives 0). Probabilities are never formed before the log:
log_softmax / logsumexp keep p * log p finite where p underflows (exp(-inf) * finite = 0).

Conventions (as in GKD, Agarwal et al. 2024, and TRL's `generalized_jsd_loss`):
    forward_kl   KL(p_teacher || q_student)  (mode covering, the classic KD loss)
    reverse_kl   KL(q_student || p_teacher)  (mode seeking, MiniLLM)
    jsd(beta)    beta * KL(p || m) + (1 - beta) * KL(q || m),  m = beta * p + (1 - beta) * q;
                 beta = 0 is forward KL and beta = 1 reverse KL exactly (TRL special-cases
                 both ends: the mixture formula itself tends to 0 there, as beta * forward KL
                 near 0 and (1 - beta) * reverse KL near 1)
    tvd          0.5 * sum |p - q|, in [0, 1]

The top-k cache (kdsweep/lm/cache.py) stores, per token, the teacher's k largest log-probs, their
token ids and the remaining (tail) mass. `topk_support` folds the student's full distribution
onto the same k + 1 outcomes (the k tokens, and "any other token"); every divergence above is an
f-divergence, so on the folded pair it is a lower bound of the full-vocabulary value (the data
processing inequality), with the gap exactly

    forward KL:  r_p * KL(p_tail / r_p || q_tail / r_q)      r = tail mass outside the top k
    reverse KL:  r_q * KL(q_tail / r_q || p_tail / r_p)
    TVD:         <= min(r_p, r_q)

so the approximation is exact when the teacher's tail is empty and tight when it is small (a
few percent for k = 16-64 on a trained LM). Temperature: the cache holds log p at T = 1; at
T != 1 the top-k entries are tempered exactly (up to the normaliser) and the tail is tempered
as one outcome (log r / T), which is exact only at T = 1: the tail's inner shape is not stored.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

DIVERGENCES = ("forward_kl", "reverse_kl", "jsd", "tvd")
# log(0) stand-in for empty outcomes: finite so that 0 * LOG_ZERO = 0 (not nan), and small
# enough that exp(LOG_ZERO) == 0 in float32.
LOG_ZERO = -1e4


def masked_mean(per_token: Tensor, mask: Tensor | None) -> Tensor:
    """Mean of `per_token` [B, S] over `mask` (bool [B, S]); all positions when mask is None."""
    if mask is None:
        return per_token.mean()
    m = mask.to(per_token.dtype)
    return (per_token * m).sum() / m.sum().clamp_min(1.0)


def _kl(logp: Tensor, logq: Tensor) -> Tensor:
    """KL(p || q) per position: sum_v p (log p - log q). A p of 0 contributes 0 whatever q
    is (xlogy convention), so empty outcomes need no special case."""
    p = logp.exp()
    return (p * (logp - logq)).where(p > 0, torch.zeros_like(p)).sum(-1)


def kl_terms(logp: Tensor, logq: Tensor, divergence: str, beta: float = 0.5) -> Tensor:
    """Per-position divergence between teacher log-probs `logp` and student log-probs `logq`
    (both [..., V], normalised): one of DIVERGENCES."""
    if divergence == "forward_kl":
        return _kl(logp, logq)
    if divergence == "reverse_kl":
        return _kl(logq, logp)
    if divergence == "tvd":
        return 0.5 * (logp.exp() - logq.exp()).abs().sum(-1)
    if divergence != "jsd":
        raise ValueError(f"unknown divergence {divergence!r}; choose from {DIVERGENCES}")
    if beta <= 0.0:
        return _kl(logp, logq)
    if beta >= 1.0:
        return _kl(logq, logp)
    # log m = logsumexp(log beta + log p, log(1 - beta) + log q): never forms p or q first.
    logm = torch.logsumexp(torch.stack([logp + math.log(beta), logq + math.log1p(-beta)]), dim=0)
    return beta * _kl(logp, logm) + (1.0 - beta) * _kl(logq, logm)


def token_divergence(
    student_logits: Tensor,
    teacher_logits: Tensor,
    mask: Tensor | None,
    divergence: str,
    temperature: float = 1.0,
    beta: float = 0.5,
) -> Tensor:
    """Full-vocabulary divergence between teacher and student next-token distributions, both
    softened by `temperature`, averaged over masked positions, times T^2 (Hinton's scaling:
    the soft-target gradients shrink as 1/T^2, so the product keeps alpha's meaning across T).
    Computed in float32 whatever the logits' dtype (bf16 log-probs lose the tail)."""
    logq = F.log_softmax(student_logits.float() / temperature, dim=-1)
    logp = F.log_softmax(teacher_logits.float() / temperature, dim=-1)
    return masked_mean(kl_terms(logp, logq, divergence, beta), mask) * temperature**2


def _log1mexp(logsum: Tensor) -> Tensor:
    """log(1 - exp(x)) for x <= 0, stable near both ends (Maechler 2012): the tail mass left
    outside the top k, as a log-probability (LOG_ZERO when nothing is left)."""
    x = logsum.clamp(max=0.0)
    out = torch.where(x > -math.log(2), torch.log(-torch.expm1(x)), torch.log1p(-torch.exp(x)))
    return out.clamp_min(LOG_ZERO)


def topk_support(
    student_logits: Tensor,
    topk_logp: Tensor,
    topk_idx: Tensor,
    tail_mass: Tensor,
    temperature: float = 1.0,
) -> tuple[Tensor, Tensor]:
    """(teacher, student) log-probs on the k + 1 outcomes [..., k + 1] (the top-k tokens, then
    the tail): the student folded exactly from its full distribution at `temperature`; the
    teacher from the cache, tempered as the module docstring says (exact at T = 1)."""
    logq_full = F.log_softmax(student_logits.float() / temperature, dim=-1)
    return fold_topk(logq_full.gather(-1, topk_idx.long()), topk_logp, tail_mass, temperature)


def fold_topk(
    logq_k: Tensor, topk_logp: Tensor, tail_mass: Tensor, temperature: float
) -> tuple[Tensor, Tensor]:
    """`topk_support` from the student's (tempered) log-probs of the teacher's top-k tokens."""
    logq = torch.cat([logq_k, _log1mexp(torch.logsumexp(logq_k, -1)).unsqueeze(-1)], -1)
    log_tail = torch.log(tail_mass.float().clamp_min(0.0)).clamp_min(LOG_ZERO).unsqueeze(-1)
    logp = torch.cat([topk_logp.float(), log_tail], -1)
    if temperature != 1.0:
        logp = torch.log_softmax(logp / temperature, dim=-1)
    else:  # fp16 log-probs + tail sum to 1 only approximately: renormalise
        logp = logp - torch.logsumexp(logp, -1, keepdim=True)
    return logp, logq


def topk_kd_and_ce(
    student_logits: Tensor,
    targets: Tensor,
    topk_logp: Tensor,
    topk_idx: Tensor,
    tail_mass: Tensor,
    mask: Tensor | None,
    divergence: str,
    temperature: float = 1.0,
    beta: float = 0.5,
) -> tuple[Tensor, Tensor]:
    """(divergence against the cached top-k, next-token CE) from ONE full-vocabulary
    log_softmax at T = 1: over a 49k vocabulary that softmax (and its backward) costs as much as
    a small student, so computing it twice made a kd epoch ~1.8x an independent one. At T != 1
    the tempered softmax is a second one (unavoidable)."""
    logq = F.log_softmax(student_logits.float(), dim=-1)
    ids = topk_idx.long()
    if temperature == 1.0:  # one gather for both terms: each gather's backward is a full-V scatter
        both = logq.gather(-1, torch.cat([targets.unsqueeze(-1).long(), ids], -1))
        ce_tok, logq_k = -both[..., 0], both[..., 1:]
    else:
        ce_tok = -logq.gather(-1, targets.unsqueeze(-1).long()).squeeze(-1)
        logq_k = F.log_softmax(student_logits.float() / temperature, dim=-1).gather(-1, ids)
    logp, logq_k = fold_topk(logq_k, topk_logp, tail_mass, temperature)
    kd = masked_mean(kl_terms(logp, logq_k, divergence, beta), mask) * temperature**2
    return kd, masked_mean(ce_tok, mask)


def topk_divergence(
    student_logits: Tensor,
    topk_logp: Tensor,
    topk_idx: Tensor,
    tail_mass: Tensor,
    mask: Tensor | None,
    divergence: str,
    temperature: float = 1.0,
    beta: float = 0.5,
) -> Tensor:
    """`token_divergence` against a cached top-k teacher: the divergence on the top-k support
    plus the tail (a lower bound of the full-vocabulary value, see the module docstring)."""
    logp, logq = topk_support(student_logits, topk_logp, topk_idx, tail_mass, temperature)
    return masked_mean(kl_terms(logp, logq, divergence, beta), mask) * temperature**2


def teacher_topk(teacher_logits: Tensor, k: int) -> tuple[Tensor, Tensor, Tensor]:
    """What the cache stores per position: (top-k log-probs fp16, their ids int32, tail mass
    fp32). The tail is computed from the float32 log-probs, not from the rounded fp16 ones."""
    logp = F.log_softmax(teacher_logits.float(), dim=-1)
    vals, idx = logp.topk(k, dim=-1)
    tail = (-torch.expm1(torch.logsumexp(vals, -1))).clamp_min(0.0)
    return vals.to(torch.float16), idx.to(torch.int32), tail


def next_token_ce(logits: Tensor, targets: Tensor, mask: Tensor | None) -> Tensor:
    """Mean next-token cross-entropy over masked positions (`targets` [B, S] already shifted:
    position t predicts targets[:, t])."""
    ce = F.cross_entropy(logits.float().flatten(0, -2), targets.flatten(), reduction="none")
    return masked_mean(ce.view(targets.shape), mask)


def kd_objective(kd: Tensor, ce: Tensor, alpha: float) -> Tensor:
    """alpha * divergence + (1 - alpha) * CE (alpha = 1: the teacher alone)."""
    return alpha * kd + (1.0 - alpha) * ce
