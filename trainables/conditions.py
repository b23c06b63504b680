"""What a condition is: one declaration, its training function, and what it needs from its teacher.

    def soft(cfg: SoftConfig) -> None: ...                 # trainables/text/trainable.py
    CONDITIONS = {"soft": Condition(soft), ...}

The function's annotated config class is the condition's typed config: `Condition` builds it
from Tune's dict (`from_dict`: unknown keys and bad values fail) and hands it to the function.
The config declares the teacher outputs it reads once, as its `needs` property (a `Needs`); the
driver's prepare step and the trial both read it from there. The loss receives a typed batch
(`trainables.text.loop.TextBatch`, `kdsweep.speech.teacher.SpeechBatch`) and an `Aux`.
"""

from __future__ import annotations

import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from torch import nn

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
    """One condition: a training function of one typed config (its annotated parameter)."""

    train: Callable[[Any], None]

    @property
    def config(self) -> type[BaseConfig]:
        """The config class the training function takes (its first parameter's annotation)."""
        hints = typing.get_type_hints(self.train)
        hints.pop("return", None)
        cls = next(iter(hints.values()), None)
        if not (isinstance(cls, type) and issubclass(cls, BaseConfig)):
            raise TypeError(f"{self.train.__name__}(cfg: <a BaseConfig subclass>) expected")
        return cls

    def __call__(self, config: dict[str, Any]) -> None:
        """The function trainable: the typed config of Tune's dict, trained."""
        self.train(self.config.from_dict(config))


class Aux(nn.Module):
    """Trainable modules beside the student that the loss reads (saved with it as `aux.*`):
    `proj`, one Linear (student width -> teacher width) per matched layer, or None."""

    def __init__(self, proj: nn.ModuleList | None = None):
        super().__init__()
        self.proj = proj


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
