"""The live status callback inside a real Tune run (a local Ray, in a subprocess)."""

from __future__ import annotations

import os
import re
import secrets
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[1]

DRIVER = r"""
import sys, time
import ray
from ray import tune
from driver.progress import LiveProgress

def fn(config):
    for epoch in range(1, 4):
        time.sleep(0.3)
        tune.report({"epoch": epoch, "acc": config["q"] * epoch})

ray.init(num_cpus=2, num_gpus=0, include_dashboard=False, logging_level="ERROR",
         log_to_driver=False)
cb = LiveProgress("acc", "max", max_t=3, describe=lambda c: f"q={c['q']}", interval_s=0)
try:
    tune.Tuner(
        tune.with_resources(fn, {"cpu": 1}),
        param_space={"q": tune.grid_search([0.1, 0.2, 0.3])},
        tune_config=tune.TuneConfig(metric="acc", mode="max"),
        run_config=tune.RunConfig(storage_path=sys.argv[1], name="live", verbose=0,
                                  callbacks=[cb]),
    ).fit()
finally:
    cb.close()
    ray.shutdown()
# what Tune saved with the experiment, for Tuner.restore to hand back (set_state)
import glob, pickle
(saved,) = glob.glob(sys.argv[1] + "/live/callback-states-*.pkl")
print("saved timings:", [s for s in pickle.load(open(saved, "rb")).values() if s])
"""


def test_live_status_during_a_real_tune_run(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(
        RAY_AUTH_MODE="token",  # a private token: nothing read from or written to ~/.ray
        RAY_AUTH_TOKEN=secrets.token_hex(32),
        RAY_USAGE_STATS_ENABLED="0",
        PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH", "")])),
        PYTHONUNBUFFERED="1",
    )
    res = subprocess.run(
        [sys.executable, "-c", DRIVER, str(tmp_path)],
        env=env, capture_output=True, text=True, timeout=400, cwd=tmp_path,
    )  # fmt: skip
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    status = [ln for ln in res.stdout.splitlines() if ln.startswith("[kdsweep]")]
    assert status, res.stdout[-3000:]
    assert "0 running, 0 pending, 3 finished, 0 pruned, 0 errored" in status[-1]
    assert any(" running," in ln and not ln.startswith("[kdsweep] 0s  0 running") for ln in status)
    assert "best acc=0.9000  q=0.3" in res.stdout
    assert re.search(r"  > q=0\.\d  epoch [1-3]/3  acc=", res.stdout)
    assert not re.search(r"[\x00-\x08\x0b-\x1f\x7f]", res.stdout)  # plain lines in a pipe
    # the ETA's timings go with the experiment state: a resumed sweep's estimate starts from them
    saved = re.search(r"saved timings: \[\{'costs': \{(.*)\}\}\]", res.stdout)
    assert saved and "'final_count': 3" in saved.group(1) and "'mid_n': 3" in saved.group(1)
