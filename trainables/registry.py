"""Conditions by task, as plain dicts, and the single entry point Tune runs."""

from __future__ import annotations

from typing import Any

from kdsweep.config import BaseConfig
from kdsweep.errors import KDSweepError
from trainables.text import TEXT_CONFIGS, TEXT_TRAINABLES

TRAINABLES: dict[str, dict[str, Any]] = {"text": TEXT_TRAINABLES}
CONFIGS: dict[str, dict[str, type[BaseConfig]]] = {"text": TEXT_CONFIGS}


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
    """The function trainable handed to Tune: dispatch on (task, condition)."""
    task, condition = config.get("task", "text"), config.get("condition", "independent")
    config_class(task, condition)  # clear error for an unknown task/condition
    TRAINABLES[task][condition](config)
