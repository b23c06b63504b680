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
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from kdsweep.errors import KDSweepError, NonFiniteLossError

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
    context_bytes: int | None = None,
    cuda: Any = None,
    ready: Callable[[], bool] | None = None,
    max_steps: int = 32,
) -> int:
    """Bytes one trial needs on the card: its allocator's peak over the steps of `step_fn`.

    `step_fn()` is one forward/backward/optimizer step at the trial's batch size and precision,
    with the model and optimizer already on `device`. At least `steps` steps, and then as many
    as it takes for `ready()` to be true (the optimizer holds its state: under fp16 the
    GradScaler skips the steps whose gradients overflowed, and AdamW allocates its moments only
    at the first step taken), plus one step after that (moments, gradients and activations at
    once). The peak is `max_memory_reserved` (what the caching allocator took from the card,
    fragmentation included) plus the CUDA context, which no allocator statistic counts:
    `context_bytes`, else measured (`context_memory`), else `CUDA_CONTEXT_BYTES`. `cuda`
    defaults to `torch.cuda` (injectable for tests)."""
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
    done, ready_at = 0, None
    while True:
        step_fn()
        done += 1
        if ready_at is None and (ready is None or ready()):
            ready_at = done
        if done >= steps and ready_at is not None and done > ready_at:
            break
        if done >= max_steps:
            raise KDSweepError(
                f"memory probe: the optimizer took no step in {max_steps} steps (every fp16 "
                "step overflowed?); use precision=bf16 or fp32, or a lower lr"
            )
    cuda.synchronize(device)
    peak = max(cuda.max_memory_reserved(device), cuda.max_memory_allocated(device))
    if context_bytes is None:
        context_bytes = context_memory(cuda.memory_reserved(device)) or CUDA_CONTEXT_BYTES
    return int(peak + context_bytes)


def context_memory(reserved_bytes: int, used_fn: Callable[[], int | None] | None = None) -> int:
    """This process's CUDA context in bytes: what the driver says the process uses on the card
    (`nvidia-smi`, by process id) less what its caching allocator holds; 0 when that is not
    known (no nvidia-smi, or a container whose process ids the driver does not see)."""
    used = (used_fn or _process_used_bytes)()
    return max(0, int(used) - int(reserved_bytes)) if used else 0


def _process_used_bytes() -> int | None:
    import subprocess

    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits"],
            capture_output=True, text=True, timeout=20, check=True,
        ).stdout  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return None
    rows = [line.split(",") for line in out.splitlines()]
    mine = [r for r in rows if len(r) == 2 and r[0].strip() == str(os.getpid())]
    return sum(int(m[1]) for m in mine) * 2**20 if mine else None


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
    except (KDSweepError, NonFiniteLossError) as e:  # the user's errors keep their type
        conn.send((False, e))
    except BaseException as e:  # noqa: BLE001 - sent back and re-raised in the parent
        conn.send((False, f"{type(e).__name__}: {e}"))
    finally:
        conn.close()


def run_isolated(fn: Callable[..., Any], *args: Any, timeout: float = 600, **kwargs: Any) -> Any:
    """fn(*args, **kwargs) in a fresh spawned process (its CUDA context dies with it).

    `fn` must be importable (module level). Errors come back as RuntimeError with the child's
    message; a KDSweepError or NonFiniteLossError keeps its type (and message)."""
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
        if isinstance(value, BaseException):
            raise value
        if value.startswith("KDSweepError: "):
            raise KDSweepError(value.removeprefix("KDSweepError: "))
        raise RuntimeError(value)
    return value


# ---------------------------------------------------------------- the trial's device
def setup_trial_device(gpu_share: float | None, environ: Any = None, cuda: Any = None) -> str:
    """Call first thing in a trial, before anything touches CUDA. Returns what it did.

    No GPU share (0): the trial never touches CUDA. Ray 2.60 no longer empties
    CUDA_VISIBLE_DEVICES for tasks that ask for no GPU, so `device=auto` would put the trial on
    the card unplanned; hiding the devices makes `auto` pick the CPU (and `device=cuda` a clear
    error). A share: the allocator may grow in place (`expandable_segments`, less fragmentation
    among packed trials) and is capped at the share of the card (`limit_memory`), so a trial
    that outgrows its share is the one that runs out of memory and backs off, not its
    neighbour. `gpu_share` None (outside Tune): nothing changes."""
    environ = os.environ if environ is None else environ
    if gpu_share is None:
        return "unchanged"
    if gpu_share <= 0:
        environ["CUDA_VISIBLE_DEVICES"] = ""
        return "hidden"
    environ.setdefault("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")
    if cuda is None:
        import torch

        cuda = torch.cuda
    if not cuda.is_available():
        return "no cuda"
    fraction = limit_memory(gpu_share, cuda=cuda)
    return f"limited to {fraction:.3f}" if fraction is not None else "whole card"


def limit_memory(
    share: float, device: int = 0, context_bytes: int = CUDA_CONTEXT_BYTES, cuda: Any = None
) -> float | None:
    """Cap this process's caching allocator at its share of the card less the CUDA context
    (which the cap does not count): `share` x total - context, as a fraction of the card.
    None for a whole card (share >= 1): nothing to share."""
    if share >= 1:
        return None
    if cuda is None:
        import torch

        cuda = torch.cuda
    total = cuda.get_device_properties(device).total_memory
    fraction = max(0.01, (share * total - context_bytes) / total)
    cuda.set_per_process_memory_fraction(fraction, device)
    return fraction


# ---------------------------------------------------------------- the card vs the torch build
_ARCH = re.compile(r"^(sm|compute)_(\d+)([a-z]?)$")


def arch_supported(capability: tuple[int, int], arch_list: list[str]) -> bool:
    """Whether a build with kernels for `arch_list` (torch.cuda.get_arch_list()) runs on a card
    of compute `capability`: a cubin sm_XY runs on the same major X at minor >= Y; PTX
    compute_XY is compiled for any card >= X.Y; an arch-specific sm_XYa only on X.Y."""
    major, minor = capability
    for arch in arch_list:
        m = _ARCH.match(arch)
        if not m:
            continue
        kind, digits, suffix = m.groups()
        a_major, a_minor = int(digits[:-1]), int(digits[-1])
        if suffix == "a" and (a_major, a_minor) != (major, minor):
            continue
        if kind == "sm" and a_major == major and a_minor <= minor:
            return True
        if kind == "compute" and (a_major, a_minor) <= (major, minor):
            return True
    return False


TORCH_INDEX_HINT = (
    "install a torch build with kernels for it (scripts/setup.sh: KDSWEEP_TORCH_INDEX="
    "https://download.pytorch.org/whl/cu126 for Pascal/Volta cards), or run on the CPU with "
    "--gpus-per-trial 0"
)


def check_cuda_build(precisions: Any = (), cuda: Any = None, has_smi: bool | None = None) -> str:
    """Start-up check of the card(s) against this torch build; returns one line to print.

    Raises KDSweepError (one line) when a visible card has no kernels in this build ("no kernel
    image is available" otherwise, at the first trial's first step) or when bf16 is asked for
    on a card that only emulates it (slow, and not what a bf16 result means elsewhere). A card
    that `nvidia-smi` sees but torch cannot use (a driver older than the build's CUDA) is said
    in the line, instead of a silent CPU run."""
    if cuda is None:
        import torch

        cuda = torch.cuda
    if not cuda.is_available():
        import shutil

        smi = shutil.which("nvidia-smi") is not None if has_smi is None else has_smi
        if smi:
            need = " (>= 580.65.06 for CUDA 13.0)" if _cuda_version().startswith("13") else ""
            return (
                "warning: nvidia-smi sees a GPU but this torch build cannot use it (its CUDA "
                f"{_cuda_version()} needs a newer NVIDIA driver{need}?): trials run on the CPU"
            )
        return ""
    arch_list = list(cuda.get_arch_list())
    lines = []
    for i in range(cuda.device_count()):
        name, cap = cuda.get_device_name(i), tuple(cuda.get_device_capability(i))
        sm = f"sm_{cap[0]}{cap[1]}"
        if not arch_supported(cap, arch_list):
            raise KDSweepError(
                f"GPU {i} ({name}, {sm}) is not supported by this torch build (CUDA "
                f"{_cuda_version()}, kernels for {', '.join(arch_list)}): {TORCH_INDEX_HINT}"
            )
        lines.append(f"GPU {i} {name} ({sm})")
    if "bf16" in set(precisions) and not cuda.is_bf16_supported(including_emulation=False):
        raise KDSweepError(
            f"field 'precision': bf16 needs a card with native bf16 (compute capability 8.0 or "
            f"newer); {lines[0] if lines else 'this card'} only emulates it: use fp16 or fp32"
        )
    return f"{'; '.join(lines)}: supported by torch's CUDA {_cuda_version()} build"


def _cuda_version() -> str:
    import torch

    return str(torch.version.cuda)
