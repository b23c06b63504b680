"""Keep each trial's best and latest checkpoint; delete the others once no restore needs them.

Why not Ray's `CheckpointConfig(num_to_keep=1)`: Ray deletes a superseded checkpoint the moment
the newer one is registered, but writes the experiment state (what `Tuner.restore` reads) only
every 10 s or more. A driver killed in between leaves a state naming a checkpoint that is gone
or half-deleted, and the trial cannot resume ("Could not recover from checkpoint as it does not
exist on storage anymore"; seen 2 times in 15 random kills). Here Ray keeps every checkpoint
and a checkpoint is deleted only once the experiment state *on disk* names a checkpoint of its
trial at least `margin` newer, so every state a restart can read points at one that exists.

Each checkpoint says which epoch and metrics it holds in its weights' header
(`trainables.checkpointing.checkpoint_info`); no scores are kept in memory, so a resumed
driver prunes what the killed one left too.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

from ray import tune

from trainables.checkpointing import checkpoint_info, ranked_checkpoints


def saved_latest(experiment_dir: Path) -> dict[Path, int]:
    """Trial dir -> index of the latest checkpoint named by the newest saved experiment state.

    Empty when there is no state yet or it cannot be read (a copy in progress): then nothing
    is deleted this time.
    """
    states = sorted(Path(experiment_dir).glob("experiment_state-*.json"))
    if not states:
        return {}
    try:
        data = json.loads(states[-1].read_text())
        out = {}
        for trial_json, meta_json in data["trial_data"]:
            trial, meta = json.loads(trial_json), json.loads(meta_json)
            name = (meta.get("last_result") or {}).get("checkpoint_dir_name")
            if name and name.startswith("checkpoint_"):
                rel = trial.get("relative_logdir") or trial["trial_id"]
                out[Path(experiment_dir) / rel] = int(name.split("_")[-1])
        return out
    except (OSError, ValueError, KeyError, TypeError):
        return {}


def prune_checkpoints(experiment_dir: Path, metric: str, mode: str, margin: int = 2) -> list[Path]:
    """Delete every checkpoint that is neither its trial's best nor within `margin` of the
    latest one the saved experiment state names. Returns the deleted directories.

    `margin` 2 while the sweep runs: a state saved between a result and its checkpoint's
    registration names the result's checkpoint while Ray still restores the one before it.
    1 once `Tuner.fit` has returned (the final state is saved). A trial holding a checkpoint
    whose header names no metric (written by an older kdsweep) is left alone.
    """
    deleted = []
    for trial_dir, latest in saved_latest(experiment_dir).items():
        ckpts = [p for p in trial_dir.glob("checkpoint_*") if p.is_dir()]
        unscored = [
            p
            for p in ckpts
            if (p / "model.safetensors").exists()
            and metric not in (checkpoint_info(p) or (0, {}))[1]
        ]
        ranked = ranked_checkpoints(trial_dir, metric, mode)
        if unscored or not ranked:
            continue
        for path in ckpts:
            if path == ranked[0] or int(path.name.split("_")[-1]) > latest - margin:
                continue
            if kept_every(path):
                continue
            shutil.rmtree(path, ignore_errors=True)
            deleted.append(path)
    return deleted


def kept_every(ckpt: Path) -> bool:
    """True when the checkpoint's config asks to keep it: its epoch is a multiple of
    `keep_every` (> 0) in the checkpoint's config.json (checkpoint ensembling)."""
    try:
        k = int(json.loads((ckpt / "config.json").read_text()).get("keep_every", 0) or 0)
    except (OSError, ValueError, TypeError, AttributeError):
        return False
    info = checkpoint_info(ckpt)
    return k > 0 and info is not None and int(info[0]) % k == 0


class CheckpointPruner(tune.Callback):
    """Runs `prune_checkpoints` every `every_s` seconds of the Tune loop."""

    def __init__(self, experiment_dir: Path, metric: str, mode: str, every_s: float = 10.0):
        self.experiment_dir, self.metric, self.mode = Path(experiment_dir), metric, mode
        self.every_s = every_s
        self._last = 0.0

    def __setstate__(self, state: dict[str, Any]) -> None:  # revived by Tuner.restore
        self.__dict__.update(state)
        self._last = 0.0

    def on_step_end(self, iteration: int, trials: list, **info) -> None:
        if time.monotonic() - self._last < self.every_s:
            return
        self._last = time.monotonic()
        prune_checkpoints(self.experiment_dir, self.metric, self.mode, margin=2)
