"""Text-classification conditions: one Ray Tune function trainable per condition.

Each reads top to bottom: build its typed config, define its loss, run the shared epoch loop.
What a condition reads from the teacher is declared once, on its config (`needs`).
"""

from __future__ import annotations

from typing import Any

import torch.nn.functional as F

from kdsweep.losses import (
    attention_kd_loss,
    content_attention,
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
    HardConfig,
    HiddenConfig,
    SoftConfig,
    TextConfig,
)
from trainables.text.loop import run_text_trial


def independent(config: dict[str, Any]) -> None:
    """Labels only: the baseline every distilled condition is compared against."""
    cfg = TextConfig.from_dict(config)

    def loss_fn(out, batch, aux):
        ce = F.cross_entropy(out.logits.float(), batch["labels"])
        return ce, {"loss_ce": ce}

    run_text_trial(cfg, loss_fn)


def _soft_loss(cfg: SoftConfig):
    """alpha * T^2 KL + (1 - alpha) * CE on cached teacher logits (soft KD and cascade stages)."""

    def loss_fn(out, batch, aux):
        total, ce, kd = soft_kd_objective(
            out.logits,
            batch["teacher_logits"],
            batch["labels"],
            cfg.alpha,
            cfg.temperature,
            batch.get("labeled"),  # transfer rows: KD only, no CE
        )
        return total, {"loss_ce": ce, "loss_kd": kd}

    return loss_fn


def soft(config: dict[str, Any]) -> None:
    """Soft logit KD from cached teacher logits (the teacher never runs here)."""
    cfg = SoftConfig.from_dict(config)
    run_text_trial(cfg, _soft_loss(cfg))


def hard(config: dict[str, Any]) -> None:
    """Hard KD: the teacher's argmax predictions as training labels."""
    cfg = HardConfig.from_dict(config)

    def loss_fn(out, batch, aux):
        total, ce, kd = hard_kd_loss(
            out.logits, batch["teacher_logits"], batch["labels"], cfg.alpha, batch.get("labeled")
        )
        return total, {"loss_ce": ce, "loss_kd": kd}

    run_text_trial(cfg, loss_fn)


def _with_soft_kd(cfg: SoftConfig, total, parts: dict, out, batch) -> tuple:
    """Feature-KD conditions add alpha * soft KD on the logits when alpha > 0."""
    if cfg.alpha > 0:
        kd = soft_kd_loss(out.logits, batch["teacher_logits"], cfg.temperature)
        total, parts["loss_kd"] = total + cfg.alpha * kd, kd
    return total, parts


def hidden(config: dict[str, Any]) -> None:
    """Hidden-state KD: MSE between projected student layers and mapped teacher layers."""
    cfg = HiddenConfig.from_dict(config)

    def loss_fn(out, batch, aux):
        # Transfer rows have no gold label: CE over labeled rows, MSE and soft KD over all.
        ce = masked_cross_entropy(out.logits, batch["labels"], batch.get("labeled"))
        mask = batch["attention_mask"]
        t, t_mean = batch["teacher_hidden"], batch["teacher_hidden_mean"]
        # hidden_states[0] is the embedding output; student layer i is hidden_states[i]. Both
        # sides standardised, the teacher centred on its mean state (see standardize_states).
        mse = sum(
            hidden_mse_loss(standardize_states(proj(out.hidden_states[i + 1])),
                            standardize_states(t[:, i], t_mean[i]), mask)
            for i, proj in enumerate(aux["proj"])
        ) / len(aux["proj"])  # fmt: skip
        total = (1 - cfg.alpha) * ce + cfg.hidden_weight * mse
        parts = {"loss_ce": ce, "loss_hidden": mse}
        return _with_soft_kd(cfg, total, parts, out, batch)

    run_text_trial(cfg, loss_fn)


def cosine(config: dict[str, Any]) -> None:
    """Hidden-state KD by direction: 1 - cos(proj(student layer), mapped teacher layer)."""
    cfg = CosineConfig.from_dict(config)

    def loss_fn(out, batch, aux):
        ce = masked_cross_entropy(out.logits, batch["labels"], batch.get("labeled"))
        mask = batch["attention_mask"]
        t, t_mean = batch["teacher_hidden"], batch["teacher_hidden_mean"]
        # hidden_states[0] is the embedding output; student layer i is [i + 1]. The teacher is
        # centred on its mean state: a constant student would otherwise align with it.
        cos = sum(
            hidden_cosine_loss(proj(out.hidden_states[i + 1]), t[:, i] - t_mean[i], mask)
            for i, proj in enumerate(aux["proj"])
        ) / len(aux["proj"])
        total = (1 - cfg.alpha) * ce + cfg.cosine_weight * cos
        parts = {"loss_ce": ce, "loss_cosine": cos}
        return _with_soft_kd(cfg, total, parts, out, batch)

    run_text_trial(cfg, loss_fn)


def attention(config: dict[str, Any]) -> None:
    """Attention KD: KL between head-averaged attention maps of mapped layers."""
    cfg = AttentionConfig.from_dict(config)

    def loss_fn(out, batch, aux):
        # Transfer rows have no gold label: CE over labeled rows, attention KL and soft KD over all.
        ce = masked_cross_entropy(out.logits, batch["labels"], batch.get("labeled"))
        mask = batch["attention_mask"]
        t = batch["teacher_attention"]
        att = sum(  # over content keys only: no [CLS]/[SEP] sink pattern (content_attention)
            attention_kd_loss(content_attention(a.mean(dim=1), mask),
                              content_attention(t[:, i], mask), mask)
            for i, a in enumerate(out.attentions)
        ) / len(out.attentions)  # fmt: skip
        total = (1 - cfg.alpha) * ce + cfg.attention_weight * att
        parts = {"loss_ce": ce, "loss_attention": att}
        return _with_soft_kd(cfg, total, parts, out, batch)

    run_text_trial(cfg, loss_fn)


def cascade(config: dict[str, Any]) -> None:
    """A cascade stage: soft KD from a previous stage's student (teacher -> s1 -> s2)."""
    cfg = CascadeConfig.from_dict(config)
    run_text_trial(cfg, _soft_loss(cfg))


# One record per condition: its trainable and its typed config (which declares its `needs`).
CONDITIONS: dict[str, Condition] = {
    "independent": Condition(independent, TextConfig),
    "soft": Condition(soft, SoftConfig),
    "hard": Condition(hard, HardConfig),
    "hidden": Condition(hidden, HiddenConfig),
    "cosine": Condition(cosine, CosineConfig),
    "attention": Condition(attention, AttentionConfig),
    "cascade": Condition(cascade, CascadeConfig),
}
# Views of the records (by name): the trainables and the config classes.
TEXT_TRAINABLES = {name: c.trainable for name, c in CONDITIONS.items()}
TEXT_CONFIGS = {name: c.config for name, c in CONDITIONS.items()}
