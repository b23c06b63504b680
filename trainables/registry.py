"""Conditions by task (one `Condition` record each), and the single entry point Tune runs."""

from __future__ import annotations

from typing import Any

from kdsweep.config import BaseConfig
from kdsweep.errors import KDSweepError
from trainables.conditions import Condition
from trainables.lm import trainable as lm
from trainables.lm.loop import evaluate_lm_checkpoint
from trainables.speech import trainable as asr
from trainables.speech.loop import evaluate_asr_checkpoint
from trainables.text import trainable as text
from trainables.text.loop import evaluate_text_checkpoint

CONDITIONS: dict[str, dict[str, Condition]] = {
    "text": text.CONDITIONS,
    "asr": asr.CONDITIONS,
    "lm": lm.CONDITIONS,
}
# Views of the records: the trainables and the config classes by task and condition.
TRAINABLES: dict[str, dict[str, Any]] = {
    task: {name: c.trainable for name, c in conds.items()} for task, conds in CONDITIONS.items()
}
CONFIGS: dict[str, dict[str, type[BaseConfig]]] = {
    task: {name: c.config for name, c in conds.items()} for task, conds in CONDITIONS.items()
}
EVALUATORS: dict[str, Any] = {
    "text": evaluate_text_checkpoint,
    "asr": evaluate_asr_checkpoint,
    "lm": evaluate_lm_checkpoint,
}


def config_class(task: str, condition: str) -> type[BaseConfig]:
    if task not in CONDITIONS:
        raise KDSweepError(f"field 'task': unknown task {task!r}; choose from {sorted(CONDITIONS)}")
    if condition not in CONDITIONS[task]:
        raise KDSweepError(
            f"field 'condition': unknown condition {condition!r} for task {task!r}; "
            f"choose from {sorted(CONDITIONS[task])}"
        )
    return CONDITIONS[task][condition].config


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
    CONDITIONS[task][condition].trainable({k: v for k, v in config.items() if k in names})


def evaluate_checkpoint(config: dict[str, Any], ckpt: Any, split: str = "test") -> dict:
    """Metrics of a trial checkpoint on a split (the sweep's final answer uses 'test')."""
    task = config.get("task", "text")
    names = config_class(task, config.get("condition", "independent")).field_names()
    cfg = config_for({k: v for k, v in config.items() if k in names | {"task", "condition"}})
    return EVALUATORS[task](cfg, ckpt, split)
