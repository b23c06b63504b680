"""CUDA out-of-memory recovery in a text trial (issue 17, item 3), with an injected OOM.

Tune's retry is simulated as the other trainable tests do: a second `local_session` restored
from the first attempt's last checkpoint, sharing the trial's folder (`trial_dir`), where the
OOM record lives.
"""

from __future__ import annotations

import json

import pytest
import torch

import trainables.text.trainable as text_mod
from kdsweep.oom import STATE_FILE, OutOfMemoryAtBatchOne
from trainables.tune_io import local_session

pytestmark = pytest.mark.trial

FAST = {"student": "L2-H128", "student_init": "random", "lr": 3e-3, "attribution_examples": 0}


@pytest.fixture(autouse=True)
def _restore_torch_threads():
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


def _objective_oom(monkeypatch, when) -> list[int]:
    """soft KD's objective raises CUDA OOM when `when(call, batch_rows)`; returns the batch
    sizes it saw (one per micro-batch)."""
    objective, seen = text_mod.soft_kd_objective, []

    def maybe_oom(logits, *a, **k):
        seen.append(len(logits))
        if when(len(seen), len(logits)):
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return objective(logits, *a, **k)

    monkeypatch.setattr(text_mod, "soft_kd_objective", maybe_oom)
    return seen


def test_oom_retries_from_the_checkpoint_with_half_the_batch(small_text, tmp_path, monkeypatch):
    cfg = {**small_text, **FAST, "data_subset": 32, "batch_size": 16, "epochs": 3}
    # 32 rows / 16 = 2 batches an epoch: call 3 is the first batch of epoch 2, at batch 16 only.
    seen = _objective_oom(monkeypatch, lambda call, rows: call == 3 and rows == 16)
    trial = tmp_path / "trial"
    with (
        local_session(tmp_path / "a1", trial_dir=trial) as first,
        pytest.raises(torch.cuda.OutOfMemoryError),
    ):
        text_mod.TEXT_TRAINABLES["soft"](cfg)
    assert [r["epoch"] for r in first.results] == [1]
    assert "oom_batch_size" not in first.results[0]
    state = json.loads((trial / STATE_FILE).read_text())
    assert (state["batch_size"], state["grad_accum"]) == (8, 2)
    assert state["history"][0]["epoch"] == 2 and state["history"][0]["batch_size"] == 16

    seen.clear()
    with local_session(tmp_path / "a2", restore_from=first.last_checkpoint, trial_dir=trial) as s:
        text_mod.TEXT_TRAINABLES["soft"](cfg)
    assert [r["epoch"] for r in s.results] == [2, 3]  # resumed after the last checkpoint
    assert set(seen) == {8} and len(seen) == 8  # 2 epochs x 32 rows / 8
    for r in s.results:
        assert (r["oom_batch_size"], r["oom_grad_accum"]) == (8, 2)
        assert r["oom_recoveries"] == 1 and r["oom_from_batch_size"] == 16
        assert r["effective_batch_size"] == 16  # the same effective batch as configured
    saved = json.loads((s.last_checkpoint / "config.json").read_text())
    assert (saved["batch_size"], saved["grad_accum"]) == (8, 2)
    # The LR schedule kept its course: linear decay to 0 at the last configured step.
    assert s.results[-1]["lr"] == pytest.approx(0.0, abs=1e-12)


def test_oom_at_batch_size_one_ends_with_that_reason(small_text, tmp_path, monkeypatch):
    cfg = {**small_text, **FAST, "data_subset": 4, "batch_size": 2, "epochs": 1}
    seen = _objective_oom(monkeypatch, lambda call, rows: True)  # nothing ever fits
    trial = tmp_path / "trial"
    oom = torch.cuda.OutOfMemoryError
    with local_session(tmp_path / "a1", trial_dir=trial), pytest.raises(oom):
        text_mod.TEXT_TRAINABLES["soft"](cfg)
    with (
        local_session(tmp_path / "a2", trial_dir=trial),
        pytest.raises(OutOfMemoryAtBatchOne, match="out of memory at batch size 1") as e,
    ):
        text_mod.TEXT_TRAINABLES["soft"](cfg)
    assert "CUDA out of memory" in str(e.value)  # the original error is in the reason
    assert seen == [2, 1]
    # A further retry fails at once, training nothing.
    with local_session(tmp_path / "a3", trial_dir=trial), pytest.raises(OutOfMemoryAtBatchOne):
        text_mod.TEXT_TRAINABLES["soft"](cfg)
    assert seen == [2, 1]
    assert json.loads((trial / STATE_FILE).read_text())["gave_up"]


def test_no_trial_dir_means_no_recovery_state(small_text, tmp_path, monkeypatch):
    """Outside Tune (no trial folder) an OOM is raised as it is and nothing is written."""
    cfg = {**small_text, **FAST, "data_subset": 4, "batch_size": 2, "epochs": 1}
    _objective_oom(monkeypatch, lambda call, rows: True)
    with local_session(tmp_path / "a1"), pytest.raises(torch.cuda.OutOfMemoryError):
        text_mod.TEXT_TRAINABLES["soft"](cfg)
    assert not list(tmp_path.rglob(STATE_FILE))


def test_probe_step_trains_the_trials_student(small_text):
    """The memory probe's step runs the trial's own student (here on the CPU) and updates it."""
    from trainables.probe import probe_step

    config = {**small_text, **FAST, "task": "text", "condition": "hidden", "device": "cpu"}
    step = probe_step(config)
    before = {k: v.clone() for k, v in step.model.state_dict().items()}
    step()
    step()  # a second step: Adam's state exists, as in the measured peak
    after = step.model.state_dict()
    assert "aux.proj.0.weight" in after  # hidden KD's projections are part of it
    assert any(not torch.equal(before[k], after[k]) for k in before)


def test_oom_metrics_become_tags_of_the_trials_mlflow_run(tmp_path):
    """The callback turns a trial's `oom_*` metrics into tags of its run (not metrics)."""
    from types import SimpleNamespace

    from mlflow.tracking import MlflowClient

    from driver.tracking import Journal, MlflowTrialCallback

    uri = f"sqlite:///{tmp_path / 'mlruns.db'}"
    j = Journal(tmp_path / "sweep", uri, "kdsweep/x", (tmp_path / "art").as_uri())
    j.append(ev="parent", uid="sweep:x", name="x", tags={}, params={})
    cb = MlflowTrialCallback(j, describe=lambda c: "soft", tags_for=lambda c: {}, max_epochs=2)
    trial = SimpleNamespace(trial_id="t1", config={"batch_size": 16})
    cb.on_trial_start(0, [], trial)
    oom = {"oom_batch_size": 8, "oom_grad_accum": 2, "oom_recoveries": 1}
    cb.on_trial_result(0, [], trial, {"epoch": 1, "dev_accuracy": 0.5})
    cb.on_trial_result(0, [], trial, {"epoch": 2, "dev_accuracy": 0.6, **oom})
    cb.on_trial_complete(0, [], trial)
    assert j.sync(force=True)
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("kdsweep/x")
    run = next(r for r in client.search_runs([exp.experiment_id]) if r.data.params)
    assert {k: run.data.tags[k] for k in oom} == {k: str(v) for k, v in oom.items()}
    assert not set(oom) & set(run.data.metrics) and "dev_accuracy" in run.data.metrics
