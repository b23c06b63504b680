"""Causal-LM conditions: one Ray Tune function trainable per condition.

Each reads top to bottom: define its objective, run the shared loop. The registry builds the
typed config from Tune's dict (`Condition`: the function's annotated config class).
kd, seqkd and the corpus half of on_policy read the teacher from the store (its top-k cache, its
continuations); only on_policy's own samples need the teacher live in the trial.
"""

from __future__ import annotations

import time

import torch

from kdsweep.lm.cache import generate
from kdsweep.lm.losses import kd_objective, next_token_ce, token_divergence, topk_kd_and_ce
from trainables.conditions import Condition
from trainables.lm.config import KDConfig, LMConfig, OnPolicyConfig, SeqKDConfig
from trainables.lm.loop import LMBatch, run_lm_trial


def _ce(student, batch: LMBatch) -> tuple[torch.Tensor, dict]:
    logits = student(input_ids=batch.inputs).logits
    ce = next_token_ce(logits, batch.targets, batch.mask)
    return ce, {"loss_ce": ce}


def independent(cfg: LMConfig) -> None:
    """Next-token CE on the corpus: the baseline every distilled condition is compared against."""
    run_lm_trial(cfg, _ce)


def _kd_objective(cfg: KDConfig):
    """alpha * divergence(cached teacher top-k, student) + (1 - alpha) * CE on corpus blocks."""

    def objective(student, batch: LMBatch):
        logits = student(input_ids=batch.inputs).logits
        kd, ce = topk_kd_and_ce(logits, batch.targets, batch.logp, batch.idx,
                                batch.tail, batch.mask, cfg.divergence, cfg.temperature,
                                cfg.beta)  # fmt: skip
        return kd_objective(kd, ce, cfg.alpha), {"loss_ce": ce, "loss_kd": kd}

    return objective


def kd(cfg: KDConfig) -> None:
    """Token-level KD from the cached top-k teacher (forward/reverse KL, JSD(beta), TVD)."""
    run_lm_trial(cfg, _kd_objective(cfg))


def seqkd(cfg: SeqKDConfig) -> None:
    """Sequence-level KD: CE on the teacher's stored continuations of corpus prompts."""
    run_lm_trial(cfg, _ce)


def on_policy(cfg: OnPolicyConfig) -> None:
    """GKD: with probability lmbda the batch is the student's own samples (continuations of the
    batch's prompts) scored by the live teacher; otherwise the corpus batch against the cache.
    Reports the seconds spent sampling and in the teacher (the condition's extra cost)."""
    corpus = _kd_objective(cfg)

    def objective(student, batch: LMBatch):
        if batch.rng.random() >= cfg.lmbda:
            return corpus(student, batch)
        t0 = time.perf_counter()
        was_training = student.training
        student.eval()  # sampling: no dropout, no gradient
        prompts = batch.inputs[:, : cfg.prompt_tokens]
        eos = student.config.eos_token_id
        eos = eos[0] if isinstance(eos, list) else eos
        seq = generate(student, prompts, cfg.new_tokens, eos, sample=True).long()
        student.train(was_training)
        t1 = time.perf_counter()
        with torch.no_grad():
            teacher_logits = batch.teacher(input_ids=seq[:, :-1]).logits
        t2 = time.perf_counter()
        logits = student(input_ids=seq[:, :-1]).logits
        mask = torch.zeros(seq.shape[0], seq.shape[1] - 1, dtype=torch.bool, device=seq.device)
        mask[:, cfg.prompt_tokens - 1 :] = True  # only the sampled tokens are scored
        d = token_divergence(logits, teacher_logits, mask, cfg.divergence, cfg.temperature,
                             cfg.beta)  # fmt: skip
        seconds = torch.tensor([t1 - t0, t2 - t1])
        return d, {"loss_kd": d, "sample_seconds": seconds[0], "teacher_seconds": seconds[1],
                   "on_policy_batch": torch.tensor(1.0)}  # fmt: skip

    run_lm_trial(cfg, objective)


# One record per condition: its training function, whose annotated config class (which
# declares its `needs`) the registry builds from Tune's dict.
CONDITIONS: dict[str, Condition] = {
    "independent": Condition(independent),
    "kd": Condition(kd),
    "seqkd": Condition(seqkd),
    "on_policy": Condition(on_policy),
}
