"""Sweeps through their public entry points: `python sweeps/<name>.py --smoke`, MLflow, resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from sweep_helpers import run_sweep_script as _sweep
from sweep_helpers import sweep_env as _env

from driver.space import load_space, parse_overrides, parse_space
from kdsweep.errors import KDSweepError

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable


# ---------------------------------------------------------------- search-space validation
def _write(tmp_path: Path, text: str) -> str:
    p = tmp_path / "space.yaml"
    p.write_text(text)
    return str(p)


@pytest.mark.unit
def test_every_shipped_space_validates():
    for path in sorted((ROOT / "search_spaces").glob("*.yaml")):
        space = load_space(str(path))
        assert space.conditions, path


@pytest.mark.unit
def test_grid_and_optuna_spaces():
    grid = load_space("temperature")
    assert not grid.uses_optuna and grid.grid_size() == 4
    assert grid.dists["temperature"] == ("grid", [1, 2, 4, 8])
    tpe = load_space("tune_kd")
    assert tpe.uses_optuna and tpe.num_samples == 12
    seeded = load_space("temperature", seeds=3)
    assert seeded.grid_size() == 12 and seeded.dists["seed"] == ("grid", [0, 1, 2])


@pytest.mark.unit
@pytest.mark.parametrize(
    "text, needle",
    [
        ("task: text\ncondition: soft\nparams: {temperature: [1, 2\n", "invalid YAML"),
        ("task: text\ncondition: soft\nparms: {}\n", "unknown top-level key"),
        ("task: text\ncondition: soft\nparams: {temprature: 2}\n", "did you mean 'temperature'"),
        ("task: text\ncondition: soft\nparams: {alpha: {grid: [0.5, 1.5]}}\n", "alpha"),
        ("task: text\ncondition: soft\nparams: {temperature: 0}\n", "temperature"),
        ("task: text\ncondition: soft\nparams: {alpha: {grid: []}}\n", "non-empty list"),
        ("task: text\ncondition: soft\nparams: {lr: {loguniform: [0, 1]}}\n", "loguniform"),
        ("task: text\ncondition: soft\nparams: {lr: {normal: [0, 1]}}\n", "must be a value"),
        ("task: text\ncondition: distill\n", "unknown condition 'distill'"),
        ("task: vision\ncondition: soft\n", "task 'vision'"),
        ("task: text\ncondition: soft\nparams: {student: L2-H130}\n", "student"),
        ("task: text\ncondition: soft\nparams: {lr: abc}\n", "'lr' must be float"),
        ("task: text\ncondition: soft\nnum_samples: 0\n", "num_samples"),
        ("- just\n- a list\n", "mapping"),
    ],
)
def test_bad_spaces_fail_clearly(tmp_path, text, needle):
    path = _write(tmp_path, text)
    with pytest.raises(KDSweepError) as e:
        load_space(path)
    assert needle in str(e.value)
    assert "space.yaml" in str(e.value) or "search space" in str(e.value)


@pytest.mark.unit
def test_key_valid_for_one_condition_only_is_accepted():
    space = parse_space(
        {"condition": {"grid": ["independent", "soft"]}, "params": {"temperature": 2.0}}, "t"
    )
    assert space.fixed["temperature"] == 2.0


@pytest.mark.unit
def test_overrides_parse_yaml_scalars():
    assert parse_overrides(["alpha=0.5", "student=L4-H256", "epochs=3", "x=[1, 2]"]) == {
        "alpha": 0.5,
        "student": "L4-H256",
        "epochs": 3,
        "x": [1, 2],
    }
    with pytest.raises(KDSweepError):
        parse_overrides(["alpha"])


# ---------------------------------------------------------------- end to end (subprocess)
def _runs(tmp: Path) -> list:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp / 'mlruns.db'}")
    runs = []
    for exp in client.search_experiments():
        runs += client.search_runs([exp.experiment_id], max_results=1000)
    return client, runs


def _check_nested(tmp: Path, n_children: int | None = None) -> list:
    client, runs = _runs(tmp)
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert parents and children
    parent_ids = {p.info.run_id for p in parents}
    for c in children:
        assert c.data.tags["mlflow.parentRunId"] in parent_ids
        assert c.info.status in ("FINISHED", "KILLED", "FAILED"), c.info.status
        steps = [m.step for m in client.get_metric_history(c.info.run_id, "dev_accuracy")]
        assert steps == sorted(set(steps)) and steps[0] == 1, steps  # once per epoch
        assert c.data.tags["condition"] == c.data.params["condition"]
    assert all(p.info.status == "FINISHED" for p in parents)
    # exactly one run per trial
    trial_ids = [c.data.tags["kdsweep.trial_id"] for c in children]
    assert len(trial_ids) == len(set(trial_ids))
    if n_children is not None:
        assert len(children) == n_children
    return children


@pytest.mark.e2e
def test_temperature_smoke_with_gpu_request_on_cpu(tmp_path, cache_dir):
    res = _sweep("temperature", tmp_path, cache_dir, "--gpus-per-trial", "0.25")
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert "no GPU found" in res.stdout  # falls back in one line instead of hanging PENDING
    assert "best: soft T=" in res.stdout and "test_accuracy=" in res.stdout
    children = _check_nested(tmp_path, n_children=4)
    assert {c.data.params["temperature"] for c in children} == {"1", "2", "4", "8"}
    sweep_dir = tmp_path / "runs" / "temperature-text-fortunes-smoke"
    assert (sweep_dir / "trials.csv").read_text().count("\n") == 5
    assert "| soft T=" in (sweep_dir / "trials.md").read_text()


@pytest.mark.e2e
@pytest.mark.parametrize(
    "script, n",
    [("alpha", 5), ("strategy", 5), ("compression", 2), ("tune_kd", 2)],
)
def test_sweep_scripts_smoke(tmp_path, cache_dir, script, n):
    res = _sweep(script, tmp_path, cache_dir)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert "best:" in res.stdout
    children = _check_nested(tmp_path, n_children=n)
    if script == "strategy":
        assert {c.data.tags["condition"] for c in children} == {
            "independent",
            "soft",
            "hard",
            "hidden",
            "attention",
        }


@pytest.mark.e2e
def test_cascade_smoke(tmp_path, cache_dir):
    res = _sweep("cascade", tmp_path, cache_dir)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert "stage 1: best:" in res.stdout and "stage 2: best:" in res.stdout
    assert "taught by " + str(tmp_path / "runs") in res.stdout  # stage 2's teacher = stage 1's best
    # the stage table: accuracy and attribution similarity to own and original teacher per stage
    assert "attr cos to own teacher | attr cos to original teacher" in res.stdout
    assert "| 0 | original teacher |" in res.stdout and "| 2 | " in res.stdout


@pytest.mark.e2e
def test_bad_input_exits_2_before_ray(tmp_path, cache_dir):
    t0 = time.time()
    res = _sweep("temperature", tmp_path, cache_dir, "alpha=1.5", timeout=120)
    assert res.returncode == 2
    assert "alpha" in res.stderr and "[0.0, 1.0]" in res.stderr
    assert "Traceback" not in res.stderr
    res = _sweep("temperature", tmp_path, cache_dir, "dataset=/nonexistent/legal.csv", timeout=120)
    assert res.returncode == 2 and "/nonexistent/legal.csv" in res.stderr
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())
    assert time.time() - t0 < 300


@pytest.mark.e2e
def test_sigkill_then_same_command_resumes(tmp_path, cache_dir):
    """Kill the driver mid-sweep; the same command finishes it; one MLflow run per trial."""
    args = ["epochs=4"]
    cmd = [
        PY,
        str(ROOT / "sweeps" / "temperature.py"),
        "--smoke",
        "--storage",
        str(tmp_path / "runs"),
        "--mlflow-uri",
        f"sqlite:///{tmp_path / 'mlruns.db'}",
        *args,
    ]
    journal = tmp_path / "runs" / "temperature-text-fortunes-smoke" / "mlflow_journal.jsonl"
    proc = subprocess.Popen(
        cmd, env=_env(cache_dir), cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.time() + 300
    while time.time() < deadline:
        if journal.is_file() and journal.read_text().count('"ev": "result"') >= 2:
            break
        time.sleep(0.1)
    assert proc.poll() is None, "the sweep ended before the kill: nothing was resumed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    res = _sweep("temperature", tmp_path, cache_dir, *args)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert "resuming" in res.stdout
    children = _check_nested(tmp_path, n_children=4)
    client, _ = _runs(tmp_path)
    for c in children:
        assert c.info.status == "FINISHED"
        steps = [m.step for m in client.get_metric_history(c.info.run_id, "epoch")]
        assert steps == [1, 2, 3, 4] or c.data.tags.get("stopped_by") == "asha"
    # Only each trial's best and latest checkpoint are left (driver/pruning.py); the best
    # trial's, evaluated on test, loads.
    from trainables.checkpointing import checkpoint_epoch

    for trial_dir in journal.parent.glob("*/"):
        ckpts = list(trial_dir.glob("checkpoint_*"))
        assert 1 <= len(ckpts) <= 2 or not (trial_dir / "params.json").exists(), ckpts
    best = json.loads((journal.parent / "best.json").read_text())
    assert checkpoint_epoch(Path(best["checkpoint"])) is not None and "test" in best
    # a changed space is refused on resume, and earlier results stay
    res = _sweep("temperature", tmp_path, cache_dir, "epochs=4", "alpha=0.5", "--resume")
    assert res.returncode == 2 and "changed" in res.stderr
    assert (journal.parent / "trials.csv").is_file()


@pytest.mark.unit
def test_yaml_files_are_flat():
    """No YAML mini-language: plain mappings, lists and scalars only."""
    for path in (ROOT / "search_spaces").glob("*.yaml"):
        text = path.read_text()
        assert "!" not in text.replace("!=", ""), path
        yaml.safe_load(text)
