"""Checkpoint pruning waits for the saved experiment state (driver/pruning.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from driver.pruning import prune_checkpoints, saved_latest
from trainables.checkpointing import checkpoint_info

pytestmark = pytest.mark.unit

SCORES = [0.2, 0.9, 0.5, 0.9, 0.4, 0.3]  # checkpoint_000000..05; best: 0.9, the later one (3)


def _experiment(tmp_path: Path, named: int) -> Path:
    """A trial with 6 checkpoints; the saved experiment state names checkpoint `named`."""
    exp = tmp_path / "sweep"
    for i, score in enumerate(SCORES):
        d = exp / "t1" / f"checkpoint_{i:06d}"
        d.mkdir(parents=True)
        header = {"epoch": str(i + 1), "metrics": json.dumps({"dev_accuracy": score})}
        save_file({"w": torch.zeros(2)}, str(d / "model.safetensors"), metadata=header)
    trial = {"trial_id": "t1", "relative_logdir": "t1"}
    meta = {"last_result": {"checkpoint_dir_name": f"checkpoint_{named:06d}"}}
    state = {"trial_data": [[json.dumps(trial), json.dumps(meta)]]}
    (exp / "experiment_state-2026-12-01_00-00-00.json").write_text(json.dumps(state))
    return exp


def _left(exp: Path) -> list[int]:
    return sorted(int(p.name[-6:]) for p in (exp / "t1").glob("checkpoint_*"))


def test_keeps_best_and_the_last_two_the_saved_state_could_restore(tmp_path):
    exp = _experiment(tmp_path, named=5)
    assert saved_latest(exp) == {exp / "t1": 5}
    assert checkpoint_info(exp / "t1" / "checkpoint_000003") == (4, {"dev_accuracy": 0.9})
    prune_checkpoints(exp, "dev_accuracy", "max", margin=2)
    assert _left(exp) == [3, 4, 5]  # best (3, ties go to the later), and 4 (Ray may restore it)
    prune_checkpoints(exp, "dev_accuracy", "max", margin=1)  # after fit: best + latest
    assert _left(exp) == [3, 5]


def test_lower_is_better_for_wer(tmp_path):
    exp = _experiment(tmp_path, named=5)
    prune_checkpoints(exp, "dev_accuracy", "min", margin=1)
    assert _left(exp) == [0, 5]


def test_stale_state_deletes_nothing_it_may_restore(tmp_path):
    """The killed driver registered checkpoints 2-5 after its last saved state (naming 1):
    Tune restores checkpoint 1, so 1 stays, and the unregistered newer ones stay too."""
    exp = _experiment(tmp_path, named=1)
    prune_checkpoints(exp, "dev_accuracy", "max", margin=2)
    assert _left(exp) == [0, 1, 2, 3, 4, 5]


def test_unreadable_state_deletes_nothing(tmp_path):
    exp = _experiment(tmp_path, named=5)
    (exp / "experiment_state-2026-12-01_00-00-00.json").write_text('{"trial_data": [["{')
    assert prune_checkpoints(exp, "dev_accuracy", "max", margin=1) == []
    assert _left(exp) == [0, 1, 2, 3, 4, 5]


def test_half_deleted_checkpoint_is_not_kept_as_best(tmp_path):
    exp = _experiment(tmp_path, named=5)
    (exp / "t1" / "checkpoint_000003" / "model.safetensors").unlink()  # cut by a kill
    prune_checkpoints(exp, "dev_accuracy", "max", margin=1)
    assert _left(exp) == [1, 5]
