"""Speech-recognition (BiLSTM-CTC) conditions: one training function per condition, of its
typed config (the registry builds it from Tune's dict: `trainables.conditions.Condition`).

Each reads top to bottom: define its loss on a typed batch (`SpeechBatch`), run the shared loop.
Teacher posteriors / hidden states are cached in the ASR teacher store: no teacher forward here.
With a transfer set (soft, hard, self) a batch also holds unlabeled rows (`labeled` False): the
gold-transcript CTC term skips them, the teacher terms (KL, teacher-transcript CTC, MSE) use all.
"""

from __future__ import annotations

from kdsweep.speech.losses import ctc_frame_kd_loss, ctc_loss, masked_hidden_mse
from trainables.conditions import Condition
from trainables.speech.config import (
    ASRConfig,
    ASRHardConfig,
    ASRHiddenConfig,
    ASRSoftConfig,
    SelfDistillConfig,
)
from trainables.speech.loop import SpeechBatch, run_asr_trial


def _ctc(out, batch: SpeechBatch, eps: float = 0.0):
    """CTC on the gold transcripts, over labeled rows only (transfer rows have none);
    `eps` = the config's label_smoothing."""
    return ctc_loss(
        out.logits, batch.targets, out.out_lens, batch.target_lens,
        labeled=batch.labeled, label_smoothing=eps,
    )  # fmt: skip


def _feature_mse(out, batch: SpeechBatch, pairs, projections=None):
    """Mean MSE over the (student, teacher) layer pairs; the teacher's cached hidden states
    hold the pairs' teacher layers in order; `projections` map student width -> teacher's."""
    total = 0
    for k, (s, _) in enumerate(pairs):
        h = out.hidden_states[s - 1]
        if projections is not None:
            h = projections[k](h)
        total = total + masked_hidden_mse(h, batch.teacher_hidden[:, :, k], out.out_lens)
    return total / max(1, len(pairs))


def independent(cfg: ASRConfig) -> None:
    """CTC on the gold transcripts only: the baseline every distilled condition is compared to."""

    def loss_fn(out, batch, aux):
        ctc = _ctc(out, batch, cfg.label_smoothing)
        return ctc, {"loss_ctc": ctc}

    run_asr_trial(cfg, loss_fn)


def soft(cfg: ASRSoftConfig) -> None:
    """Frame-level soft KD from the teacher's cached posteriors (same frame rate and vocab)."""

    def loss_fn(out, batch, aux):
        ctc = _ctc(out, batch, cfg.label_smoothing)
        kd = ctc_frame_kd_loss(
            out.logits, batch.teacher_logits, out.out_lens, cfg.temperature,
            cfg.blank_frame_weight,
        )  # fmt: skip
        return cfg.alpha * kd + (1 - cfg.alpha) * ctc, {"loss_ctc": ctc, "loss_kd": kd}

    run_asr_trial(cfg, loss_fn, temperature=lambda epoch: cfg.temperature)


def hard(cfg: ASRHardConfig) -> None:
    """Hard KD: the teacher's greedy transcripts are the CTC targets (pseudo-labels)."""

    def loss_fn(out, batch, aux):
        ctc = _ctc(out, batch, cfg.label_smoothing)
        kd = ctc_loss(
            out.logits, batch.teacher_targets, out.out_lens, batch.teacher_target_lens,
            label_smoothing=cfg.label_smoothing,
        )  # fmt: skip
        return cfg.alpha * kd + (1 - cfg.alpha) * ctc, {"loss_ctc": ctc, "loss_kd": kd}

    run_asr_trial(cfg, loss_fn)


def hidden(cfg: ASRHiddenConfig) -> None:
    """Hidden-state KD: alpha * KL_soft + beta * CTC + gamma * MSE(proj(student layer s),
    teacher layer t) over the chosen layer pairs (a learned Linear per pair)."""
    pairs = cfg.layer_pairs()

    def loss_fn(out, batch, aux):
        ctc = _ctc(out, batch, cfg.label_smoothing)
        mse = _feature_mse(out, batch, pairs, aux.proj)
        total = cfg.ctc_weight * ctc + cfg.mse_weight * mse
        parts = {"loss_ctc": ctc, "loss_hidden": mse}
        if cfg.alpha > 0:
            kd = ctc_frame_kd_loss(
                out.logits, batch.teacher_logits, out.out_lens, cfg.temperature,
                cfg.blank_frame_weight,
            )  # fmt: skip
            total, parts["loss_kd"] = total + cfg.alpha * kd, kd
        return total, parts

    run_asr_trial(cfg, loss_fn)


def self_distill(cfg: SelfDistillConfig) -> None:
    """Self-distillation: the teacher is the student's stored twin (same architecture, trained
    alone) or an imported checkpoint; alpha * KL_soft(T(epoch)) + beta * CTC(gold) + gamma *
    MSE over the chosen layer pairs (projected when the widths differ)."""
    pairs = cfg.layer_pairs() if cfg.gamma > 0 else []  # gamma = 0: no hidden states at all

    def loss_fn(out, batch, aux):
        kd = ctc_frame_kd_loss(
            out.logits, batch.teacher_logits, out.out_lens, cfg.temperature_at(batch.epoch),
            cfg.blank_frame_weight,
        )  # fmt: skip
        ctc = _ctc(out, batch, cfg.label_smoothing)
        mse = _feature_mse(out, batch, pairs, aux.proj if aux is not None else None) + 0 * ctc
        total = cfg.alpha * kd + cfg.beta * ctc + cfg.gamma * mse
        return total, {"loss_kd": kd, "loss_ctc": ctc, "loss_hidden": mse}

    run_asr_trial(cfg, loss_fn, temperature=cfg.temperature_at)


# One declaration per condition: its training function (whose annotated config class it takes).
CONDITIONS: dict[str, Condition] = {
    "independent": Condition(independent),
    "soft": Condition(soft),
    "hard": Condition(hard),
    "hidden": Condition(hidden),
    "self": Condition(self_distill),
}
# Views of the records (by name): Tune's function trainables (dict -> typed config -> train)
# and the config classes.
ASR_TRAINABLES = dict(CONDITIONS)
ASR_CONFIGS = {name: c.config for name, c in CONDITIONS.items()}
