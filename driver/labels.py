"""Short trial labels, one helper for the sweep's table, its MLflow run names and the report:
`describe({"condition": "soft", "temperature": 4.0, "student": "L2-H128"}, ["temperature"])`
is "soft T=4 L2-H128"."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import PurePath
from typing import Any

# Short names of the params that label most sweeps: "soft T=4 a=0.9 L2-H128 s0".
SHORT = {"temperature": "T", "alpha": "a", "seed": "s", "lr": "lr", "data_subset": "n"}
# Never a `key=value` part of a label: the condition leads it, the size and the seed close it.
OWN_PLACE = ("condition", "student", "seed")


def short(key: str) -> str:
    """The short name of a param in a label (`temperature` -> `T`)."""
    return SHORT.get(key, key)


def label(
    condition: str, params: Iterable[tuple[str, Any]], size: str = "", seed: int | None = None
) -> str:
    """'<condition> <k>=<v> ... <size> [s<seed>]'; floats to 3 significant digits."""
    parts = [str(condition)]
    for k, v in params:
        if isinstance(v, float):
            v = f"{v:.3g}"
        parts.append(f"{short(k)}={v}")
    parts.append(str(size))
    if seed is not None:
        parts.append(f"s{seed}")
    return " ".join(p for p in parts if p)


def describe(config: dict[str, Any], varied: list[str]) -> str:
    """Run name that says what the trial is: 'soft T=4 a=0.9 L2-H128 s0'."""
    size = config.get("student") or (  # asr: L<layers>-H<hidden>
        f"L{config['layers']}-H{config['hidden']}" if "hidden" in config else ""
    )
    if config.get("student_init") == "teacher" and "student_layers" in config:
        size = f"teacher-L{config['student_layers']}"  # lm: the teacher's own layers
    if isinstance(size, str) and size.startswith("/"):  # a model directory: its name
        size = PurePath(size).name or size
    return label(
        config.get("condition", "?"),
        [(k, config.get(k)) for k in varied if k not in OWN_PLACE],
        size,
        config.get("seed", 0) if "seed" in varied else None,
    )
