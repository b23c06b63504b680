"""GPU packing by memory: probe one trial's peak, fit as many trials as the free memory allows.

`--gpus-per-trial auto` (wiring, driver side, before any trial starts):

    peak = probe_peak_memory(step_fn, "cuda:0")        # one trial's forward/backward steps
    free, total = device_memory("cuda:0")
    plan = plan_packing(peak, free, total, max_trials=n_trials)
    print(f"[kdsweep] {plan.message}")                 # "4 trials x 2.1 GiB on a 24 GiB card"
    resources["gpu"] = plan.share

An explicit share: `check_share(share, peak, total, free)` raises KDSweepError when it cannot fit.

Run the probe in a short-lived process (e.g. `run_isolated`) and read `device_memory` after it
exited: the CUDA context a probe creates in the driver would otherwise stay for the whole sweep
and take ~0.3-0.5 GiB from the trials.
"""

from __future__ import annotations

import math
import multiprocessing
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from kdsweep.errors import KDSweepError

GiB = 2**30
# Memory a trial process holds on the card that `max_memory_reserved` does not count: the CUDA
# context (kernels, cuBLAS/cuDNN handles and workspaces). 300-600 MiB on recent drivers and
# cards (larger with lazy-loading off); 512 MiB is a deliberately safe estimate.
CUDA_CONTEXT_BYTES = 512 * 2**20
DEFAULT_MARGIN = 0.10  # fraction of the card kept free (fragmentation, other processes' growth)
_SHARE_STEP = 1e-4  # Ray's precision for fractional resources


@dataclass(frozen=True)
class PackPlan:
    n_trials: int  # trials at a time on one card
    share: float  # --gpus-per-trial value that makes Ray run n_trials at a time
    message: str  # "4 trials x 2.1 GiB on a 24 GiB card"


def gib(n: float) -> str:
    return f"{n / GiB:.1f} GiB"


def _card(total_bytes: int) -> str:
    return f"{total_bytes / GiB:.0f} GiB card"


def probe_peak_memory(
    step_fn: Callable[[], Any],
    device: Any = "cuda",
    steps: int = 2,
    context_bytes: int = CUDA_CONTEXT_BYTES,
    cuda: Any = None,
) -> int:
    """Bytes one trial needs on the card: its allocator's peak over `steps` calls of `step_fn`.

    `step_fn()` is one forward/backward/optimizer step at the trial's batch size and precision,
    with the model and optimizer already on `device`. Two steps by default: the optimizer's state
    (Adam's moments) is allocated during the first. The peak is `max_memory_reserved` (what the
    caching allocator took from the card, fragmentation included, more than
    `max_memory_allocated`) plus `context_bytes` for the CUDA context, which no allocator
    statistic counts. `cuda` defaults to `torch.cuda` (injectable for tests)."""
    if cuda is None:
        import torch

        cuda = torch.cuda
    if not cuda.is_available():
        raise KDSweepError("--gpus-per-trial auto: no CUDA device is visible to measure memory on")
    if steps < 1:
        raise ValueError("probe_peak_memory: steps must be >= 1")
    cuda.synchronize(device)
    cuda.empty_cache()
    cuda.reset_peak_memory_stats(device)
    for _ in range(steps):
        step_fn()
    cuda.synchronize(device)
    peak = max(cuda.max_memory_reserved(device), cuda.max_memory_allocated(device))
    return int(peak + context_bytes)


def device_memory(device: Any = "cuda", cuda: Any = None) -> tuple[int, int]:
    """(free, total) bytes of the card as the driver reports them (all processes counted)."""
    if cuda is None:
        import torch

        cuda = torch.cuda
    free, total = cuda.mem_get_info(device)
    return int(free), int(total)


def _usable(free_bytes: int, total_bytes: int, margin: float) -> float:
    if not 0 <= margin < 1:
        raise ValueError(f"margin must be in [0, 1) (got {margin})")
    return min(free_bytes, total_bytes) - margin * total_bytes


def plan_packing(
    peak_bytes: int,
    free_bytes: int,
    total_bytes: int,
    margin: float = DEFAULT_MARGIN,
    max_trials: int | None = None,
) -> PackPlan:
    """As many concurrent trials of `peak_bytes` as fit the free memory less `margin` x the card.

    `max_trials` caps the count (no point in more slots than trials or CPU slots). Raises
    KDSweepError when not even one trial fits."""
    if peak_bytes <= 0 or total_bytes <= 0:
        raise ValueError("plan_packing: peak_bytes and total_bytes must be > 0")
    usable = _usable(free_bytes, total_bytes, margin)
    n = int(usable // peak_bytes) if usable > 0 else 0
    if n < 1:
        raise KDSweepError(
            f"--gpus-per-trial auto: one trial needs {gib(peak_bytes)} but only "
            f"{gib(max(usable, 0))} of the {_card(total_bytes)} are usable ({gib(free_bytes)} "
            f"free, {margin:.0%} kept as margin); use a smaller batch_size, student or max_len, "
            "or precision=bf16"
        )
    if max_trials is not None:
        n = max(1, min(n, int(max_trials)))
    share = math.floor(1 / n / _SHARE_STEP) * _SHARE_STEP  # n x share <= 1: Ray fits n
    share = round(share, 4)
    noun = "trial" if n == 1 else "trials"
    return PackPlan(n, share, f"{n} {noun} x {gib(peak_bytes)} on a {_card(total_bytes)}")


def trials_per_card(share: float) -> int:
    """How many trials Ray runs at a time on one card at this --gpus-per-trial share."""
    if share <= 0:
        raise KDSweepError(f"--gpus-per-trial: must be > 0 here (got {share:g})")
    return max(1, int(1 / share + 1e-9)) if share <= 1 else 1


def check_share(
    share: float,
    peak_bytes: int,
    total_bytes: int,
    free_bytes: int | None = None,
    margin: float = DEFAULT_MARGIN,
) -> int:
    """Raise KDSweepError (one line) when `share` packs more trials than the card holds.

    Returns the number of trials per card. A share > 1 (whole GPUs) needs one trial per card
    (the trial code uses one device)."""
    n = trials_per_card(share)
    free = total_bytes if free_bytes is None else free_bytes
    usable = _usable(free, total_bytes, margin)
    if n * peak_bytes > usable:
        fit = int(usable // peak_bytes) if usable > 0 else 0
        hint = f"a share of at least {1 / fit:.3g} ({fit} at a time)" if fit else "a smaller batch"
        raise KDSweepError(
            f"--gpus-per-trial {share:g}: {n} trial(s) x {gib(peak_bytes)} = "
            f"{gib(n * peak_bytes)} do not fit the {gib(max(usable, 0))} usable on a "
            f"{_card(total_bytes)} ({gib(free)} free, {margin:.0%} margin); use "
            f"--gpus-per-trial auto or {hint}"
        )
    return n


def _isolated_target(conn, fn, args, kwargs) -> None:  # pragma: no cover - runs in the child
    try:
        conn.send((True, fn(*args, **kwargs)))
    except BaseException as e:  # noqa: BLE001 - sent back and re-raised in the parent
        conn.send((False, f"{type(e).__name__}: {e}"))
    finally:
        conn.close()


def run_isolated(fn: Callable[..., Any], *args: Any, timeout: float = 600, **kwargs: Any) -> Any:
    """fn(*args, **kwargs) in a fresh spawned process (its CUDA context dies with it).

    `fn` must be importable (module level). Errors come back as RuntimeError with the child's
    message; a KDSweepError keeps its type."""
    ctx = multiprocessing.get_context("spawn")
    parent, child = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_isolated_target, args=(child, fn, args, kwargs), daemon=True)
    proc.start()
    child.close()
    try:
        if not parent.poll(timeout):
            raise RuntimeError(f"run_isolated: {getattr(fn, '__name__', fn)} took over {timeout} s")
        ok, value = parent.recv()
    except EOFError:
        proc.join(5)
        raise RuntimeError(f"run_isolated: the child process died (exit {proc.exitcode})") from None
    finally:
        if proc.is_alive():
            proc.join(5)
        if proc.is_alive():
            proc.kill()
            proc.join()
    if not ok:
        if value.startswith("KDSweepError: "):
            raise KDSweepError(value.removeprefix("KDSweepError: "))
        raise RuntimeError(value)
    return value
