"""Random SIGKILLs of the sweep driver, each followed by the same command: nothing is lost."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from sweep_helpers import sweep_env

pytestmark = pytest.mark.infra

ROOT = Path(__file__).resolve().parents[1]


def test_five_random_kills_then_resume_match_an_uninterrupted_sweep(tmp_path, cache_dir):
    res = subprocess.run(
        [
            sys.executable,
            str(ROOT / "scripts" / "kill_resume.py"),
            "--kills",
            "5",
            "--seed",
            "1",
            "--workdir",
            str(tmp_path),
            "--",
            "epochs=6",
            "--no-asha",
        ],
        env=sweep_env(cache_dir),
        capture_output=True,
        text=True,
        timeout=1800,
    )
    summary = json.loads((tmp_path / "kill_resume.json").read_text())
    assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-2000:]
    assert summary["kills_done"] == 5 and summary["final_exit_code"] == 0
    assert summary["statuses"] == ["finished"] * 4  # every trial ended, all 6 epochs
    assert summary["max_redone_s"] <= 30  # Ray saves the state it restores every 10 s or more
    assert summary["mlflow"]["runs"] == 4 and summary["mlflow"]["duplicate_runs"] == 0
    assert summary["mlflow"]["running"] == 0
    assert not summary["checkpoints_not_loading"] and not summary["orphans_still_alive"]
    assert summary["table_diffs"] == []
