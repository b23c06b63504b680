"""What a condition is: one record (trainable + typed config), and what it needs from its teacher.

    CONDITIONS = {"soft": Condition(soft, SoftConfig), ...}   # trainables/text/trainable.py, asr.py

The config declares the teacher outputs it reads once, as its `needs` property (a `Needs`); the
driver's prepare step and the trial both read it from there.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from kdsweep.config import BaseConfig


@dataclass(frozen=True)
class Needs:
    """Which cached teacher outputs a condition reads (nothing: no teacher at all)."""

    logits: bool = False  # teacher logits (text) / frame posteriors (speech)
    transcripts: bool = False  # speech: the teacher's greedy transcripts as CTC targets
    hidden: bool = False  # text: hidden states of the mapped teacher layers
    attention: bool = False  # text: attention maps of the mapped teacher layers
    hidden_layers: tuple[int, ...] = ()  # speech: 1-based teacher layers, one per student layer
    project: bool = False  # learn Linear(student width -> teacher width) per mapped layer
    live_teacher: bool = False  # lm on_policy: the teacher runs inside the trial (GPU probe)

    @property
    def features(self) -> tuple[str, ...]:
        """The cached text teacher features read ("hidden", "attention"), in that order."""
        return tuple(k for k in ("hidden", "attention") if getattr(self, k))


@dataclass(frozen=True)
class Condition:
    """One condition: the function trainable Tune runs and the typed config it builds."""

    trainable: Callable[[dict[str, Any]], None]
    config: type[BaseConfig]


def transfer_capable(base: type[BaseConfig]) -> list[str]:
    """Names of the config classes under `base` (itself included) that accept a transfer set
    (`TRANSFER_OK`): error messages list these instead of a hand-kept list."""
    seen: list[type] = []
    todo = [base]
    while todo:
        cls = todo.pop(0)
        if cls not in seen:
            seen.append(cls)
            todo.extend(cls.__subclasses__())
    return [c.__name__ for c in seen if getattr(c, "TRANSFER_OK", False)]
