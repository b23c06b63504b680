"""bench/gpu_check.py: one line and exit 0 without a GPU; its summary read from evidence files
(what a real card's run writes), so the part that judges the evidence is checked here too."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))


@pytest.mark.e2e
def test_without_a_gpu_it_prints_one_line_and_exits_0(tmp_path):
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "PYTHONPATH": str(ROOT)}
    res = subprocess.run(
        [sys.executable, "bench/gpu_check.py", "--out", str(tmp_path / "evidence")],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr[-2000:]
    lines = res.stdout.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("gpu_check: no CUDA GPU visible (torch ")
    assert not (tmp_path / "evidence").exists()  # nothing written


@pytest.mark.unit
def test_summary_judges_packing_driver_memory_and_the_parts(tmp_path):
    import gpu_check

    (tmp_path / "smi_apps.csv").write_text(
        "time,pid,used_mib\n1.0,100,0\n1.5,200,1900\n2.0,201,2100\n2.0,200,2000\n2.5,100,420\n"
    )
    (tmp_path / "sweep.log").write_text(
        "[kdsweep] a GPU is visible and no --gpus-per-trial was given: ...\n"
        "[kdsweep] 4 trials x 2.0 GiB on a 24 GiB card: --gpus-per-trial 0.25\n"
    )
    (tmp_path / "conditions.json").write_text(json.dumps(
        [{"task": "text", "condition": "soft", "precision": "fp16", "ok": True},
         {"task": "asr", "condition": "self", "precision": "bf16", "ok": False, "error": "x"}]
    ))  # fmt: skip
    rows = [{"part": "sweep", "rc": 0, "seconds": 60.0}]
    names = {"200": "ray::ImplicitFunc.train", "201": "ray::ImplicitFunc.train"}
    text = gpu_check.summarize(tmp_path, rows, names, {"sweep": "100"})
    assert "sweep plan: [kdsweep] 4 trials x 2.0 GiB" in text
    assert "| 201 | ray::ImplicitFunc.train | 2100 | 1.03 of the plan |" in text
    assert "driver holds GPU memory: YES (420 MiB)" in text  # the driver's pid was on the card
    assert "default (no flag) packs trials: yes" in text
    assert "conditions: 1/2 ok" in text and "FAILED" in text
    assert (tmp_path / "summary.md").read_text() == text
