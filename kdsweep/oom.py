"""CUDA out-of-memory recovery: halve the batch, keep the effective batch, resume from a checkpoint.

A trial that runs out of GPU memory does not end as an error at once. Wiring (trial side, in the
training kernel; `trial_dir` is the trial's own directory, stable across Tune's retries and across
a driver resume, e.g. `ray.tune.get_context().get_trial_dir()`, not a checkpoint folder):

    bs, accum = resume_batch(trial_dir, cfg.batch_size, cfg.grad_accum)   # at trial start
    try:
        train(bs, accum)                                                  # resumes its checkpoint
    except Exception as exc:
        if not is_cuda_oom(exc):
            raise
        state = record_oom(trial_dir, bs, accum, exc, epoch=epoch)  # raises at batch size 1
        raise                       # Tune's FailureConfig retries from the last checkpoint

The retried trial (a new actor: the failed one's process and its GPU memory are gone) calls
`resume_batch` again and gets the halved batch. An in-process retry instead (no Tune retry)
must call `release_gpu_memory()` only after leaving the `except` block: until then the
traceback keeps the failed step's tensors alive. Each halving costs one
of Tune's retries: `FailureConfig(max_failures=...)` must allow log2(batch_size) of them (5 for a
batch of 32) on top of the retries kept for other failures. At batch size 1 `record_oom` writes a
final record and raises `OutOfMemoryAtBatchOne`; a retry of that trial fails again at once in
`resume_batch`, so no training is redone. `oom_tags(state)` gives the MLflow params/tags.
"""

from __future__ import annotations

import gc
import json
import os
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from kdsweep.errors import KDSweepError

T = TypeVar("T")
STATE_FILE = "oom_state.json"
_OOM_MESSAGES = ("cuda out of memory", "cuda error: out of memory", "cublas_status_alloc_failed")


class OutOfMemoryAtBatchOne(RuntimeError):
    """The trial ran out of GPU memory at batch size 1: nothing left to halve."""


class OutOfMemoryInPass(RuntimeError):
    """A pass with its own batch size (evaluation, attributions, teacher outputs) ran out of
    GPU memory even at batch size 1 (`backoff`): not the training batch's fault."""


def is_cuda_oom(exc: BaseException) -> bool:
    """True for torch.cuda.OutOfMemoryError or a RuntimeError saying CUDA ran out of memory.

    Follows the `raise ... from` / during-handling chain (an OOM wrapped by another error)."""
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        if isinstance(cur, OutOfMemoryInPass):  # its own back-off is spent: halving the
            return False  # training batch would not help, and its message says so
        if _oom_type(cur):
            return True
        if isinstance(cur, RuntimeError) and any(m in str(cur).lower() for m in _OOM_MESSAGES):
            return True
        cur = cur.__cause__ or (None if cur.__suppress_context__ else cur.__context__)
    return False


def _oom_type(exc: BaseException) -> bool:
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a dependency
        return False
    return isinstance(exc, torch.cuda.OutOfMemoryError)


def halve_batch(batch_size: int, grad_accum: int) -> tuple[int, int]:
    """At least half the batch with the same effective batch (batch_size x grad_accum).

    The new batch size is the largest divisor of the effective batch that is at most half the
    batch size (32 x 1 -> 16 x 2 -> 8 x 4; 24 x 1 -> 12 x 2 -> 6 x 4 -> 3 x 8 -> 1 x 24), so
    memory at least halves each retry and never more retries are needed than log2(batch_size).
    Raises OutOfMemoryAtBatchOne at batch size 1, KDSweepError for a batch size below 1."""
    _check(batch_size, grad_accum)
    if batch_size == 1:
        raise OutOfMemoryAtBatchOne(
            f"out of memory at batch size 1 (grad_accum {grad_accum}): the model, optimizer and "
            "one example do not fit this GPU share; use a larger --gpus-per-trial share, fewer "
            "trials at a time, a smaller student or max_len, or precision=bf16"
        )
    effective = batch_size * grad_accum
    new = max(d for d in range(1, batch_size // 2 + 1) if effective % d == 0)
    return new, effective // new


def _check(batch_size: int, grad_accum: int) -> None:
    if int(batch_size) != batch_size or batch_size < 1:
        raise KDSweepError(f"field 'batch_size': must be an integer >= 1 (got {batch_size!r})")
    if int(grad_accum) != grad_accum or grad_accum < 1:
        raise KDSweepError(f"field 'grad_accum': must be an integer >= 1 (got {grad_accum!r})")


@dataclass
class OOMState:
    """What a (re)started trial must use after out-of-memory errors, and how it got there."""

    batch_size: int  # current (already halved) batch size
    grad_accum: int
    gave_up: str = ""  # non-empty: the reason the trial ended (OOM at batch size 1)
    history: list[dict[str, Any]] = field(default_factory=list)

    @property
    def effective_batch(self) -> int:
        return self.batch_size * self.grad_accum


def load_oom_state(trial_dir: str | Path) -> OOMState | None:
    """The trial's `oom_state.json`, or None when it never ran out of memory."""
    path = Path(trial_dir) / STATE_FILE
    if not path.is_file():
        return None
    try:
        raw = json.loads(path.read_text())
        state = OOMState(
            batch_size=int(raw["batch_size"]),
            grad_accum=int(raw["grad_accum"]),
            gave_up=str(raw.get("gave_up", "")),
            history=list(raw.get("history", [])),
        )
        _check(state.batch_size, state.grad_accum)
    except (ValueError, KeyError, TypeError) as e:  # JSONDecodeError is a ValueError
        raise KDSweepError(
            f"{path}: not a valid OOM record ({type(e).__name__}: {e}); delete it to start "
            "the trial at its configured batch size"
        ) from e
    return state


def save_oom_state(trial_dir: str | Path, state: OOMState) -> Path:
    """Write the record atomically (a kill mid-write leaves the old one)."""
    path = Path(trial_dir) / STATE_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(asdict(state), indent=1))
    os.replace(tmp, path)
    return path


def record_oom(
    trial_dir: str | Path,
    batch_size: int,
    grad_accum: int,
    exc: BaseException,
    epoch: int | None = None,
) -> OOMState:
    """Record an OOM at (batch_size, grad_accum) and return the halved state (already saved).

    At batch size 1 the record says why the trial gave up, then OutOfMemoryAtBatchOne is raised."""
    state = load_oom_state(trial_dir) or OOMState(batch_size, grad_accum)
    event = {
        "batch_size": batch_size,
        "grad_accum": grad_accum,
        "epoch": epoch,
        "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "error": (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300],
    }
    state.history.append(event)
    try:
        state.batch_size, state.grad_accum = halve_batch(batch_size, grad_accum)
    except OutOfMemoryAtBatchOne as give_up:
        state.batch_size, state.grad_accum = batch_size, grad_accum
        state.gave_up = f"{give_up}: {event['error']}"
        save_oom_state(trial_dir, state)
        raise OutOfMemoryAtBatchOne(state.gave_up) from exc
    save_oom_state(trial_dir, state)
    return state


def resume_batch(trial_dir: str | Path, batch_size: int, grad_accum: int = 1) -> tuple[int, int]:
    """The (batch_size, grad_accum) a starting or retried trial should train with.

    The configured values unless an earlier attempt ran out of memory; raises
    OutOfMemoryAtBatchOne when an earlier attempt already gave up at batch size 1."""
    _check(batch_size, grad_accum)
    state = load_oom_state(trial_dir)
    if state is None:
        return batch_size, grad_accum
    if state.gave_up:
        raise OutOfMemoryAtBatchOne(state.gave_up)
    return state.batch_size, state.grad_accum


def oom_tags(state: OOMState | None) -> dict[str, Any]:
    """MLflow params/tags of a trial's OOM recovery ({} when none happened)."""
    if state is None or not state.history:
        return {}
    first = state.history[0]
    tags = {
        "oom_recoveries": len(state.history) - (1 if state.gave_up else 0),
        "oom_batch_size": state.batch_size,
        "oom_grad_accum": state.grad_accum,
        "oom_from_batch_size": first["batch_size"],
    }
    if state.gave_up:
        tags["error"] = state.gave_up[:500]
    return tags


def release_gpu_memory() -> None:
    """Free what a finished trial left in this process (reused Ray actors): objects, CUDA cache."""
    gc.collect()
    try:
        import torch
    except ImportError:  # pragma: no cover
        return
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.ipc_collect()


def backoff(run: Callable[[int], T], batch_size: int, what: str) -> T:
    """`run(batch_size)`, halving `batch_size` after each CUDA out-of-memory error until it fits.

    For a pass that has its own batch size (dev evaluation, Integrated Gradients, a teacher's
    logits or features, hidden states): the training batch is not what failed there, so the
    trial's OOM recovery (`record_oom`) must not halve it. Cached blocks are released between
    tries (outside the `except` block: until it is left, the traceback keeps the failed try's
    tensors alive). At batch size 1 it raises OutOfMemoryInPass naming `what`, which the
    trial's recovery does not take for a training-batch OOM."""
    bs = max(1, int(batch_size))
    while True:
        failed: BaseException | None = None
        try:
            return run(bs)
        except Exception as exc:
            if not is_cuda_oom(exc):
                raise
            failed = _first_line(exc)  # type: ignore[assignment]
        release_gpu_memory()
        if bs == 1:
            raise OutOfMemoryInPass(
                f"out of memory in {what} even at batch size 1 ({failed}); the model does not "
                "fit this GPU share: use a larger --gpus-per-trial share or a smaller model"
            )
        print(
            f"[kdsweep] CUDA out of memory in {what} at batch size {bs}; retrying at {bs // 2}",
            file=sys.stderr,
        )
        bs //= 2


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
