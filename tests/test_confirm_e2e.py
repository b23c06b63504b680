"""The confirm stage end to end: a default text sweep with `--smoke --confirm 1 --confirm-seeds 2`
through the CLI prints the answer with test metrics, logs confirm runs under the sweep's MLflow
parent run, and the same command again reuses the finished confirm trials (no new training)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from sweep_helpers import run_sweep_script

pytestmark = pytest.mark.e2e

# Two temperatures instead of four keep the search at 2 trials (confirm: 2 arms x 2 seeds).
ARGS = ("--quiet", "--confirm", "1", "--confirm-seeds", "2", "temperature={grid: [2, 4]}")
SWEEP = "temperature-text-fortunes-smoke"


def _confirm_runs(tmp: Path) -> tuple[list, list]:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp / 'mlruns.db'}")
    runs = []
    for exp in client.search_experiments():
        runs += client.search_runs([exp.experiment_id], max_results=1000)
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    confirm = [r for r in runs if r.data.tags.get("kdsweep.stage") == "confirm"]
    return parents, confirm


def _trained_epochs(confirm_dir: Path) -> int:
    """Epoch results written by the confirm trials (a rerun that trains would add lines)."""
    return sum(len(p.read_text().splitlines()) for p in confirm_dir.glob("*/result.json"))


def test_confirm_stage_end_to_end_and_rerun_reuses_it(tmp_path, cache_dir):
    first = run_sweep_script("temperature", tmp_path, cache_dir, *ARGS)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    out = first.stdout
    assert "confirm stage: 2 config(s) x 2 fresh seed(s) [1000, 1001]" in out
    assert "test accuracy (95% CI)" in out and "independent L2-H128 [baseline]" in out
    assert "vs independent L2-H128 | pairs" in out and "Holm p" in out
    assert out.count("[kdsweep] Ray (local) started") == 1  # one Ray for search and confirm

    sweep_dir = tmp_path / "runs" / SWEEP
    saved = json.loads((sweep_dir / "confirm.json").read_text())
    assert saved["complete"] and saved["seeds"] == [1000, 1001]
    assert len(saved["trials"]) == 4 and all(t["done"] for t in saved["trials"])
    assert all(math.isfinite(t["test"]["test_accuracy"]) for t in saved["trials"])
    (comp,) = saved["answer"]["comparisons"]
    # 2 confirm seeds: no verdict (one degree of freedom), and no bootstrap CI; notes say why
    assert comp["verdict"].startswith("no verdict: 2 paired seeds (needs >= 3")
    assert "bootstrap CI: shown from 10 paired seeds on" in out
    assert "search: one seed per config" in out and "is the answer" in out
    assert comp["verdict"] in out and "| verdict |" in (sweep_dir / "confirm.md").read_text()

    parents, confirm = _confirm_runs(tmp_path)
    assert len(parents) == 1 and "confirm.verdict.0" in parents[0].data.tags
    assert len(confirm) == 4
    for run in confirm:
        assert run.data.tags["mlflow.parentRunId"] == parents[0].info.run_id
        assert run.info.status == "FINISHED" and "test_accuracy" in run.data.metrics
    assert {r.data.params["seed"] for r in confirm} == {"1000", "1001"}

    confirm_dir = tmp_path / "runs" / f"{SWEEP}-confirm-k1-s2"
    journal = sweep_dir / "mlflow_journal.jsonl"
    epochs, starts = _trained_epochs(confirm_dir), journal.read_text().count('"ev": "start"')
    second = run_sweep_script("temperature", tmp_path, cache_dir, *ARGS)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    assert "confirm stage" in second.stdout and "resuming" in second.stdout
    assert comp["verdict"] in second.stdout
    assert _trained_epochs(confirm_dir) == epochs  # no confirm trial trained again
    assert journal.read_text().count('"ev": "start"') == starts  # no trial started again
    assert len(_confirm_runs(tmp_path)[1]) == 4  # no new MLflow runs
    again = json.loads((sweep_dir / "confirm.json").read_text())
    assert [t["test"] for t in again["trials"]] == [t["test"] for t in saved["trials"]]
