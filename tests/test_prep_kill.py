"""Each preparation stage, SIGKILLed in the middle, continues on the rerun (issue 17.4).

tests/prep_stage.py runs one stage (text teacher fine-tuning, speech teacher/twin training,
corpus synthesis, feature extraction) in its own process. With --slow it stops after its first
unit of saved progress (an epoch, three wav files, two feature chunks) and the test kills it
there with SIGKILL: nothing gets to clean up. The rerun must do only the remaining work, and
its result must equal an uninterrupted run's bit for bit (every stage is deterministic on the
CPU: the RNG state travels with the epoch checkpoint, noise seeds are fixed per utterance).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.infra

ROOT = Path(__file__).resolve().parents[1]
DRIVER = ROOT / "tests" / "prep_stage.py"
# stage -> (units of work of an uninterrupted run, units left after the kill)
WORK = {"text": (3, 2), "speech": (3, 2), "synthesis": (8, 5), "features": (20, 12)}


def _env() -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "KDSWEEP_QUIET": "1"}
    env.pop("CUDA_VISIBLE_DEVICES", None)
    return {**env, "CUDA_VISIBLE_DEVICES": ""}


def _run(stage: str, root: Path) -> tuple[dict, str]:
    proc = subprocess.run(
        [sys.executable, str(DRIVER), stage, str(root)],
        capture_output=True, text=True, env=_env(), timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1]), proc.stdout


def _kill_in_the_middle(stage: str, root: Path) -> None:
    proc = subprocess.Popen(
        [sys.executable, str(DRIVER), stage, str(root), "--slow"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(),
    )  # fmt: skip
    try:
        for line in proc.stdout:  # type: ignore[union-attr]
            if line.strip() == "KILLME":
                break
        else:
            pytest.fail(f"{stage} finished without pausing: {proc.stderr.read()[-3000:]}")  # type: ignore[union-attr]
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL


@pytest.mark.parametrize("stage", sorted(WORK))
def test_killed_stage_continues_and_equals_an_uninterrupted_run(stage: str, tmp_path: Path):
    total, left = WORK[stage]
    _kill_in_the_middle(stage, tmp_path / "killed")
    resumed, out = _run(stage, tmp_path / "killed")
    assert resumed["units"] == left, f"{stage}: the rerun redid finished work ({resumed})"
    if stage in ("text", "speech"):
        assert "resuming after epoch 1/3" in out
    fresh, _ = _run(stage, tmp_path / "fresh")
    assert fresh["units"] == total
    assert resumed["digest"] == fresh["digest"], f"{stage}: resumed result differs"
    again, _ = _run(stage, tmp_path / "killed")  # published: a third run does no work at all
    assert again["units"] == 0 and again["digest"] == fresh["digest"]
