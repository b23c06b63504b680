"""Per-epoch resume state of a preparation step (teacher fine-tuning, twin training).

A builder that trains for several epochs keeps, in a folder that survives a kill (the store's
`<root>/.<id>.partial/`, beside the build's temp dir, which is wiped on every new build):

    epoch-<k>/model.safetensors   the weights after epoch k (safetensors, shared tensors ok)
    epoch-<k>/state.pt            optimizer / scheduler / grad-scaler state + torch RNG states,
                                  tensors and plain numbers only (read with weights_only=True)

Each epoch is written into a temp folder and moved into place with one `os.replace`, so a
kill in the middle of a write leaves the previous epoch as the last complete one; an epoch
folder that cannot be read anyway (a damaged file) is skipped for the one before it. The two
newest epochs are kept. No ray, no mlflow.
"""

from __future__ import annotations

import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_model, save_model

from kdsweep.store import _fsync_dir, _fsync_tree

_EPOCH = re.compile(r"^epoch-(\d+)$")
KEEP = 2


def rng_state() -> dict[str, Any]:
    """torch's CPU (and CUDA, when this process uses it) generator states, as tensors.

    Only an initialised CUDA is asked: `get_rng_state_all` would otherwise create a CUDA
    context on the card in a process that trains on the CPU."""
    state: dict[str, Any] = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["cpu"])
    if "cuda" in state and torch.cuda.is_initialized():
        torch.cuda.set_rng_state_all(state["cuda"])


@dataclass
class EpochResume:
    """The resume folder of one build: `save` after every epoch, `load` once at the start."""

    folder: Path

    def epochs(self) -> list[int]:
        """Complete epochs on disk, newest first."""
        if not self.folder.is_dir():
            return []
        found = [_EPOCH.match(p.name) for p in self.folder.iterdir() if p.is_dir()]
        return sorted((int(m.group(1)) for m in found if m), reverse=True)

    def save(self, epoch: int, model: torch.nn.Module, train_state: dict[str, Any]) -> None:
        """Record that `epoch` epochs are done: the model's weights and `train_state` (state
        dicts of optimizer/scheduler/scaler...; the RNG states are added here)."""
        self.folder.mkdir(parents=True, exist_ok=True)
        final = self.folder / f"epoch-{epoch}"
        tmp = self.folder / f".epoch-{epoch}.tmp{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        try:
            save_model(model, str(tmp / "model.safetensors"))
            torch.save({**train_state, "rng": rng_state(), "epoch": epoch}, tmp / "state.pt")
            _fsync_tree(tmp)
            shutil.rmtree(final, ignore_errors=True)
            os.replace(tmp, final)
            _fsync_dir(self.folder)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        for old in self.epochs()[KEEP:]:
            shutil.rmtree(self.folder / f"epoch-{old}", ignore_errors=True)

    def load(self, model: torch.nn.Module) -> dict[str, Any] | None:
        """Load the newest readable epoch's weights into `model` and return its train state
        (with "epoch", the number of epochs done), after restoring the RNG states; None when
        there is nothing to resume."""
        for epoch in self.epochs():
            path = self.folder / f"epoch-{epoch}"
            try:
                state = torch.load(path / "state.pt", weights_only=True, map_location="cpu")
                load_model(model, str(path / "model.safetensors"), device=_device_of(model))
            except Exception:  # a damaged epoch: fall back to the one before it
                continue
            if state.get("epoch") != epoch:
                continue
            set_rng_state(state["rng"])
            return state
        return None

    def clear(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)


def _device_of(model: torch.nn.Module) -> str:
    p = next(model.parameters(), None)
    return str(p.device) if p is not None else "cpu"
