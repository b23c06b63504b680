"""Trial checkpoints shared by every task's epoch loop (text, speech).

One checkpoint directory holds:
    model.safetensors   the model's weights (student + auxiliary heads)
    state.pt            optimizer, scheduler, grad scaler, RNG states, epoch, seconds trained:
                        plain tensors and numbers, loaded with weights_only=True (no pickled
                        code from a checkpoint ever runs)
    config.json         the trial's typed config, to rebuild the model for evaluation
"""

from __future__ import annotations

import errno
import json
import math
import shutil
import sys
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from kdsweep.errors import KDSweepError


def save_state(
    ckpt: Path,
    model,
    opt,
    sched,
    scaler,
    epoch: int,
    train_seconds: float,
    cfg: Any,
    metrics: dict[str, Any] | None = None,
) -> None:
    """Write weights, training state and config into the directory `ckpt`.

    The weights' header also names the epoch and the epoch's numeric metrics
    (`checkpoint_info`), so a checkpoint says what it holds without loading it.

    A failed write (disk full, quota, I/O error) removes the half-written directory and raises
    a `KDSweepError` saying so: the previous epoch's checkpoint, already in the trial's storage,
    is untouched, and Tune's retry (or the next run) resumes from it.
    """
    ckpt = Path(ckpt)
    try:
        weights = {k: v.contiguous() for k, v in model.state_dict().items()}
        # The epoch also goes into the weights' header: a checkpoint dir overwritten by a later
        # epoch's copy that a kill cut short would otherwise pair epoch-N weights with epoch-M
        # optimizer state and still load.
        numeric = {
            k: float(v)
            for k, v in (metrics or {}).items()
            if isinstance(v, int | float) and not isinstance(v, bool)
        }
        header = {"epoch": str(epoch), "metrics": json.dumps(numeric)}
        save_file(weights, str(ckpt / "model.safetensors"), metadata=header)
        state = {
            "epoch": epoch,
            "train_seconds": train_seconds,
            "optimizer": opt.state_dict(),
            "scheduler": sched.state_dict(),
            "scaler": scaler.state_dict(),
            "torch_rng": torch.get_rng_state(),
            # only when this process uses CUDA: asking for it would initialise CUDA (a context
            # on the card) in a CPU trial
            "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else [],
        }
        torch.save(state, ckpt / "state.pt")
        (ckpt / "config.json").write_text(json.dumps(cfg.to_dict(), indent=2))
    except (OSError, RuntimeError) as e:  # torch.save wraps ENOSPC in a RuntimeError
        shutil.rmtree(ckpt, ignore_errors=True)
        full = isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT)
        full = full or "No space left" in str(e) or "file write failed" in str(e)
        what = "disk full" if full else f"{type(e).__name__}: {e}"
        raise KDSweepError(
            f"checkpoint of epoch {epoch}: cannot write {ckpt} ({what}); the checkpoint of "
            f"epoch {epoch - 1} is kept and the trial resumes from it once there is space"
        ) from e


def load_state(ckpt: Path, model, opt, sched, scaler) -> tuple[int, float]:
    """Restore what `save_state` wrote; returns (epochs done, seconds trained so far)."""
    ckpt = Path(ckpt)
    try:
        weights, header = _read_weights(ckpt)
        model.load_state_dict(weights)
        state = torch.load(ckpt / "state.pt", weights_only=True, map_location="cpu")
        _same_epoch(header, state)
    except Exception as e:  # corrupt/foreign checkpoint: say which file
        raise KDSweepError(f"checkpoint {ckpt}: cannot load ({type(e).__name__}: {e})") from e
    opt.load_state_dict(state["optimizer"])
    sched.load_state_dict(state["scheduler"])
    if state.get("scaler"):
        scaler.load_state_dict(state["scaler"])
    torch.set_rng_state(state["torch_rng"])
    if state.get("cuda_rng") and torch.cuda.is_initialized():
        torch.cuda.set_rng_state_all(state["cuda_rng"])
    return int(state["epoch"]), float(state["train_seconds"])


def checkpoint_info(ckpt: Path) -> tuple[int, dict[str, float]] | None:
    """(epoch, metrics) from the weights' header, reading only the header; None when the
    weights are missing or unreadable, or were written before headers named the epoch."""
    try:
        with safe_open(str(Path(ckpt) / "model.safetensors"), framework="pt") as f:
            meta = f.metadata() or {}
        return int(meta["epoch"]), json.loads(meta.get("metrics", "{}"))
    except Exception:  # noqa: BLE001 - a half-deleted or foreign checkpoint
        return None


def _read_weights(ckpt: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The weights and the header of `ckpt`/model.safetensors, in one read."""
    with safe_open(str(Path(ckpt) / "model.safetensors"), framework="pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, f.metadata() or {}  # noqa: SIM118


def _same_epoch(header: dict[str, str], state: dict) -> None:
    weights_epoch = header.get("epoch")
    if weights_epoch is not None and int(weights_epoch) != int(state["epoch"]):
        raise ValueError(
            f"weights of epoch {weights_epoch} but training state of epoch {state['epoch']} "
            "(a copy cut short)"
        )


def checkpoint_epoch(ckpt: Path) -> int | None:
    """The epoch a checkpoint holds; None when it would not load (a file missing or unreadable,
    weights and training state from different epochs)."""
    ckpt = Path(ckpt)
    try:
        _, header = _read_weights(ckpt)
        state = torch.load(ckpt / "state.pt", weights_only=True, map_location="cpu")
        _same_epoch(header, state)
        json.loads((ckpt / "config.json").read_text())
        return int(state["epoch"])
    except Exception:  # noqa: BLE001 - any failure means "not loadable"
        return None


def with_siblings(ckpt: Path) -> list[Path]:
    """`ckpt`, then the other `checkpoint_*` dirs of its trial, newest first.

    The fallbacks for a recorded checkpoint that does not load: one a kill left half-deleted
    (seen with Ray's own `num_to_keep` deletion, which sweeps started before
    `driver/pruning.py` still use) or half-overwritten. The newer ones belong to the same trial
    and config, and resuming from one of them is exact.
    """
    ckpt = Path(ckpt)
    others = [p for p in ckpt.parent.glob("checkpoint_*") if p.is_dir() and p != ckpt]
    return [ckpt, *sorted(others, key=lambda p: p.name, reverse=True)]


def ranked_checkpoints(trial_dir: Path, metric: str, mode: str) -> list[Path]:
    """A trial's checkpoints whose header has a finite `metric`, best first; ties go to the
    later one. Reads only the headers (`checkpoint_info`)."""
    sign = 1.0 if mode == "max" else -1.0
    scored = []
    for path in Path(trial_dir).glob("checkpoint_*"):
        info = checkpoint_info(path)
        value = info[1].get(metric, math.nan) if info else math.nan
        if math.isfinite(value):
            scored.append((sign * value, path.name, path))
    return [path for *_, path in sorted(scored, reverse=True)]


def resume_state(candidates: list[Path], model, opt, sched, scaler) -> tuple[int, float]:
    """`load_state` from the first candidate that loads; (0, 0.0) when there is none.

    The first candidate is the checkpoint Tune recorded; the others are fallbacks for one that
    does not load (`with_siblings`). Falling back is said on stderr; when no
    candidate loads, the first one's error is raised.
    """
    errors: list[KDSweepError] = []
    for ckpt in candidates:
        try:
            done = load_state(ckpt, model, opt, sched, scaler)
        except KDSweepError as e:
            errors.append(e)
            continue
        if errors:
            print(f"[kdsweep] {errors[0]}; resuming from {ckpt} instead", file=sys.stderr)
        return done
    if errors:
        raise errors[0]
    return 0, 0.0
