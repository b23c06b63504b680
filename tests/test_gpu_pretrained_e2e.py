"""`sweeps/pretrained.py --gpus-per-trial 0.25` end to end on a simulated GPU (issue 22, item 5:
it crashed with parse_size('shipped:minilm')).

The driver process sees one GPU (`torch.cuda.device_count` patched, so `ray.init` advertises
one, as on a CPU box `ray.init(num_gpus=1)` fakes it) and the memory probe's measurement is
given (no card to measure on); everything else is the user's command: the students are ranked
by their parameter counts, preparation runs in a child process (a GPU is "visible"), the
trials take 0.25 of the advertised GPU each, find no usable CUDA and train on the CPU."""

from __future__ import annotations

import json
import sys

import pytest
from sweep_helpers import ROOT, sweep_cmd, sweep_env

pytestmark = pytest.mark.e2e

DRIVER = r"""
import json, runpy, sys
import torch
import driver.packing as packing

torch.cuda.device_count = lambda: 1
out = sys.argv.pop(1)

def fake_measure(configs, precisions):
    with open(out, "w") as f:
        json.dump({"configs": configs, "precisions": precisions}, f)
    return 2 * 2**30, 22 * 2**30, 24 * 2**30

packing.measure = fake_measure
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def test_pretrained_sweep_at_a_gpu_share_runs(cache_dir, tmp_path):
    import subprocess

    probed = tmp_path / "probed.json"
    cmd = sweep_cmd(
        "pretrained",
        tmp_path,
        "--gpus-per-trial",
        "0.25",
        "--no-test",
        "student=[L2-H128, shipped:minilm]",
        "attribution_examples=0",
        "epochs=1",
    )
    cmd = [sys.executable, "-c", DRIVER, str(probed), *cmd[1:]]  # fmt: skip
    env = {**sweep_env(cache_dir), "PYTHONPATH": str(ROOT)}
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1500, cwd=tmp_path)
    out = res.stdout + res.stderr
    assert res.returncode == 0, out[-4000:]
    assert "4 trial(s) x 2.0 GiB fit the card at --gpus-per-trial 0.25" in out
    got = json.loads(probed.read_text())
    assert {c["condition"] for c in got["configs"]} == {"independent", "soft"}
    assert {c["student"] for c in got["configs"]} == {"shipped:minilm"}  # the biggest student
    assert "0.25 GPU each" in out, out[-4000:]
