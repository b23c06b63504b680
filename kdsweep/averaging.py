"""Checkpoint averaging: the uniform weight average of several epochs' state dicts.

`average_state_dicts` averages floating-point tensors in float32 and casts the result back to
each tensor's dtype; integer and bool tensors (counters such as BatchNorm's
`num_batches_tracked`) are not averaged but taken from the last member. `select_epochs` turns a
selection spec ("70,75,80" or "last:3") into the epochs to average, checked against the epochs
that have a checkpoint. Pure functions: no files, no Ray, no MLflow.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence

import torch
from torch import Tensor

from kdsweep.errors import KDSweepError

_LAST = re.compile(r"last:(\d+)")
_EPOCHS = re.compile(r"\d+(,\d+)*")


def average_state_dicts(states: Sequence[Mapping[str, Tensor]]) -> dict[str, Tensor]:
    """The uniform average of `states` (same keys, same shapes), key by key.

    Floating-point tensors: mean in float32, cast back to the tensor's dtype. Integer/bool
    tensors: the last member's value. A member whose keys or shapes differ from the first's is
    a `KDSweepError` naming the key.
    """
    if not states:
        raise KDSweepError("average: no checkpoints to average")
    first, last = states[0], states[-1]
    for i, state in enumerate(states[1:], start=1):
        _same_layout(first, state, i)
    out: dict[str, Tensor] = {}
    for key, ref in first.items():
        if not (ref.is_floating_point() or ref.is_complex()):
            out[key] = last[key].clone()
            continue
        wide = torch.complex64 if ref.is_complex() else torch.float32
        total = torch.zeros(ref.shape, dtype=wide)
        for state in states:
            total += state[key].detach().to("cpu", wide)
        out[key] = (total / len(states)).to(ref.dtype)
    return out


def _same_layout(first: Mapping[str, Tensor], other: Mapping[str, Tensor], index: int) -> None:
    missing = sorted(set(first) - set(other))
    extra = sorted(set(other) - set(first))
    if missing or extra:
        key = (missing or extra)[0]
        where = "missing from" if missing else "only in"
        raise KDSweepError(
            f"average: key {key!r} is {where} member {index} "
            f"({len(missing)} missing, {len(extra)} extra keys vs member 0)"
        )
    for key, ref in first.items():
        if tuple(other[key].shape) != tuple(ref.shape):
            raise KDSweepError(
                f"average: key {key!r} has shape {tuple(other[key].shape)} in member {index} "
                f"but {tuple(ref.shape)} in member 0"
            )


def check_spec(spec: str) -> None:
    """Raise a `KDSweepError` unless `spec` is "E1,E2,..." (epochs >= 1) or "last:K" (K >= 1)."""
    text = spec.replace(" ", "")
    last = _LAST.fullmatch(text)
    if last:
        if int(last.group(1)) < 1:
            raise KDSweepError(f"--average: {spec!r}: last:K needs K >= 1")
        return
    if not _EPOCHS.fullmatch(text):
        raise KDSweepError(
            f"--average: {spec!r} is neither a comma list of epochs (70,75,80) nor last:K"
        )
    epochs = [int(e) for e in text.split(",")]
    if min(epochs) < 1:
        raise KDSweepError(f"--average: {spec!r}: epochs start at 1")
    if len(set(epochs)) != len(epochs):
        raise KDSweepError(f"--average: {spec!r} names an epoch twice")


def select_epochs(spec: str, available: Iterable[int]) -> list[int]:
    """The epochs `spec` selects among `available` (the epochs with a checkpoint), ascending.

    "70,75,80": exactly those (an epoch without a checkpoint is an error listing the available
    ones); "last:3": the 3 newest available epochs (fewer available than asked is an error).
    """
    check_spec(spec)
    have = sorted(set(int(e) for e in available))
    shown = ", ".join(map(str, have)) or "none"
    text = spec.replace(" ", "")
    last = _LAST.fullmatch(text)
    if last:
        k = int(last.group(1))
        if k > len(have):
            raise KDSweepError(
                f"--average: {spec!r} asks for {k} checkpoints but only {len(have)} are kept "
                f"(epochs {shown}); train with keep_every=k to keep more"
            )
        return have[-k:]
    wanted = sorted(int(e) for e in text.split(","))
    absent = [e for e in wanted if e not in have]
    if absent:
        raise KDSweepError(
            f"--average: no checkpoint of epoch {', '.join(map(str, absent))}; "
            f"checkpoints kept: epochs {shown}"
        )
    return wanted
