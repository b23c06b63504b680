"""Conditions by task, as plain dicts, and the single entry point Tune runs."""

from __future__ import annotations

import math
from typing import Any

from kdsweep.config import BaseConfig
from kdsweep.errors import KDSweepError
from trainables.asr import ASR_CONFIGS, ASR_TRAINABLES
from trainables.asr_loop import evaluate_asr_checkpoint, prepare_asr
from trainables.text import TEXT_CONFIGS, TEXT_TRAINABLES
from trainables.text_loop import evaluate_text_checkpoint, prepare_text

TRAINABLES: dict[str, dict[str, Any]] = {"text": TEXT_TRAINABLES, "asr": ASR_TRAINABLES}
CONFIGS: dict[str, dict[str, type[BaseConfig]]] = {"text": TEXT_CONFIGS, "asr": ASR_CONFIGS}
EVALUATORS: dict[str, Any] = {"text": evaluate_text_checkpoint, "asr": evaluate_asr_checkpoint}


def _prepare_text(cfg: Any, log: Any) -> dict[str, Any]:
    data = prepare_text(cfg, log)
    t = data.teacher
    how = "reused from" if data.teacher_hit else "stored in"
    source = t.meta.get("source") or cfg.teacher
    dev, test = t.metrics.get("dev_accuracy", math.nan), t.metrics.get("test_accuracy", math.nan)
    split = data.splits
    log(
        f"[kdsweep] teacher {t.id} ({source}) {how} the teacher store: dev accuracy {dev:.3f}, "
        f"test {test:.3f}; data {split.name}: {len(split.train)}/{len(split.dev)}/"
        f"{len(split.test)}, {split.num_labels} labels"
    )
    tags = {"teacher_id": t.id, "teacher": cfg.teacher}
    tags.update({f"teacher_{k}": f"{v:.4f}" for k, v in t.metrics.items()})
    return {"tags": tags, "teacher_hit": data.teacher_hit}


def _prepare_asr(cfg: Any, log: Any) -> dict[str, Any]:
    data = prepare_asr(cfg, log)
    n = data.sizes
    msg = f"[kdsweep] corpus {data.name}: {n['train']}/{n['dev']}/{n['test']} utterances"
    tags = {"corpus": data.name, "corpus_fingerprint": data.fingerprint, "lm": data.arpa.name}
    t = data.teacher
    if t is not None:
        kind = cfg.teacher_kind  # "teacher" (the big one) or "twin" (self-distillation)
        how = "reused from" if data.teacher_hit else "stored in"
        m = t.metrics
        msg += (
            f"; {kind} {t.id} ({t.meta['arch']}) {how} the ASR teacher store: dev WER "
            f"{m['dev_wer']:.3f}, test WER {m['test_wer']:.3f}"
        )
        tags.update({f"{kind}_id": t.id, f"{kind}_arch": t.meta["arch"]})
        tags.update({f"{kind}_{k}": f"{v:.4f}" for k, v in m.items()})
    if data.transfer is not None:  # labeled by the teacher here, once, before any trial
        tr = data.transfer
        msg += f"; transfer set {cfg.transfer_set}: {len(tr.feats)} utterances ({tr.key})"
        tags.update({"transfer_key": tr.key, "transfer_utterances": str(len(tr.feats))})
    log(msg)
    return {"tags": tags, "teacher_hit": data.teacher_hit}


# Driver-side preparation per task (data + teacher, before any trial starts).
PREPARERS: dict[str, Any] = {"text": _prepare_text, "asr": _prepare_asr}


def config_class(task: str, condition: str) -> type[BaseConfig]:
    if task not in CONFIGS:
        raise KDSweepError(f"field 'task': unknown task {task!r}; choose from {sorted(CONFIGS)}")
    if condition not in CONFIGS[task]:
        raise KDSweepError(
            f"field 'condition': unknown condition {condition!r} for task {task!r}; "
            f"choose from {sorted(CONFIGS[task])}"
        )
    return CONFIGS[task][condition]


def config_for(config: dict[str, Any]) -> BaseConfig:
    """The typed config of a trial dict ({'task':..., 'condition':..., fields...})."""
    cls = config_class(config.get("task", "text"), config.get("condition", "independent"))
    return cls.from_dict(config)


def run_trial(config: dict[str, Any]) -> None:
    """The function trainable handed to Tune: dispatch on (task, condition).

    A sweep over several conditions shares one param space, so a trial drops the keys its own
    condition does not have (the space was validated key by key before the sweep started).
    """
    task, condition = config.get("task", "text"), config.get("condition", "independent")
    names = config_class(task, condition).field_names() | {"task", "condition"}
    TRAINABLES[task][condition]({k: v for k, v in config.items() if k in names})


def evaluate_checkpoint(config: dict[str, Any], ckpt: Any, split: str = "test") -> dict:
    """Metrics of a trial checkpoint on a split (the sweep's final answer uses 'test')."""
    task = config.get("task", "text")
    names = config_class(task, config.get("condition", "independent")).field_names()
    config = {k: v for k, v in config.items() if k in names | {"task", "condition"}}
    return EVALUATORS[task](config, ckpt, split)
