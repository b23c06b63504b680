"""Reliability: MLflow outages, failing trials, killed trial workers lose nothing."""

from __future__ import annotations

import socket
import subprocess
import time
from pathlib import Path

import psutil
import pytest
from sweep_helpers import sweep_cmd
from sweep_helpers import sweep_env as _env

from driver.tracking import Journal

ROOT = Path(__file__).resolve().parents[1]


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _events(j: Journal) -> None:
    j.append(ev="parent", uid="sweep:x", name="x", tags={"task": "text"}, params={"a": 1})
    j.append(
        ev="start",
        trial="t1",
        name="soft T=4",
        params={"temperature": 4, "api_token": "s3cret"},
        tags={"kdsweep.trial_id": "t1", "condition": "soft"},
    )
    for epoch in (1, 2, 3):
        j.append(ev="result", trial="t1", step=epoch, metrics={"dev_accuracy": 0.1 * epoch})
    j.append(ev="end", trial="t1", status="FINISHED", tags={})
    j.append(ev="parent_end", status="FINISHED", metrics={"best": 0.3}, tags={}, artifacts=[])


@pytest.mark.trial
def test_mlflow_outage_keeps_events_and_sends_them_once(tmp_path, capsys):
    dead = f"http://127.0.0.1:{_closed_port()}"
    j = Journal(tmp_path / "sweep", dead, "kdsweep/x", (tmp_path / "art").as_uri())
    _events(j)
    t0 = time.time()
    assert j.sync(force=True) is False  # the server is down: nothing raised, nothing lost
    assert time.time() - t0 < 30
    assert j.pending() == 7
    assert "unreachable" in capsys.readouterr().out

    # The server is "back" (same journal, a reachable store): everything arrives exactly once.
    uri = f"sqlite:///{tmp_path / 'mlruns.db'}"
    j2 = Journal(tmp_path / "sweep", uri, "kdsweep/x", (tmp_path / "art").as_uri())
    assert j2.sync(force=True) is True and j2.pending() == 0
    assert j2.sync(force=True) is True  # a second sync sends nothing again

    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("kdsweep/x")
    runs = client.search_runs([exp.experiment_id])
    assert len(runs) == 2
    child = next(r for r in runs if "mlflow.parentRunId" in r.data.tags)
    assert [m.step for m in client.get_metric_history(child.info.run_id, "dev_accuracy")] == [
        1,
        2,
        3,
    ]
    assert child.info.status == "FINISHED"
    assert "api_token" not in child.data.params  # credentials never become params
    assert child.data.params["temperature"] == "4"


@pytest.mark.unit
def test_journal_survives_a_line_cut_by_a_kill(tmp_path):
    j = Journal(tmp_path / "sweep", "sqlite:///x.db", "e", (tmp_path / "a").as_uri())
    _events(j)
    with j.path.open("a") as f:
        f.write('{"ev": "result", "trial": "t1", "st')  # SIGKILL mid-write
    assert len(Journal(tmp_path / "sweep", "sqlite:///x.db", "e", "").events()) == 7


@pytest.mark.e2e
def test_failing_trial_ends_error_with_reason_and_sweep_goes_on(tmp_path, cache_dir):
    empty = tmp_path / "not_a_checkpoint"
    empty.mkdir()
    space = tmp_path / "space.yaml"
    space.write_text(
        "task: text\ncondition: cascade\n"
        f"params: {{teacher_checkpoint: {{grid: ['', '{empty}']}}, temperature: 2.0}}\n"
    )
    res = subprocess.run(
        sweep_cmd("temperature", tmp_path, "--space", str(space)),
        env=_env(cache_dir),
        capture_output=True,
        text=True,
        timeout=600,
        cwd=tmp_path,
    )
    out = res.stdout + res.stderr
    assert "| error" in out and "model.safetensors" in out, out[-4000:]
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlruns.db'}")
    runs = [r for e in client.search_experiments() for r in client.search_runs([e.experiment_id])]
    failed = [r for r in runs if r.info.status == "FAILED"]
    assert failed and all("model.safetensors" in r.data.tags.get("error", "") for r in failed)
    assert any(r.info.status == "FINISHED" and "mlflow.parentRunId" in r.data.tags for r in runs)


@pytest.mark.e2e
def test_killed_trial_worker_is_retried_from_its_checkpoint(tmp_path, cache_dir):
    """SIGKILL a trial's worker process mid-trial: Tune restarts it from the last checkpoint."""
    proc = subprocess.Popen(
        sweep_cmd("temperature", tmp_path, "epochs=4", "temperature=4", "--no-asha"),
        env=_env(cache_dir),
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    journal = tmp_path / "runs" / "temperature-text-fortunes-smoke" / "mlflow_journal.jsonl"
    killed = None
    deadline = time.time() + 400
    while time.time() < deadline and killed is None:
        if journal.is_file() and journal.read_text().count('"ev": "result"') >= 1:
            for p in psutil.Process(proc.pid).children(recursive=True):
                try:
                    if "ImplicitFunc" in " ".join(p.cmdline()):
                        p.kill()
                        killed = p.pid
                except psutil.NoSuchProcess:
                    continue
        time.sleep(0.3)
    out, _ = proc.communicate(timeout=600)
    assert killed, "no trial worker found to kill"
    assert proc.returncode == 0, out[-4000:]
    assert "| finished" in out, out[-3000:]
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlruns.db'}")
    runs = [r for e in client.search_experiments() for r in client.search_runs([e.experiment_id])]
    child = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert len(child) == 1 and child[0].info.status == "FINISHED"
    steps = [m.step for m in client.get_metric_history(child[0].info.run_id, "epoch")]
    assert steps == [1, 2, 3, 4]  # no epoch logged twice, none missing


@pytest.mark.trial
def test_disk_full_while_checkpointing_keeps_the_last_checkpoint(small_text, tmp_path, monkeypatch):
    """ENOSPC in epoch 2's checkpoint: a clear error, no half-written checkpoint, epoch 1's
    checkpoint intact, and the trial resumed from it ends exactly like an uninterrupted one."""
    import errno

    import pytest
    import torch
    from safetensors.torch import load_file

    import trainables.checkpointing as ckpt_mod
    import trainables.text.trainable as text_mod
    from kdsweep.errors import KDSweepError
    from trainables.tune_io import local_session

    cfg = {**small_text, "student": "L2-H128", "student_init": "random", "lr": 3e-3}
    cfg.update(attribution_examples=0, epochs=2, data_subset=64)
    with local_session(tmp_path / "straight") as straight:
        text_mod.TEXT_TRAINABLES["soft"](cfg)

    real_save, calls, scratch = ckpt_mod.torch.save, [], []

    def save_until_disk_full(obj, f, *a, **k):
        calls.append(f)
        if len(calls) == 2:  # epoch 2's state.pt: the disk fills up mid-checkpoint
            scratch.append(Path(f).parent)
            Path(f).write_bytes(b"\0" * 100)  # a partial file, as a real ENOSPC leaves
            raise OSError(errno.ENOSPC, "No space left on device", str(f))
        return real_save(obj, f, *a, **k)

    monkeypatch.setattr(ckpt_mod.torch, "save", save_until_disk_full)
    with local_session(tmp_path / "full") as full, pytest.raises(KDSweepError) as e:
        text_mod.TEXT_TRAINABLES["soft"](cfg)
    monkeypatch.undo()
    msg = str(e.value)
    assert "disk full" in msg and "epoch 2" in msg and str(scratch[0]) in msg, msg
    assert not scratch[0].exists()  # the half-written checkpoint is gone
    assert [r["epoch"] for r in full.results] == [1] and len(full.checkpoints) == 1
    load_file(str(full.checkpoints[0] / "model.safetensors"))  # epoch 1's checkpoint loads
    torch.load(full.checkpoints[0] / "state.pt", weights_only=True)

    with local_session(tmp_path / "resumed", restore_from=full.checkpoints[0]) as resumed:
        text_mod.TEXT_TRAINABLES["soft"](cfg)
    assert [r["epoch"] for r in resumed.results] == [2]
    assert resumed.results[0]["dev_accuracy"] == straight.results[1]["dev_accuracy"]


@pytest.mark.trial
def test_half_deleted_checkpoint_falls_back_to_the_newer_complete_one(small_text, tmp_path, capfd):
    """A driver killed while Ray deleted a superseded checkpoint (num_to_keep=1): the saved
    experiment state still names it, half-deleted, while the newer one is complete. The trial
    resumes from the newer one and ends exactly like an uninterrupted run (seen with 5 kills)."""
    import shutil

    import pytest

    import trainables.text.trainable as text_mod
    from kdsweep.errors import KDSweepError
    from trainables.tune_io import local_session

    cfg = {**small_text, "student": "L2-H128", "student_init": "random", "lr": 3e-3}
    cfg.update(attribution_examples=0, epochs=3, data_subset=64)
    with local_session(tmp_path / "straight") as straight:
        text_mod.TEXT_TRAINABLES["soft"](cfg)
    first, second, third = straight.checkpoints
    shutil.rmtree(third)  # epoch 3 never happened in the killed run
    (first / "model.safetensors").unlink()  # Ray's delete of epoch 1 cut by the kill

    with local_session(tmp_path / "resumed", restore_from=first) as resumed:
        text_mod.TEXT_TRAINABLES["soft"](cfg)
    assert [r["epoch"] for r in resumed.results] == [3]  # resumed after epoch 2, not epoch 0
    assert resumed.results[0]["dev_accuracy"] == straight.results[2]["dev_accuracy"]
    err = capfd.readouterr().err
    assert "model.safetensors" in err and f"resuming from {second} instead" in err

    # The sweep's final answer is the trial's best checkpoint that loads, ranked by the metric
    # in each checkpoint's header: never the half-deleted one, whatever Tune recorded.
    from driver.summary import _best_on_disk
    from trainables.checkpointing import checkpoint_epoch, checkpoint_info

    assert checkpoint_epoch(first) is None and checkpoint_epoch(second) == 2
    assert checkpoint_info(second) == (2, pytest.approx(straight.results[1], abs=0, rel=0))
    (tmp_path / "straight" / "checkpoint_000003").mkdir()  # a dir Ray had begun to write
    assert _best_on_disk(tmp_path / "straight", "dev_accuracy", "max") == second

    # A checkpoint dir overwritten by a later epoch's copy that a kill cut short: the weights'
    # header says which epoch they are, so the pair does not load as if it were whole.
    mixed = tmp_path / "mixed" / "checkpoint_000002"
    shutil.copytree(second, mixed)
    shutil.copy(resumed.checkpoints[0] / "model.safetensors", mixed / "model.safetensors")
    assert checkpoint_epoch(mixed) is None
    with local_session(tmp_path / "m", restore_from=mixed), pytest.raises(KDSweepError) as e:
        text_mod.TEXT_TRAINABLES["soft"](cfg)
    assert "weights of epoch 3 but training state of epoch 2" in str(e.value)

    (second / "state.pt").write_bytes(b"\0" * 10)  # nothing loadable left: a clear error
    with local_session(tmp_path / "again", restore_from=first), pytest.raises(KDSweepError) as e:
        text_mod.TEXT_TRAINABLES["soft"](cfg)
    assert str(first) in str(e.value) and "cannot load" in str(e.value)


@pytest.mark.trial
def test_event_sent_but_cursor_not_saved_is_not_sent_twice(tmp_path):
    """A kill between logging an event to MLflow and saving the replay cursor: the next sync
    finds that event already in MLflow and skips it (seen with 10 random driver kills)."""
    import json as _json

    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlruns.db'}"
    j = Journal(tmp_path / "sweep", uri, "kdsweep/x", (tmp_path / "art").as_uri())
    _events(j)
    assert j.sync(force=True)
    for rewind in (1, 3):  # parent_end (step 0 metrics), then back to the epoch-3 result
        state = _json.loads(j.state_path.read_text())
        state["line"] -= rewind
        j.state_path.write_text(_json.dumps(state))
        assert Journal(tmp_path / "sweep", uri, "kdsweep/x", "").sync(force=True)
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("kdsweep/x").experiment_id])
    child = next(r for r in runs if "mlflow.parentRunId" in r.data.tags)
    parent = next(r for r in runs if "mlflow.parentRunId" not in r.data.tags)
    assert [m.step for m in client.get_metric_history(child.info.run_id, "dev_accuracy")] == [
        1,
        2,
        3,
    ]
    assert len(client.get_metric_history(parent.info.run_id, "best")) == 1


@pytest.mark.unit
def test_journal_unpickled_by_tune_restore_knows_what_was_logged(tmp_path):
    """Tuner.restore() revives the callback pickled when the sweep started: its journal must
    re-read the file, or a trial resumed from an older checkpoint logs an epoch twice."""
    import pickle

    j = Journal(tmp_path / "sweep", "sqlite:///x.db", "e", "")
    frozen = pickle.dumps(j)  # as in tuner.pkl: before any epoch was logged
    _events(j)
    revived = pickle.loads(frozen)
    assert revived.last_epoch == {"t1": 3} and revived.started == {"t1"}


@pytest.mark.unit
def test_scratch_checkpoints_of_killed_workers_are_removed(tmp_path):
    """A worker SIGKILLed between writing and reporting a checkpoint leaves its scratch dir
    (51 MB for L2-H128); the next trial's first checkpoint removes it, never a live one's."""
    import os
    import shutil
    import sys
    import tempfile

    from trainables import tune_io

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    tmp = Path(tempfile.gettempdir())
    orphan = tmp / f"kdsweep-ckpt-{dead.pid}-zz"
    live = tmp / f"kdsweep-ckpt-{os.getppid()}-zz"  # our parent: alive
    for d in (orphan, live):
        d.mkdir(exist_ok=True)
        (d / "state.pt").write_bytes(b"x")
    try:
        fresh = tune_io.new_checkpoint_dir()
        assert not orphan.exists() and live.exists()
        assert fresh.name.startswith(f"kdsweep-ckpt-{os.getpid()}-")
        shutil.rmtree(fresh)
    finally:
        shutil.rmtree(live, ignore_errors=True)
        shutil.rmtree(orphan, ignore_errors=True)


@pytest.mark.trial
def test_a_new_sweep_under_a_deleted_sweeps_name_gets_its_own_parent_run(tmp_path, capsys):
    """Delete a sweep's folder and run the same command with other params: before, the new
    sweep found the old parent run by its name and MLflow refused the changed params (every
    later event waited behind that one). A resume of one folder keeps its parent run."""
    import dataclasses
    import shutil

    from mlflow.tracking import MlflowClient

    from driver.cli import build_parser, build_plan
    from driver.run import open_journal

    uri = f"sqlite:///{tmp_path / 'mlruns.db'}"

    def opened(*overrides: str) -> str:
        args = build_parser("temperature", None).parse_args(["--smoke", *overrides])
        plan = build_plan("temperature", args)
        plan = dataclasses.replace(plan, storage=tmp_path / "runs", tracking_uri=uri)
        journal, _ = open_journal(plan, {"tags": {}})
        assert journal.pending() == 0, capsys.readouterr().out
        return journal.state()["parent"]

    first = opened("max_len=32", "--name", "same")
    assert opened("max_len=32", "--name", "same") == first  # a resume: the same parent run
    shutil.rmtree(tmp_path / "runs" / "same")
    second = opened("max_len=48", "--name", "same")  # a new sweep, the old name
    assert second != first
    assert "refused" not in capsys.readouterr().out
    client = MlflowClient(uri)
    assert client.get_run(second).data.params["fixed.max_len"] == "48"
    assert client.get_run(first).data.params["fixed.max_len"] == "32"
