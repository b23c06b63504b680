"""Speech sweeps through their public entry points: `sweeps/self_distill.py --smoke`,
`sweeps/temperature.py --task asr --smoke` (Ray + MLflow) and `sweeps/decode.py` on a checkpoint."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from conftest import SMALL_ASR, needs_tts
from sweep_helpers import run_sweep_script as _sweep
from sweep_helpers import sweep_env as _env

from driver.space import load_space

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable


def _runs(tmp: Path):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp / 'mlruns.db'}")
    runs = []
    for exp in client.search_experiments():
        runs += client.search_runs([exp.experiment_id], max_results=1000)
    return client, runs


def _check_nested(tmp: Path, n_children: int) -> list:
    client, runs = _runs(tmp)
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert len(children) == n_children
    for c in children:
        assert c.data.tags["mlflow.parentRunId"] == parents[0].info.run_id
        assert c.info.status == "FINISHED", c.info.status
        steps = [m.step for m in client.get_metric_history(c.info.run_id, "dev_wer")]
        assert steps == [1, 2], steps  # dev WER once per epoch
        assert "dev_wer_beam" in c.data.metrics and "ood_wer" in c.data.metrics
        assert c.data.tags["task"] == "asr"
    return children


# ---------------------------------------------------------------- spaces (fast)
@pytest.mark.unit
def test_task_asr_picks_the_speech_spaces():
    from driver.cli import build_parser, space_from_args

    for name, conditions in [
        ("temperature", ["soft"]),
        ("alpha", ["soft"]),
        ("strategy", ["independent", "soft", "hard", "hidden", "self"]),
        ("compression", ["independent", "soft"]),
    ]:
        args = build_parser(name, None).parse_args(["--task", "asr"])
        space = space_from_args(name, args)[0]
        assert space.task == "asr" and space.conditions == conditions
        assert space.source.endswith(f"asr_{name}.yaml")
    sd = load_space("self_distill")
    assert sd.task == "asr" and sd.conditions == ["independent", "self"]
    assert (sd.fixed["alpha"], sd.fixed["beta"], sd.fixed["gamma"]) == (0.7, 0.2, 0.1)


@pytest.mark.unit
def test_smoke_fixes_asr_sizes():
    from driver.cli import build_parser, space_from_args

    args = build_parser("compression", None).parse_args(["--task", "asr", "--smoke"])
    space = space_from_args("compression", args)[0]
    assert "hidden" not in space.dists and space.fixed["hidden"] == 32
    assert space.fixed["n_utterances"] == 40 and space.fixed["epochs"] == 2


# ---------------------------------------------------------------- decode grid (no Ray)
@pytest.mark.e2e
@needs_tts
def test_decode_grid_on_a_trial_checkpoint(tmp_path, cache_dir):
    import torch

    from trainables.speech.trainable import ASR_TRAINABLES

    independent = ASR_TRAINABLES["independent"]  # the record: a dict in, typed config built
    from trainables.tune_io import local_session

    torch.set_num_threads(1)
    with local_session(tmp_path / "trial") as s:
        independent({**SMALL_ASR, "cache_dir": str(cache_dir), "eval_cmu": False})
    cmd = [
        PY,
        str(ROOT / "sweeps" / "decode.py"),
        str(tmp_path / "trial"),  # a trial dir: its latest checkpoint is used
        "--lm-weights",
        "0.5,1.0",
        "--word-bonus",
        "0,2",
        "--beam-widths",
        "4",
        "--mlflow-uri",
        f"sqlite:///{tmp_path / 'mlruns.db'}",
    ]
    res = subprocess.run(
        cmd, env=_env(cache_dir), capture_output=True, text=True, timeout=600, cwd=tmp_path
    )
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert str(s.last_checkpoint) in res.stdout and "best: lm_weight=" in res.stdout
    client, runs = _runs(tmp_path)
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert len(parents) == 1 and len(children) == 4
    assert {(c.data.params["lm_weight"], c.data.params["word_bonus"]) for c in children} == {
        ("0.5", "0.0"),
        ("0.5", "2.0"),
        ("1.0", "0.0"),
        ("1.0", "2.0"),
    }
    for c in children + parents:
        assert c.info.status == "FINISHED"
    assert all("dev_wer" in c.data.metrics for c in children)
    assert "best_dev_wer" in parents[0].data.metrics
    bad = subprocess.run(
        [PY, str(ROOT / "sweeps" / "decode.py"), str(tmp_path / "nothing-here")],
        env=_env(cache_dir),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert bad.returncode == 2 and "nothing-here" in bad.stderr and "Traceback" not in bad.stderr


# ---------------------------------------------------------------- end to end (Ray)
@pytest.mark.e2e
@needs_tts
def test_self_distill_smoke(tmp_path, cache_dir):
    res = _sweep("self_distill", tmp_path, cache_dir)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert "best: " in res.stdout and "test_wer=" in res.stdout and "test_wer_beam=" in res.stdout
    children = _check_nested(tmp_path, n_children=2)
    assert {c.data.tags["condition"] for c in children} == {"independent", "self"}
    client, _ = _runs(tmp_path)
    (self_run,) = [c for c in children if c.data.tags["condition"] == "self"]
    temps = [m.value for m in client.get_metric_history(self_run.info.run_id, "temperature")]
    assert temps == [4.0, 3.5]  # milestones 30,70 of 80 -> 1,2 of 2 epochs
    assert self_run.data.tags["twin_id"]  # the twin was stored before the trials started
    # what the report's fairness columns read: the twin's training seconds, steps per epoch
    assert float(self_run.data.tags["twin_train_seconds"]) > 0
    assert 0 <= float(self_run.data.tags["twin_dev_wer_beam"]) <= 1.5  # decoded at preparation
    assert self_run.data.metrics["steps_per_epoch"] >= 1


@pytest.mark.e2e
@needs_tts
def test_temperature_sweep_task_asr_smoke(tmp_path, cache_dir):
    res = _sweep("temperature", tmp_path, cache_dir, "--task", "asr")
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert "temperature-asr-commands-smoke" in res.stdout
    children = _check_nested(tmp_path, n_children=4)
    assert {c.data.params["temperature"] for c in children} == {"1", "2", "4", "8"}
    assert all(c.data.tags["teacher_id"] for c in children)
    table = (tmp_path / "runs" / "temperature-asr-commands-smoke" / "trials.md").read_text()
    assert "| soft T=" in table
