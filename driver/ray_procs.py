"""Ray helper processes left behind by a SIGKILLed driver: record them, reap them next start.

Measured on Ray 2.60: after `kill -9` of the driver, `ray::DashboardAgent` and
`ray::RuntimeEnvAgent` (and sometimes raylet/gcs_server) keep running. We only ever touch PIDs
this project recorded, and only if they still look like Ray processes (PIDs get reused).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import psutil


def _looks_like_ray(proc: psutil.Process) -> bool:
    try:
        text = " ".join(proc.cmdline()) + " " + proc.name()
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return False
    return "ray" in text.lower()


def record(pid_file: Path) -> int:
    """Save the PIDs (with start times) of every process this driver started, e.g. Ray's."""
    procs = psutil.Process().children(recursive=True)
    entries = []
    for p in procs:
        try:
            entries.append({"pid": p.pid, "created": p.create_time()})
        except psutil.NoSuchProcess:
            continue
    pid_file.parent.mkdir(parents=True, exist_ok=True)
    pid_file.write_text(json.dumps({"driver": os.getpid(), "procs": entries}))
    return len(entries)


def reap(pid_file: Path) -> int:
    """Kill leftovers of a previous driver that died without shutting Ray down."""
    if not pid_file.is_file():
        return 0
    try:
        data = json.loads(pid_file.read_text())
    except json.JSONDecodeError:
        pid_file.unlink()
        return 0
    if psutil.pid_exists(data.get("driver", -1)):
        try:
            if (
                _looks_like_ray(psutil.Process(data["driver"]))
                or "python" in psutil.Process(data["driver"]).name()
            ):
                return 0  # that driver is still alive (another sweep): leave its Ray alone
        except psutil.NoSuchProcess:
            pass
    killed = []
    for e in data.get("procs", []):
        try:
            p = psutil.Process(e["pid"])
            if abs(p.create_time() - e["created"]) < 1.0 and _looks_like_ray(p):
                p.kill()
                killed.append(p)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    psutil.wait_procs(killed, timeout=5)
    pid_file.unlink()
    return len(killed)


def forget(pid_file: Path) -> None:
    """After a clean `ray.shutdown()` there is nothing left to reap."""
    pid_file.unlink(missing_ok=True)
