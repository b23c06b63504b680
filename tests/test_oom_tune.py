"""OOM recovery under real Ray Tune: FailureConfig retries the trial from its last checkpoint,
and the retry (a new actor) finds the halved batch in the trial's folder of the sweep storage."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[1]

DRIVER = r"""
import json, sys
from dataclasses import dataclass
from pathlib import Path
import ray, torch
from ray import tune

@dataclass
class Cfg:
    batch_size: int = 8
    grad_accum: int = 1

def trainable(config):
    from trainables import tune_io
    from trainables.oom_guard import oom_metrics, recover_oom

    @recover_oom
    def loop(cfg):
        start = 0
        with tune_io.restored_checkpoints() as ckpts:
            if ckpts:
                start = json.loads((ckpts[0] / "e.json").read_text())["epoch"]
        for epoch in range(start, 3):
            if epoch == 1 and cfg.batch_size > 2:  # epoch 2 fits only at batch size 2
                raise torch.cuda.OutOfMemoryError("CUDA out of memory. injected")
            d = tune_io.new_checkpoint_dir()
            (d / "e.json").write_text(json.dumps({"epoch": epoch + 1}))
            metrics = {"epoch": epoch + 1, "bs": cfg.batch_size, "accum": cfg.grad_accum}
            tune_io.report({**metrics, **oom_metrics()}, d)

    loop(Cfg())

storage = Path(sys.argv[1])
ray.init(num_cpus=1, include_dashboard=False, logging_level="WARNING", log_to_driver=False)
tuner = tune.Tuner(
    trainable,
    tune_config=tune.TuneConfig(reuse_actors=True),
    run_config=tune.RunConfig(
        storage_path=str(storage), name="x", failure_config=tune.FailureConfig(max_failures=4)
    ),
)
r = tuner.fit()[0]
rows = r.metrics_dataframe[["epoch", "bs", "accum"]].values.tolist()
print("RESULT " + json.dumps({"error": str(r.error or ""), "rows": rows,
                              "oom": {k: r.metrics.get(k) for k in ("oom_batch_size",
                                      "oom_grad_accum", "oom_recoveries")}}))
"""


def test_tune_retries_an_oom_from_the_checkpoint_with_the_halved_batch(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("RAY_ADDRESS", None)
    res = subprocess.run(
        [sys.executable, "-c", DRIVER, str(tmp_path / "runs")],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    line = next((ln for ln in res.stdout.splitlines() if ln.startswith("RESULT ")), None)
    assert line, res.stdout[-3000:] + res.stderr[-3000:]
    out = json.loads(line[len("RESULT ") :])
    assert out["error"] == ""
    # epoch 1 at 8; epoch 2 hit OOM at 8 and 4 (two retries, each from epoch 1's checkpoint)
    assert out["rows"] == [[1, 8, 1], [2, 2, 4], [3, 2, 4]]
    assert out["oom"] == {"oom_batch_size": 2, "oom_grad_accum": 4, "oom_recoveries": 2}
    (state_file,) = (tmp_path / "runs" / "x").glob("*/oom_state.json")  # in the sweep storage
    history = json.loads(state_file.read_text())["history"]
    assert [(h["batch_size"], h["epoch"]) for h in history] == [(8, 2), (4, 2)]
