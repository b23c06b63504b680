"""Conditions by task (one `Condition` declaration each), and the single entry point Tune runs.

`run_trial` builds the trial's typed config (the condition's config class, `from_dict`) and hands
it to the condition's training function: a trainable never parses Tune's dict itself.
"""

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
# Views of the records: the function trainables (dict -> typed config -> training) and the
# config classes, by task and condition.
TRAINABLES: dict[str, dict[str, Any]] = {task: dict(conds) for task, conds in CONDITIONS.items()}
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


def trial_fields(config: dict[str, Any]) -> dict[str, Any]:
    """The keys of a trial's dict that its condition's config takes.

    A sweep over several conditions shares one param space, so a trial drops the keys its own
    condition does not have (the space was validated key by key before the sweep started), and
    a condition-scoped key `<condition>.<field>` (a search space's own params of a condition,
    under Optuna) is its condition's value of that field; other conditions' are dropped.
    """
    task, condition = config.get("task", "text"), config.get("condition", "independent")
    names = config_class(task, condition).field_names() | {"task", "condition"}
    own = {k.split(".", 1)[1]: v for k, v in config.items() if k.startswith(f"{condition}.")}
    return {k: v for k, v in (config | own).items() if k in names}


def run_trial(config: dict[str, Any]) -> None:
    """The function trainable handed to Tune: the trial's typed config, handed to its
    condition's training function."""
    cfg = config_for(trial_fields(config))  # an unknown task or condition fails here, named
    CONDITIONS[config.get("task", "text")][config.get("condition", "independent")].train(cfg)


def evaluate_checkpoint(config: dict[str, Any], ckpt: Any, split: str = "test") -> dict:
    """Metrics of a trial checkpoint on a split (the sweep's final answer uses 'test')."""
    task = config.get("task", "text")
    return EVALUATORS[task](config_for(trial_fields(config)), ckpt, split)
