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
import shutil
import sys
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from kdsweep.errors import KDSweepError


def save_state(
    ckpt: Path, model, opt, sched, scaler, epoch: int, train_seconds: float, cfg: Any
) -> None:
    """Write weights, training state and config into the directory `ckpt`.

    A failed write (disk full, quota, I/O error) removes the half-written directory and raises
    a `KDSweepError` saying so: the previous epoch's checkpoint, already in the trial's storage,
    is untouched, and Tune's retry (or the next run) resumes from it.
    """
    ckpt = Path(ckpt)
    try:
        weights = {k: v.contiguous() for k, v in model.state_dict().items()}
        save_file(weights, str(ckpt / "model.safetensors"))
        state = {
            "epoch": epoch,
            "train_seconds": train_seconds,
            "optimizer": opt.state_dict(),
            "scheduler": sched.state_dict(),
            "scaler": scaler.state_dict(),
            "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
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
        model.load_state_dict(load_file(str(ckpt / "model.safetensors")))
        state = torch.load(ckpt / "state.pt", weights_only=True)
    except Exception as e:  # corrupt/foreign checkpoint: say which file
        raise KDSweepError(f"checkpoint {ckpt}: cannot load ({type(e).__name__}: {e})") from e
    opt.load_state_dict(state["optimizer"])
    sched.load_state_dict(state["scheduler"])
    if state.get("scaler"):
        scaler.load_state_dict(state["scaler"])
    torch.set_rng_state(state["torch_rng"])
    if state.get("cuda_rng") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda_rng"])
    return int(state["epoch"]), float(state["train_seconds"])


def resume_state(candidates: list[Path], model, opt, sched, scaler) -> tuple[int, float]:
    """`load_state` from the first candidate that loads; (0, 0.0) when there is none.

    The first candidate is the checkpoint Tune recorded; the others are fallbacks for one that
    a kill left half-deleted (`tune_io.with_siblings`). Falling back is said on stderr; when no
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
