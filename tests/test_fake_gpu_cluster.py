"""Trials at a GPU share, exercised without a GPU (issue 17, item 7).

A Ray head started with `--num-gpus 1` advertises a GPU this machine does not have. A Tuner
connected to it with `--address`-style `ray.init(address=...)` runs 4 trials at
`{"cpu": 1, "gpu": 0.25}`: they must run at the same time (each trial waits until all four have
started, so the check needs no timing), each must see the GPU id Ray assigned it (in
`ray.get_gpu_ids()` and CUDA_VISIBLE_DEVICES), and the trial code must cope with that device
not being usable (`torch.cuda.is_available()` False, the project's `pick_device` falls back to
the CPU).

Token auth stays on: the head and the driver share a random token given as RAY_AUTH_TOKEN in
their environment only (nothing is read from or written to ~/.ray). The Ray processes are
stopped by their process group (never `ray stop`, which stops every Ray on the machine).
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from sweep_helpers import group_members

pytestmark = pytest.mark.infra

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable

DRIVER = r"""
import json, os, sys, time
from pathlib import Path
import ray
from ray import tune

address, out, meet = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])

def trial(config):
    import torch
    from kdsweep.text.models import pick_device
    t0 = time.time()
    me = meet / f"{config['i']}"
    me.write_text(str(t0))
    deadline = time.time() + 180  # all four must be running at once to see each other
    while len(list(meet.iterdir())) < 4 and time.time() < deadline:
        time.sleep(0.2)
    x = torch.ones(4, device=pick_device("auto"))  # the trial code copes: falls back to CPU
    tune.report({
        "together": len(list(meet.iterdir())),
        "start": t0,
        "end": time.time(),
        "gpu_ids": [str(g) for g in ray.get_gpu_ids()],
        "cuda_visible": os.environ.get("CUDA_VISIBLE_DEVICES"),
        "cuda_available": torch.cuda.is_available(),
        "device": str(x.device),
    })

ray.init(address=address, logging_level="ERROR", log_to_driver=False,
         runtime_env={"env_vars": {"PYTHONPATH": os.environ["PYTHONPATH"]}})
print("cluster", json.dumps(ray.cluster_resources()))
tuner = tune.Tuner(
    tune.with_resources(trial, {"cpu": 1, "gpu": 0.25}),
    param_space={"i": tune.grid_search([0, 1, 2, 3])},
    tune_config=tune.TuneConfig(max_concurrent_trials=4),
    run_config=tune.RunConfig(storage_path=str(out / "runs"), name="fakegpu", verbose=0),
)
grid = tuner.fit()
rows = [r.metrics for r in grid]
out.joinpath("rows.json").write_text(json.dumps(
    [{k: m.get(k) for k in ("together", "start", "end", "gpu_ids", "cuda_visible",
      "cuda_available", "device")} for m in rows]))
print("errors", grid.num_errors)
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stop_group(pgid: int, grace: float = 15.0) -> list[int]:
    """SIGTERM then SIGKILL the one process group this test started; returns what is left."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, sig)
        deadline = time.time() + grace
        while time.time() < deadline and group_members(pgid):
            time.sleep(0.5)
        if not group_members(pgid):
            break
    return group_members(pgid)


def test_four_trials_share_one_advertised_gpu_that_does_not_exist(tmp_path):
    root = Path(tempfile.mkdtemp(prefix="kdgpu-", dir="/tmp"))  # short: Ray's socket paths
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "CUDA_VISIBLE_DEVICES")}
    env.update(
        RAY_AUTH_MODE="token",
        RAY_AUTH_TOKEN=secrets.token_hex(32),
        RAY_USAGE_STATS_ENABLED="0",
        PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH", "")])),
        PYTHONUNBUFFERED="1",
    )
    port = _free_port()
    ray_bin = str(Path(PY).with_name("ray"))
    log = (root / "head.log").open("w")
    head = subprocess.Popen(
        [ray_bin, "start", "--head", f"--port={port}", "--num-gpus=1", "--num-cpus=4",
         "--node-ip-address=127.0.0.1", "--include-dashboard=false",
         f"--dashboard-port={_free_port()}", f"--temp-dir={root / 'ray'}",
         "--object-store-memory=100000000", "--disable-usage-stats"],
        env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    try:
        assert head.wait(timeout=240) == 0, (root / "head.log").read_text()[-3000:]
        meet = tmp_path / "meet"
        meet.mkdir()
        res = subprocess.run(
            [PY, "-c", DRIVER, f"127.0.0.1:{port}", str(tmp_path), str(meet)],
            env=env, capture_output=True, text=True, timeout=500, cwd=tmp_path,
        )  # fmt: skip
        assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
        assert "errors 0" in res.stdout, res.stdout[-3000:] + res.stderr[-3000:]
        cluster = json.loads(res.stdout.split("cluster ", 1)[1].splitlines()[0])
        assert cluster["GPU"] == 1.0
        rows = json.loads((tmp_path / "rows.json").read_text())
        assert len(rows) == 4
        assert all(r["together"] == 4 for r in rows)  # all four were running at once
        assert max(r["start"] for r in rows) < min(r["end"] for r in rows)  # overlapping
        for r in rows:
            assert r["gpu_ids"] == ["0"], r  # the device Ray assigned: the one advertised GPU
            assert r["cuda_visible"] == "0", r
            assert r["cuda_available"] is False, r  # not usable here...
            assert r["device"] == "cpu", r  # ...and the trial code falls back to the CPU
    finally:
        log.close()
        left = _stop_group(head.pid)
        shutil.rmtree(root, ignore_errors=True)
        assert not left, f"Ray processes left running: {left}"
