"""Typed trial configs: a dataclass per condition, built from Tune's flat dict.

A misspelt key, a wrong type or an out-of-range value fails here, before any training starts.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import re
import types
import typing
from dataclasses import dataclass, fields
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


@dataclass
class BaseConfig:
    """Fields shared by every trial, whatever the task."""

    seed: int = 0
    epochs: int = 5
    batch_size: int = 32
    grad_accum: int = 1  # micro-batches per optimizer step: effective batch = batch_size x this
    lr: float = 1e-3
    weight_decay: float = 0.01
    warmup_ratio: float = 0.1
    grad_clip: float = 1.0  # max grad norm; 0 disables clipping
    threads: int = 0  # torch threads; 0 = the trial's CPU share (oversubscribing is a 2x slowdown)
    device: str = "auto"  # auto | cpu | cuda
    precision: str = "fp32"  # fp32 | bf16 | fp16 (autocast; GPU only, fp16 uses a grad scaler)
    cache_dir: str = ""  # "" = $KDSWEEP_HOME or ./.kdsweep
    eval_every: int = 1

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
        _positive(self, "epochs", "batch_size")
        _in_range(self, "grad_accum", 1, 1024)
        _in_range(self, "lr", 0.0, 1.0, low_open=True)
        _in_range(self, "weight_decay", 0.0, 1.0)
        _in_range(self, "warmup_ratio", 0.0, 1.0)
        _in_range(self, "grad_clip", 0.0, math.inf)
        _in_range(self, "threads", 0, 1024)
        _positive(self, "eval_every")
        _choice(self, "device", ("auto", "cpu", "cuda"))
        _choice(self, "precision", ("fp32", "bf16", "fp16"))


def _positive(cfg: Any, *names: str) -> None:
    for n in names:
        v = getattr(cfg, n)
        if not v > 0:
            raise KDSweepError(f"field {n!r} must be > 0, got {v!r}")


def _in_range(
    cfg: Any, name: str, lo: float, hi: float, low_open: bool = False, high_open: bool = False
) -> None:
    v = getattr(cfg, name)
    ok = (v > lo if low_open else v >= lo) and (v < hi if high_open else v <= hi)
    if not ok or (isinstance(v, float) and math.isnan(v)):
        lb, rb = "(" if low_open else "[", ")" if high_open else "]"
        raise KDSweepError(f"field {name!r} must be in {lb}{lo}, {hi}{rb}, got {v!r}")


def _choice(cfg: Any, name: str, options: tuple[str, ...]) -> None:
    v = getattr(cfg, name)
    if v not in options:
        raise KDSweepError(f"field {name!r} must be one of {list(options)}, got {v!r}")


# Re-exported for the condition configs.
positive, in_range, choice = _positive, _in_range, _choice
