"""CUDA out-of-memory recovery around a trial loop (text and speech share it).

    @recover_oom
    def run_text_trial(cfg, loss_fn): ...

At the start of each attempt the trial trains with the batch an earlier OOM left
(`kdsweep.oom.resume_batch`: half the batch, twice the accumulation, the same effective batch)
and reports it as `oom_*` metrics (`oom_metrics()`, which the MLflow callback turns into tags).
An OOM is recorded in the trial's folder and re-raised: Tune's FailureConfig retries the trial
from its last checkpoint, and the retry reads the halved batch. At batch size 1 the trial ends
as an error (`OutOfMemoryAtBatchOne`) with that reason. GPU memory is released when the loop
returns or fails (a reused Ray actor starts its next trial with an empty CUDA cache).

Before all that the trial's device is set up from its GPU share (`kdsweep.gpu.
setup_trial_device`): no share, no CUDA (the devices are hidden); a share, the allocator capped
at it, so a trial over its share runs out of memory itself instead of its neighbour.
"""

from __future__ import annotations

import dataclasses
import functools
import sys
from collections.abc import Callable
from typing import Any, TypeVar

from kdsweep.gpu import setup_trial_device
from kdsweep.oom import (
    is_cuda_oom,
    load_oom_state,
    oom_tags,
    record_oom,
    release_gpu_memory,
    resume_batch,
)
from trainables import tune_io

F = TypeVar("F", bound=Callable[..., Any])


def recover_oom(run: F) -> F:
    """Wrap `run(cfg, ...)` (cfg: a config with batch_size and grad_accum) with OOM recovery."""

    @functools.wraps(run)
    def guarded(cfg: Any, *args: Any, **kwargs: Any) -> Any:
        setup_trial_device(tune_io.gpu_share())  # before anything touches CUDA
        where = tune_io.trial_dir()
        try:
            if where is None:  # outside Tune: no state to retry with
                return run(cfg, *args, **kwargs)
            bs, accum = resume_batch(where, cfg.batch_size, cfg.grad_accum)
            if (bs, accum) != (cfg.batch_size, cfg.grad_accum):
                cfg = dataclasses.replace(cfg, batch_size=bs, grad_accum=accum)
            before = tune_io.reported()[0]
            try:
                return run(cfg, *args, **kwargs)
            except Exception as exc:
                if not is_cuda_oom(exc):
                    raise
                epoch = _epoch_in_progress(where, before)
                state = record_oom(where, bs, accum, exc, epoch=epoch)  # raises at batch 1
                print(
                    f"[kdsweep] trial {tune_io.trial_id()}: CUDA out of memory at batch_size "
                    f"{bs}; retrying from its last checkpoint at batch_size {state.batch_size} x "
                    f"grad_accum {state.grad_accum}",
                    file=sys.stderr,
                )
                raise
        finally:  # a reused Ray actor starts its next trial with an empty CUDA cache (a failed
            release_gpu_memory()  # attempt's actor is not reused: its process frees all)

    return guarded  # type: ignore[return-value]


def _epoch_in_progress(where: Any, reports_before: int) -> int | None:
    """The (1-based) epoch an OOM hit: the one after this attempt's last report; without one,
    the epoch of the previous OOM (a retry resumes from the checkpoint before it); else None."""
    n, last = tune_io.reported()
    if n > reports_before:
        return (last or 0) + 1
    state = load_oom_state(where)
    return state.history[-1].get("epoch") if state and state.history else None


def oom_metrics() -> dict[str, Any]:
    """The trial's OOM recovery as metrics (`oom_batch_size`, `oom_grad_accum`, ...); {} when
    it never ran out of memory (or runs outside Tune)."""
    where = tune_io.trial_dir()
    return oom_tags(load_oom_state(where)) if where is not None else {}
