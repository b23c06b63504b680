"""The GPU check: one command on a machine with an NVIDIA card, evidence in one folder.

    python bench/gpu_check.py [--out gpu_check_<time>] [--full-sweep]

Without a usable CUDA GPU it prints one line and exits 0. With one, in order (each part in
its own process with a time cap; the caps add up to 5:45, so under 6 minutes on one card; a
failing part is recorded and the others still run), `nvidia-smi` sampled every 0.5 s:

1. card.txt: `nvidia-smi`, torch and its CUDA, capability, `torch.cuda.get_arch_list()`, bf16
   support, and kdsweep's start-up check (`kdsweep.gpu.check_cuda_build`);
2. bench.log: `bench/gpu.py --quick --no-sweeps` (probe per precision, bf16/fp16 vs fp32,
   planned vs measured memory per trial, packing ratio 4 x 0.25 vs 1 at a time, OOM path);
3. conditions.log/.json: every text and speech condition for one epoch at fp32/bf16/fp16, a
   kill, and a resume from the epoch checkpoint (`bench/gpu_check_trials.py conditions`);
4. oom.log/.json: an induced OOM in training and one in evaluation, each recovered;
5. sweep.log: `sweeps/temperature.py --smoke --no-test` with no `--gpus-per-trial` (the full
   default sweep with --full-sweep): does the default pack trials, and does the driver hold
   GPU memory (its process in nvidia-smi's list)?
6. smi_apps.csv / smi_gpu.csv and summary.md: per process, its peak memory on the card and
   what it was (driver, Ray trial, probe, bench worker), against the sweep's
   "[kdsweep] N trials x X GiB" line; the verdict of every part.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable
# (part, command, time cap in seconds)
PARTS = [
    ("bench", [PY, "bench/gpu.py", "--quick", "--no-sweeps"], 80),
    ("conditions", [PY, "bench/gpu_check_trials.py", "conditions", "{out}"], 150),
    ("oom", [PY, "bench/gpu_check_trials.py", "oom", "{out}"], 40),
    ("sweep", [PY, "sweeps/temperature.py", "--smoke", "--no-test", "--storage", "{out}/runs"],
     75),
]  # fmt: skip
CARD = r"""
import json, torch
from kdsweep.gpu import check_cuda_build
c = torch.cuda
info = {"torch": torch.__version__, "cuda": torch.version.cuda, "arch_list": c.get_arch_list(),
        "devices": [{"name": c.get_device_name(i), "capability": c.get_device_capability(i),
                     "memory_gib": round(c.get_device_properties(i).total_memory / 2**30, 1)}
                    for i in range(c.device_count())],
        "bf16_native": c.is_bf16_supported(including_emulation=False)}
print(json.dumps(info, indent=1))
try:
    print("kdsweep check:", check_cuda_build(["fp32", "bf16", "fp16"]))
except Exception as e:
    print("kdsweep check:", type(e).__name__, e)
"""


def usable_gpu() -> str:
    """'' when a CUDA GPU is usable here, else why not (one line)."""
    import torch

    if torch.cuda.device_count() == 0:
        return f"no CUDA GPU visible (torch {torch.__version__}, CUDA {torch.version.cuda})"
    return ""


class Sampler(threading.Thread):
    """nvidia-smi every `every` seconds: per-process and whole-card memory, with each new
    process's command line (read while it runs) to name it in the summary."""

    def __init__(self, out: Path, every: float = 0.5):
        super().__init__(daemon=True)
        self.out, self.every, self.stop = out, every, threading.Event()
        self.names: dict[str, str] = {}

    def run(self) -> None:
        apps, card = (self.out / "smi_apps.csv").open("w"), (self.out / "smi_gpu.csv").open("w")
        apps.write("time,pid,used_mib\n")
        card.write("time,used_mib,total_mib,util_pct\n")
        while not self.stop.is_set():
            now = f"{time.time():.1f}"
            for pid, mib in _smi("--query-compute-apps=pid,used_memory"):
                apps.write(f"{now},{pid},{mib}\n")
                if pid not in self.names:
                    self.names[pid] = _cmdline(pid)
            for row in _smi("--query-gpu=memory.used,memory.total,utilization.gpu"):
                card.write(f"{now},{','.join(row)}\n")
            apps.flush()
            card.flush()
            self.stop.wait(self.every)
        apps.close()
        card.close()


def _smi(query: str) -> list[list[str]]:
    try:
        out = subprocess.run(["nvidia-smi", query, "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, timeout=10).stdout  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return []
    return [[c.strip() for c in line.split(",")] for line in out.splitlines() if line.strip()]


def _cmdline(pid: str) -> str:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return "?"
    return raw.replace(b"\0", b" ").decode(errors="replace").strip()[:200]


def run_part(name: str, cmd: list[str], cap: float, out: Path, pids: dict) -> dict:
    """Run one part in its own process group; past `cap` seconds: SIGINT, then SIGKILL."""
    cmd = [c.format(out=out) for c in cmd]
    t0 = time.time()
    with (out / f"{name}.log").open("w") as log:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True, env=_env())  # fmt: skip
        pids[name] = str(proc.pid)
        try:
            rc = proc.wait(timeout=cap)
        except subprocess.TimeoutExpired:
            rc = "timeout"
            for sig, grace in ((signal.SIGINT, 20), (signal.SIGKILL, 10)):
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, sig)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(timeout=grace)
                    break
    row = {"part": name, "rc": rc, "seconds": round(time.time() - t0, 1)}
    print(f"gpu_check: {name}: rc={rc} in {row['seconds']} s ({out / (name + '.log')})", flush=True)
    return row


def _env() -> dict:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH", "")]))
    return env


def summarize(out: Path, rows: list[dict], names: dict[str, str], pids: dict) -> str:
    """summary.md: the parts' verdicts, the memory per process, the sweep's plan against it."""
    peaks: dict[str, int] = {}
    for line in (out / "smi_apps.csv").read_text().splitlines()[1:]:
        _, pid, mib = line.split(",")
        with contextlib.suppress(ValueError):
            peaks[pid] = max(peaks.get(pid, 0), int(float(mib)))
    sweep_log = (
        (out / "sweep.log").read_text(errors="replace") if (out / "sweep.log").exists() else ""
    )
    plan = re.search(r"\[kdsweep\] (\d+) trials? x ([\d.]+) GiB", sweep_log)
    planned_mib = float(plan.group(2)) * 1024 if plan else None
    lines = ["# GPU check", "", "| part | rc | seconds |", "| --- | --- | --- |"]
    lines += [f"| {r['part']} | {r['rc']} | {r['seconds']} |" for r in rows]
    lines += ["", f"sweep plan: {plan.group(0) if plan else 'no packing line in sweep.log'}",
              "", "| pid | what | peak MiB | vs plan |", "| --- | --- | --- | --- |"]  # fmt: skip
    driver = pids.get("sweep")
    for pid, mib in sorted(peaks.items(), key=lambda kv: -kv[1]):
        what = "SWEEP DRIVER" if pid == driver else names.get(pid, "?")
        trial = "ray::" in what or "ImplicitFunc" in what
        vs = f"{mib / planned_mib:.2f} of the plan" if trial and planned_mib else ""
        lines.append(f"| {pid} | {what[:90]} | {mib} | {vs} |")
    held = driver in peaks
    lines += [
        "",
        f"driver holds GPU memory: {'YES (' + str(peaks[driver]) + ' MiB)' if held else 'no'}",
    ]
    lines.append(f"default (no flag) packs trials: {'yes' if plan else 'NO'}")
    for part in ("conditions", "oom"):
        path = out / f"{part}.json"
        if path.exists():
            runs = json.loads(path.read_text())
            bad = [r for r in runs if not r.get("ok")]
            lines.append(f"{part}: {len(runs) - len(bad)}/{len(runs)} ok"
                         + "".join(f"\n  - FAILED {json.dumps(r)}" for r in bad))  # fmt: skip
    text = "\n".join(lines) + "\n"
    (out / "summary.md").write_text(text)
    return text


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=None, help="evidence folder (default: new)")
    p.add_argument("--full-sweep", action="store_true", help="the default sweep, not --smoke")
    args = p.parse_args(argv)
    why = usable_gpu()
    if why:
        print(f"gpu_check: {why}: nothing to check (run it on a machine with an NVIDIA GPU)")
        return 0
    out = (args.out or ROOT / f"gpu_check_{time.strftime('%Y%m%d-%H%M%S')}").resolve()
    out.mkdir(parents=True, exist_ok=True)
    with (out / "card.txt").open("w") as f:
        f.write(subprocess.run(["nvidia-smi"], capture_output=True, text=True).stdout)
        f.write(subprocess.run([PY, "-c", CARD], capture_output=True, text=True, cwd=ROOT,
                               env=_env()).stdout)  # fmt: skip
    print((out / "card.txt").read_text().splitlines()[-1], flush=True)
    sampler, rows, pids = Sampler(out), [], {}
    sampler.start()
    try:
        for name, cmd, cap in PARTS:
            if name == "sweep" and args.full_sweep:
                cmd, cap = [c for c in cmd if c != "--smoke"], 1800
            rows.append(run_part(name, cmd, cap, out, pids))
    finally:
        sampler.stop.set()
        sampler.join()
    print(summarize(out, rows, sampler.names, pids))
    print(f"gpu_check: evidence in {out}")
    return 0 if all(r["rc"] == 0 for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
