"""Running sweep scripts the way a user does (subprocess), shared by the end-to-end tests."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable


def sweep_env(cache_dir: Path) -> dict[str, str]:
    """The caller's environment, with the session cache and no cluster/MLflow server leaking in."""
    env = dict(os.environ)
    env.update(KDSWEEP_HOME=str(cache_dir), PYTHONUNBUFFERED="1")
    env.pop("RAY_ADDRESS", None)
    env.pop("MLFLOW_TRACKING_URI", None)
    return env


def sweep_cmd(script: str, tmp: Path, *extra: str) -> list[str]:
    """`python sweeps/<script>.py --smoke` with storage and MLflow store under `tmp`."""
    return [
        PY,
        str(ROOT / "sweeps" / f"{script}.py"),
        "--smoke",
        "--storage",
        str(tmp / "runs"),
        "--mlflow-uri",
        f"sqlite:///{tmp / 'mlruns.db'}",
        *extra,
    ]


def run_sweep_script(script: str, tmp: Path, cache_dir: Path, *extra: str, timeout: int = 900):
    return subprocess.run(
        sweep_cmd(script, tmp, *extra),
        env=sweep_env(cache_dir),
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=tmp,
    )


def group_members(pgid: int) -> list[int]:
    """Live (non-zombie) processes of one process group (to stop and check what a test started)."""
    pids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[0] != "Z" and int(fields[2]) == pgid:
            pids.append(int(stat.parent.name))
    return pids
