"""Typed trial configs: a dataclass per condition, built from Tune's flat dict.

A misspelt key, a wrong type or an out-of-range value fails here, before any training starts.
Each field is documented once, in its dataclass metadata (as TRL does; `param` writes
`field(default=..., metadata={"help": ..., "range": ...})`):

    lr: float = param(1e-3, "peak learning rate (AdamW)", Range(0.0, 1.0, low_open=True))

`help` reaches the sweep scripts' `--help-fields` and docs/configuration.md (`python -m
driver.docs`); `range` and `choices` are checked for every field of every config class here.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import re
import types
import typing
from dataclasses import dataclass, field, fields
from typing import Any, Self

from kdsweep.errors import KDSweepError

# Sweep bookkeeping keys the driver may add to a trial's dict; they are not config fields.
RESERVED_KEYS = frozenset({"task", "condition"})


def _check_type(name: str, value: Any, typ: Any, where: str) -> Any:
    """Coerce YAML/CLI values to the field type (int->float is fine, 'abc'->float is not)."""
    origin = typing.get_origin(typ)
    if origin in (types.UnionType, typing.Union):
        for arg in typing.get_args(typ):
            if arg is type(None) and value is None:
                return None
        typ = next(a for a in typing.get_args(typ) if a is not type(None))
    if typ is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
    elif typ is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str) and re.fullmatch(r"[+-]?\d+", value.strip()):
            return int(value)
    elif typ is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
    elif typ is str:
        if isinstance(value, str):
            return value
        if isinstance(value, int | float) and not isinstance(value, bool):
            return str(value)
    else:
        return value
    raise KDSweepError(
        f"{where}: field {name!r} must be {getattr(typ, '__name__', typ)}, got {value!r}"
    )


@dataclass(frozen=True)
class Range:
    """A field's allowed interval (closed unless `low_open` / `high_open`)."""

    lo: float
    hi: float
    low_open: bool = False
    high_open: bool = False

    def __contains__(self, v: Any) -> bool:
        if isinstance(v, float) and math.isnan(v):
            return False
        return (v > self.lo if self.low_open else v >= self.lo) and (
            v < self.hi if self.high_open else v <= self.hi
        )

    def __str__(self) -> str:
        if self.low_open and self.hi == math.inf and not self.high_open:
            return f"> {self.lo}"
        lb, rb = "(" if self.low_open else "[", ")" if self.high_open else "]"
        return f"in {lb}{self.lo}, {self.hi}{rb}"


POSITIVE = Range(0, math.inf, low_open=True)


def param(
    default: Any, help: str, range: Range | None = None, choices: tuple[str, ...] = ()
) -> Any:
    """A config field documented once: `help` (and the allowed `range` or `choices`, checked by
    BaseConfig) in the dataclass field's metadata."""
    meta: dict[str, Any] = {"help": help}
    if range is not None:
        meta["range"] = range
    if choices:
        meta["choices"] = choices
    return field(default=default, metadata=meta)


@dataclass
class BaseConfig:
    """Fields shared by every trial, whatever the task."""

    seed: int = param(0, "random seed of the student's init and data order")
    epochs: int = param(5, "training epochs", POSITIVE)
    batch_size: int = param(32, "examples per micro-batch", POSITIVE)
    grad_accum: int = param(
        1, "micro-batches per optimizer step: effective batch = batch_size x this", Range(1, 1024)
    )
    lr: float = param(1e-3, "peak learning rate (AdamW)", Range(0.0, 1.0, low_open=True))
    weight_decay: float = param(0.01, "AdamW weight decay", Range(0.0, 1.0))
    warmup_ratio: float = param(
        0.1,
        "share of optimizer steps with a linear LR warm-up (then linear decay)",
        Range(0.0, 1.0),
    )
    grad_clip: float = param(1.0, "max gradient norm; 0 disables clipping", Range(0.0, math.inf))
    threads: int = param(
        0, "torch threads; 0 = the trial's CPU share (oversubscribing is a 2x slowdown)",
        Range(0, 1024),
    )  # fmt: skip
    device: str = param("auto", "where the trial trains (auto: CUDA if present)",
                        choices=("auto", "cpu", "cuda"))  # fmt: skip
    precision: str = param(
        "fp32", "autocast precision (GPU only; fp16 uses a gradient scaler)",
        choices=("fp32", "bf16", "fp16"),
    )  # fmt: skip
    cache_dir: str = param("", 'data and teacher cache; "" = $KDSWEEP_HOME or ./.kdsweep')
    eval_every: int = param(1, "evaluate on dev every k epochs (and at the last)", POSITIVE)

    @classmethod
    def from_dict(cls, d: dict[str, Any], where: str = "config") -> Self:
        """Build from Tune's dict; unknown keys and bad values raise KDSweepError."""
        known = {f.name: f for f in fields(cls)}
        hints = typing.get_type_hints(cls)
        kwargs = {}
        for key, value in d.items():
            if key in RESERVED_KEYS:
                continue
            if key not in known:
                close = difflib.get_close_matches(key, list(known), n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                raise KDSweepError(
                    f"{where}: unknown key {key!r} for {cls.__name__}{hint}; "
                    f"valid keys: {', '.join(sorted(known))}"
                )
            kwargs[key] = _check_type(key, value, hints[key], where)
        try:
            return cls(**kwargs)
        except KDSweepError as e:
            raise KDSweepError(f"{where}: {e}") from None

    @classmethod
    def field_names(cls) -> set[str]:
        return {f.name for f in fields(cls)}

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @property
    def effective_batch_size(self) -> int:
        """Examples per optimizer step (batch_size x grad_accum)."""
        return self.batch_size * self.grad_accum

    def __post_init__(self) -> None:
        """Every field's declared `range` / `choices` (subclasses add cross-field checks)."""
        for f in fields(self):
            if "range" in f.metadata:
                _in(self, f.name, f.metadata["range"])
            if "choices" in f.metadata:
                _choice(self, f.name, f.metadata["choices"])

    @classmethod
    def field_docs(cls) -> list[dict[str, str]]:
        """One row per field (name, type, default, range, help): the reference table and
        `--help-fields` read these; a field without help is a bug (tests/test_configs.py)."""
        hints = typing.get_type_hints(cls)
        rows = []
        for f in fields(cls):
            if f.name not in cls.field_names():
                continue
            allowed = f.metadata.get("range") or f.metadata.get("choices") or ""
            if isinstance(allowed, tuple):
                allowed = " | ".join(allowed)
            rows.append(
                {
                    "field": f.name,
                    "type": getattr(hints[f.name], "__name__", str(hints[f.name])),
                    "default": repr(f.default),
                    "range": str(allowed),
                    "help": f.metadata.get("help", ""),
                }
            )
        return rows


@dataclass
class Temperature:
    """Mixin: a softmax temperature for logit KD, and no loss weight with it (each condition
    names its own weights: soft KD's `alpha`, Decoupled KD's `alpha`/`beta`)."""

    temperature: float = param(
        2.0,
        "softmax temperature T of teacher and student logits (KD terms scaled by T^2)",
        Range(0.0, 100.0, low_open=True),
    )


def _in(cfg: Any, name: str, rng: Range) -> None:
    v = getattr(cfg, name)
    if v not in rng:
        raise KDSweepError(f"field {name!r} must be {rng}, got {v!r}")


def _positive(cfg: Any, *names: str) -> None:
    for n in names:
        _in(cfg, n, POSITIVE)


def _in_range(
    cfg: Any, name: str, lo: float, hi: float, low_open: bool = False, high_open: bool = False
) -> None:
    _in(cfg, name, Range(lo, hi, low_open, high_open))


def _choice(cfg: Any, name: str, options: tuple[str, ...]) -> None:
    v = getattr(cfg, name)
    if v not in options:
        raise KDSweepError(f"field {name!r} must be one of {list(options)}, got {v!r}")


# Re-exported for the condition configs' cross-field checks.
positive, in_range, choice = _positive, _in_range, _choice
