"""Text-classification conditions: one training function per condition, of its typed config.

Each reads top to bottom: define its loss on a typed batch (`TextBatch`), run the shared epoch
loop. The registry builds the config from Tune's dict (`Condition`); what a condition reads from
the teacher is declared once, on its config (`needs`).
"""

from __future__ import annotations

import torch.nn.functional as F

from kdsweep.losses import (
    attention_kd_loss,
    content_attention,
    decoupled_kd_loss,
    hard_kd_loss,
    hidden_cosine_loss,
    hidden_mse_loss,
    masked_cross_entropy,
    soft_kd_loss,
    soft_kd_objective,
    standardize_states,
)
from trainables.conditions import Condition
from trainables.text.config import (
    AttentionConfig,
    CascadeConfig,
    CosineConfig,
    DKDConfig,
    HardConfig,
    HiddenConfig,
    SoftConfig,
    TextConfig,
)
from trainables.text.loop import TextBatch, run_text_trial


def independent(cfg: TextConfig) -> None:
    """Labels only: the baseline every distilled condition is compared against."""

    def loss_fn(out, batch: TextBatch, aux):
        ce = F.cross_entropy(out.logits.float(), batch.labels)
        return ce, {"loss_ce": ce}

    run_text_trial(cfg, loss_fn)


def _soft_loss(cfg: SoftConfig):
    """alpha * T^2 KL + (1 - alpha) * CE on cached teacher logits (soft KD and cascade stages)."""

    def loss_fn(out, batch: TextBatch, aux):
        total, ce, kd = soft_kd_objective(
            out.logits,
            batch.teacher_logits,
            batch.labels,
            cfg.alpha,
            cfg.temperature,
            batch.labeled,  # transfer rows: KD only, no CE
        )
        return total, {"loss_ce": ce, "loss_kd": kd}

    return loss_fn


def soft(cfg: SoftConfig) -> None:
    """Soft logit KD from cached teacher logits (the teacher never runs here)."""
    run_text_trial(cfg, _soft_loss(cfg))


def hard(cfg: HardConfig) -> None:
    """Hard KD: the teacher's argmax predictions as training labels."""

    def loss_fn(out, batch: TextBatch, aux):
        total, ce, kd = hard_kd_loss(
            out.logits, batch.teacher_logits, batch.labels, cfg.alpha, batch.labeled
        )
        return total, {"loss_ce": ce, "loss_kd": kd}

    run_text_trial(cfg, loss_fn)


def dkd(cfg: DKDConfig) -> None:
    """Decoupled KD: the target-class and non-target-class parts of KD, weighted apart."""

    def loss_fn(out, batch: TextBatch, aux):
        ce = F.cross_entropy(out.logits.float(), batch.labels)
        tckd, nckd = decoupled_kd_loss(out.logits, batch.teacher_logits, batch.labels,
                                       cfg.temperature)  # fmt: skip
        total = ce + cfg.alpha * tckd + cfg.beta * nckd
        return total, {"loss_ce": ce, "loss_tckd": tckd, "loss_nckd": nckd}

    run_text_trial(cfg, loss_fn)


def _with_soft_kd(cfg: SoftConfig, total, parts: dict, out, batch: TextBatch) -> tuple:
    """Feature-KD conditions add alpha * soft KD on the logits when alpha > 0."""
    if cfg.alpha > 0:
        kd = soft_kd_loss(out.logits, batch.teacher_logits, cfg.temperature)
        total, parts["loss_kd"] = total + cfg.alpha * kd, kd
    return total, parts


def hidden(cfg: HiddenConfig) -> None:
    """Hidden-state KD: MSE between projected student layers and mapped teacher layers."""

    def loss_fn(out, batch: TextBatch, aux):
        # Transfer rows have no gold label: CE over labeled rows, MSE and soft KD over all.
        ce = masked_cross_entropy(out.logits, batch.labels, batch.labeled)
        mask = batch.attention_mask
        t, t_mean = batch.teacher_hidden, batch.teacher_hidden_mean
        # hidden_states[0] is the embedding output; student layer i is hidden_states[i]. Both
        # sides standardised, the teacher centred on its mean state (see standardize_states).
        mse = sum(
            hidden_mse_loss(standardize_states(proj(out.hidden_states[i + 1])),
                            standardize_states(t[:, i], t_mean[i]), mask)
            for i, proj in enumerate(aux.proj)
        ) / len(aux.proj)  # fmt: skip
        total = (1 - cfg.alpha) * ce + cfg.hidden_weight * mse
        parts = {"loss_ce": ce, "loss_hidden": mse}
        return _with_soft_kd(cfg, total, parts, out, batch)

    run_text_trial(cfg, loss_fn)


def cosine(cfg: CosineConfig) -> None:
    """Hidden-state KD by direction: 1 - cos(proj(student layer), mapped teacher layer)."""

    def loss_fn(out, batch: TextBatch, aux):
        ce = masked_cross_entropy(out.logits, batch.labels, batch.labeled)
        mask = batch.attention_mask
        t, t_mean = batch.teacher_hidden, batch.teacher_hidden_mean
        # hidden_states[0] is the embedding output; student layer i is [i + 1]. The teacher is
        # centred on its mean state: a constant student would otherwise align with it.
        cos = sum(
            hidden_cosine_loss(proj(out.hidden_states[i + 1]), t[:, i] - t_mean[i], mask)
            for i, proj in enumerate(aux.proj)
        ) / len(aux.proj)
        total = (1 - cfg.alpha) * ce + cfg.cosine_weight * cos
        parts = {"loss_ce": ce, "loss_cosine": cos}
        return _with_soft_kd(cfg, total, parts, out, batch)

    run_text_trial(cfg, loss_fn)


def attention(cfg: AttentionConfig) -> None:
    """Attention KD: KL between head-averaged attention maps of mapped layers."""

    def loss_fn(out, batch: TextBatch, aux):
        # Transfer rows have no gold label: CE over labeled rows, attention KL and soft KD over all.
        ce = masked_cross_entropy(out.logits, batch.labels, batch.labeled)
        mask = batch.attention_mask
        t = batch.teacher_attention
        att = sum(  # over content keys only: no [CLS]/[SEP] sink pattern (content_attention)
            attention_kd_loss(content_attention(a.mean(dim=1), mask),
                              content_attention(t[:, i], mask), mask)
            for i, a in enumerate(out.attentions)
        ) / len(out.attentions)  # fmt: skip
        total = (1 - cfg.alpha) * ce + cfg.attention_weight * att
        parts = {"loss_ce": ce, "loss_attention": att}
        return _with_soft_kd(cfg, total, parts, out, batch)

    run_text_trial(cfg, loss_fn)


def cascade(cfg: CascadeConfig) -> None:
    """A cascade stage: soft KD from a previous stage's student (teacher -> s1 -> s2)."""
    run_text_trial(cfg, _soft_loss(cfg))


# One declaration per condition: its training function (whose annotated config class it takes).
CONDITIONS: dict[str, Condition] = {
    "independent": Condition(independent),
    "soft": Condition(soft),
    "hard": Condition(hard),
    "hidden": Condition(hidden),
    "cosine": Condition(cosine),
    "attention": Condition(attention),
    "cascade": Condition(cascade),
    "dkd": Condition(dkd),
}
# Views of the records (by name): Tune's function trainables (dict -> typed config -> train)
# and the config classes.
TEXT_TRAINABLES = dict(CONDITIONS)
TEXT_CONFIGS = {name: c.config for name, c in CONDITIONS.items()}
