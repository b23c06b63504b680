"""Distillation losses on logits, hidden states and attention maps: pure tensor functions."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def soft_kd_loss(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float
) -> torch.Tensor:
    """Hinton et al.'s KL(teacher_T || student_T) * T**2, averaged over the batch.

    Softening both distributions by T shrinks the soft-target gradients by 1/T**2; multiplying by
    T**2 keeps the KD term's gradient scale comparable to the CE term's whatever T is, so alpha
    means the same thing at T=1 and T=8. Computed in float32 with log_softmax on both sides
    (log_target=True) so that near-zero teacher probabilities cannot produce log(0).
    """
    s = F.log_softmax(student_logits.float() / temperature, dim=-1)
    t = F.log_softmax(teacher_logits.float() / temperature, dim=-1)
    return F.kl_div(s, t, reduction="batchmean", log_target=True) * temperature**2


def masked_cross_entropy(
    logits: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """Mean CE over the rows where `mask` is true (teacher-labeled transfer rows have no gold
    label); a batch with no such row gives 0. mask=None: plain mean CE over every row."""
    if mask is None:
        return F.cross_entropy(logits.float(), labels)
    mask = mask.bool()
    safe = torch.where(mask, labels, torch.zeros_like(labels))  # placeholder labels never read
    ce = F.cross_entropy(logits.float(), safe, reduction="none") * mask
    return ce.sum() / mask.sum().clamp_min(1)


def soft_kd_objective(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    labels: torch.Tensor,
    alpha: float,
    temperature: float,
    labeled: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """alpha * soft_kd + (1 - alpha) * CE; returns (total, ce, kd). alpha=0 is plain CE.

    `labeled` (bool [B], optional): CE only over labeled rows; KD over every row."""
    ce = masked_cross_entropy(student_logits, labels, labeled)
    kd = soft_kd_loss(student_logits, teacher_logits, temperature)
    return alpha * kd + (1.0 - alpha) * ce, ce, kd


def hard_kd_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    labels: torch.Tensor,
    alpha: float,
    labeled: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """alpha * CE(student, teacher argmax) + (1 - alpha) * CE(student, gold); (total, ce, kd).

    `labeled` (bool [B], optional): gold CE only over labeled rows; teacher CE over every row."""
    ce = masked_cross_entropy(student_logits, labels, labeled)
    kd = F.cross_entropy(student_logits.float(), teacher_logits.argmax(dim=-1))
    return alpha * kd + (1.0 - alpha) * ce, ce, kd


def decoupled_kd_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    labels: torch.Tensor,
    temperature: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Decoupled KD (Zhao et al., CVPR 2022): (TCKD, NCKD), each * T**2, averaged over the batch.

    TCKD is KL(b_teacher || b_student) between the binary distributions b = [p_target,
    1 - p_target]; NCKD is KL(p^_teacher || p^_student) between the distributions among the
    non-target classes only. Classic KD = TCKD + (1 - p_target_teacher) * NCKD; DKD weighs the
    two freely (alpha * TCKD + beta * NCKD). Log-probabilities come from logsumexp, never
    log(p): log(1 - p_target) is the logsumexp over the other classes. The target class is
    left out of NCKD by a -1e4 logit (exp underflows to an exact 0 in float32; -inf would make
    0 * log 0 = NaN inside the KL).
    """
    s, t = student_logits.float() / temperature, teacher_logits.float() / temperature
    target = F.one_hot(labels, s.shape[-1]).bool()

    def binary_log_probs(z: torch.Tensor) -> torch.Tensor:  # [B, 2]: log p_target, log(1 - p)
        norm = z.logsumexp(-1)
        rest = z.masked_fill(target, -1e4).logsumexp(-1)
        return torch.stack([z[target] - norm, rest - norm], dim=-1)

    def kl(log_q: torch.Tensor, log_p: torch.Tensor) -> torch.Tensor:
        return F.kl_div(log_q, log_p, reduction="batchmean", log_target=True) * temperature**2

    tckd = kl(binary_log_probs(s), binary_log_probs(t))
    nckd = kl(
        F.log_softmax(s.masked_fill(target, -1e4), dim=-1),
        F.log_softmax(t.masked_fill(target, -1e4), dim=-1),
    )
    return tckd, nckd


def standardize_states(states: torch.Tensor, mean: torch.Tensor | None = None) -> torch.Tensor:
    """Each token's state minus `mean` (a teacher's mean state [H], if given), then scaled to
    zero mean and unit variance over its hidden units (layer norm without parameters).

    Why feature KD needs both (measured, fortunes 6 topics, L2-H128 from random init): raw MSE
    to the teacher's states is minimised early by a student whose states no longer depend on
    its input (its projection then outputs the teacher's mean state: loss 0.23 = the
    teacher's own variance around its mean), and CE sat at ln 6 for 5 epochs. Centring the
    teacher on its mean state removes that constant's reward; normalising the student's side
    takes away the other way down, shrinking its states. An uninformative student then scores
    2 per unit (uncorrelated) in `hidden_mse_loss`, a perfectly aligned one 0.
    """
    x = states.float()
    if mean is not None:
        x = x - mean.float()
    return F.layer_norm(x, x.shape[-1:], eps=1e-5)


def hidden_mse_loss(
    student_hidden: torch.Tensor, teacher_hidden: torch.Tensor, mask: torch.Tensor
) -> torch.Tensor:
    """MSE between (already projected) student and teacher states over real tokens only.

    Shapes [B, S, H]; mask [B, S] (1 = token). Padding positions carry arbitrary activations in
    both models, so they are excluded; the mean is over real tokens and hidden units.
    """
    m = mask.unsqueeze(-1).to(student_hidden.dtype)
    sq = (student_hidden.float() - teacher_hidden.float()) ** 2 * m
    return sq.sum() / (m.sum() * student_hidden.shape[-1]).clamp_min(1.0)


def hidden_cosine_loss(
    student_hidden: torch.Tensor, teacher_hidden: torch.Tensor, mask: torch.Tensor
) -> torch.Tensor:
    """Mean 1 - cos(student, teacher) over real tokens ([B, S, H]; mask [B, S]): the direction
    of the states, not their scale. eps keeps all-zero padded states from dividing by zero."""
    cos = F.cosine_similarity(student_hidden.float(), teacher_hidden.float(), dim=-1, eps=1e-8)
    m = mask.to(cos.dtype)
    return ((1.0 - cos) * m).sum() / m.sum().clamp_min(1.0)


def attention_kd_loss(
    student_attn: torch.Tensor, teacher_attn: torch.Tensor, mask: torch.Tensor
) -> torch.Tensor:
    """KL(teacher || student) between head-averaged attention rows, over real query tokens.

    Shapes [B, S, S] (rows = queries, each a distribution over keys); mask [B, S]. Teacher and
    student usually have different head counts, so both are averaged over heads first (a head
    average of softmax rows is still a distribution). Rows of padded queries are dropped; the
    1e-8 floor guards log(0) where the student puts no mass on a key.
    """
    t = teacher_attn.float().clamp_min(1e-8)
    s = student_attn.float().clamp_min(1e-8)
    kl_rows = (t * (t.log() - s.log())).sum(-1)  # [B, S]
    m = mask.to(kl_rows.dtype)
    return (kl_rows * m).sum() / m.sum().clamp_min(1.0)


def content_attention(attn: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Attention rows [B, S, S] with the keys of the first and last real token ([CLS] and
    [SEP], <s> and </s>) removed and each row renormalised over the remaining (content) keys.

    Much of a BERT teacher's attention rests on [CLS]/[SEP] whatever the text (Clark et al.
    2019, "What does BERT look at?": attention to [SEP] acts as a no-op); a student copying
    that input-independent pattern routes every token to the same two states. Rows with no
    content key (texts of <= 2 tokens) come out all zero.
    """
    b = attn.shape[0]
    keep = mask.bool().clone()
    keep[:, 0] = False
    keep[torch.arange(b, device=mask.device), mask.long().sum(-1).clamp_min(1) - 1] = False
    a = attn.float() * keep[:, None, :]
    return a / a.sum(-1, keepdim=True).clamp_min(1e-8)
