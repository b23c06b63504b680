"""Kill the sweep driver at random points, resume each time, and check that nothing was lost.

    python scripts/kill_resume.py                      # 10 kills of `temperature --smoke`
    python scripts/kill_resume.py --kills 5 --seed 1   # CI size (tests/test_kill_resume.py)
    python scripts/kill_resume.py --script alpha -- epochs=3

The same sweep first runs once uninterrupted in another folder, as the reference; its number of
epoch reports places the kills at random points spread over the sweep (so a fast machine cannot
finish it before the last kill). Each round starts the sweep command, waits for its kill point,
waits a random 0-2 s more (cut short by the next epoch report), then SIGKILLs the driver (the
Ray processes it started are orphaned, as with a crash). After the last kill the command runs
to the end. Checks:

- every trial ended (finished or pruned), the resumed run exited 0;
- the work redone after each kill is bounded: a restart resumes from the latest checkpoint the
  saved experiment state names, and Ray writes that state every 10 s or more, so an epoch
  already logged but redone (journal `resumed` events) must have been reported at most
  REDONE_LIMIT_S before the kill (the epoch in flight at the kill is lost too, not counted);
- MLflow holds exactly one run per trial, none left RUNNING, every epoch logged once;
- every trial's last checkpoint loads (safetensors + `torch.load(weights_only=True)`), and no
  scratch checkpoint of a killed worker is left in /tmp;
- the Ray processes orphaned by each kill are gone (reaped by the next start, by recorded PID);
- the final table equals the uninterrupted sweep's: same trials, status, epochs and metric.

Prints a summary and writes it to <workdir>/kill_resume.json; exits 1 if any check failed.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # runnable without installing
from trainables.checkpointing import checkpoint_epoch  # noqa: E402
from trainables.tune_io import orphaned_scratch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CONFIG_COLS = {"trial_id", "label", "status", "epochs", "error"}
REDONE_LIMIT_S = 30.0  # Ray's experiment-state period (10 s) plus a loaded 2-core machine


def sweep_cmd(script: str, work: Path, extra: list[str]) -> list[str]:
    return [
        sys.executable,
        str(ROOT / "sweeps" / f"{script}.py"),
        "--smoke",
        "--no-test",
        "--storage",
        str(work / "runs"),
        "--mlflow-uri",
        f"sqlite:///{work / 'mlruns.db'}",
        *extra,
    ]


def journal_of(work: Path) -> list[dict]:
    out = []
    for path in (work / "runs").glob("*/mlflow_journal.jsonl"):
        for line in path.read_text().splitlines():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                break  # a line cut by the kill
    return out


def n_results(work: Path) -> int:
    return sum(ev["ev"] == "result" for ev in journal_of(work))


def redone_seconds(events: list[dict], kill_ts: list[float]) -> list[float]:
    """Per epoch logged, then redone after a resume: how long before the next kill it had
    been reported. Ray saves the experiment state a restart reads every 10 s or more, so only
    epochs reported in the last ~10 s before a kill can be lost."""
    first_ts: dict[tuple[str, int], float] = {}
    for ev in events:
        if ev["ev"] == "result":
            first_ts.setdefault((ev["trial"], ev["step"]), ev["ts"] / 1000)
    out = []
    for ev in events:
        if ev["ev"] != "resumed":
            continue
        for epoch in range(ev["from_epoch"] + 1, ev["logged_epoch"] + 1):
            reported = first_ts.get((ev["trial"], epoch), math.inf)
            kill = next((k for k in kill_ts if k > reported), None)  # kill_ts: in order
            if kill is not None:
                out.append(kill - reported)
    return out


def run_to_end(cmd: list[str], work: Path, env: dict, log: Path, timeout: float) -> int:
    with log.open("w") as f:
        return subprocess.run(
            cmd, cwd=work, env=env, stdout=f, stderr=subprocess.STDOUT, timeout=timeout
        ).returncode


def kill_points(total: int | None, kills: int, rng: random.Random) -> list[int] | None:
    """Epoch-report counts to kill at, spread over the sweep so every kill lands mid-sweep.

    With `total` (the uninterrupted sweep's report count) the kills are placed at random in
    the first three quarters of the reports, two apart where they fit: epochs redone after a
    kill add no report, and the last epochs of concurrent trials report in a burst, so a kill
    point near the end can be passed by a sweep that ends before the kill. Without `total`
    (`--no-reference`) each round waits for 1-2 new reports instead.
    """
    if total is None:
        return None
    hi = total - max(2, total // 4)  # last kill point
    if hi < kills:
        raise SystemExit(
            f"kill_resume: {kills} kills need a sweep of more than {kills + 2} epoch reports "
            f"in all (this one has {total}); add epochs=N"
        )
    if 2 * kills - 1 > hi:
        return sorted(rng.sample(range(1, hi + 1), kills))
    # Two reports apart: a kill that lands one report late still leaves the next its own epoch.
    return [s + i for i, s in enumerate(sorted(rng.sample(range(1, hi + 2 - kills), kills)))]


def kill_rounds(
    cmd: list[str],
    work: Path,
    env: dict,
    kills: int,
    rng: random.Random,
    timeout: float,
    points: list[int] | None = None,
) -> tuple[int, list[dict], list[float]]:
    """Start / wait for progress / SIGKILL, `kills` times.

    Returns (kills done, orphan records, kill times)."""
    done, orphans, kill_ts = 0, [], []
    for i in range(kills):
        before = n_results(work)
        need = before + rng.choice([1, 2]) if points is None else max(points[i], before + 1)
        log = (work / f"attempt_{i:02d}.log").open("w")
        proc = subprocess.Popen(cmd, cwd=work, env=env, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.time() + timeout
        while proc.poll() is None and n_results(work) < need and time.time() < deadline:
            time.sleep(0.05)
        # A random moment inside the next epoch, cut short once it reports, so the kill
        # lands before that report or right after it, never several epochs later.
        jitter_end = time.time() + rng.uniform(0.0, 2.0)
        while proc.poll() is None and time.time() < jitter_end and n_results(work) <= need:
            time.sleep(0.05)
        if proc.poll() is not None:  # the sweep finished before this kill: nothing left to kill
            log.close()
            print(f"[kill_resume] round {i + 1}: sweep ended (rc {proc.returncode}) before a kill")
            break
        pids = []
        for pid_file in (work / "runs").glob("*/ray_pids.txt"):
            pids += json.loads(pid_file.read_text()).get("procs", [])
        os.kill(proc.pid, signal.SIGKILL)
        kill_ts.append(time.time())
        proc.wait()
        log.close()
        done += 1
        orphans += pids
        print(f"[kill_resume] kill {done}: driver SIGKILLed after {n_results(work)} epoch reports")
    return done, orphans, kill_ts


def mlflow_check(work: Path) -> dict:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{work / 'mlruns.db'}")
    runs = []
    for exp in client.search_experiments():
        runs += client.search_runs([exp.experiment_id], max_results=10_000)
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    ids = [r.data.tags.get("kdsweep.trial_id") for r in children]
    bad_steps = []
    for r in children:
        steps = [m.step for m in client.get_metric_history(r.info.run_id, "epoch")]
        if steps != list(range(1, len(steps) + 1)):
            bad_steps.append((r.data.tags.get("kdsweep.trial_id"), steps))
    return {
        "runs": len(children),
        "duplicate_runs": len(ids) - len(set(ids)),
        "running": sum(r.info.status == "RUNNING" for r in runs),
        "epochs_logged_twice_or_missing": bad_steps,
    }


def checkpoints_load(work: Path) -> list[str]:
    """Every trial's newest checkpoint loads; returns the ones that do not."""
    bad = []
    for trial_dir in sorted((work / "runs").glob("*/*/")):
        ckpts = sorted(trial_dir.glob("checkpoint_*"))
        if not (trial_dir / "params.json").is_file():
            continue
        if not ckpts:
            bad.append(f"{trial_dir}: no checkpoint")
            continue
        if checkpoint_epoch(ckpts[-1]) is None:  # weights, state and config, one epoch
            bad.append(f"{ckpts[-1]}: does not load")
    return bad


def table(work: Path) -> dict[str, dict]:
    """trials.csv keyed by the trial's varied config (trial ids differ between sweeps)."""
    (path,) = (work / "runs").glob("*/trials.csv")
    rows = list(csv.DictReader(path.open()))
    return {r["label"]: r for r in rows}


def same_table(a: dict[str, dict], b: dict[str, dict]) -> list[str]:
    diffs = [f"trial {k} only in one sweep" for k in set(a) ^ set(b)]
    for k in set(a) & set(b):
        for col in a[k]:
            if col in ("trial_id", "error"):
                continue
            x, y = a[k][col], b[k].get(col)
            try:
                equal = abs(float(x) - float(y)) <= 1e-6
            except (TypeError, ValueError):
                equal = x == y
            if not equal:
                diffs.append(f"{k}: {col} {x} (killed) vs {y} (uninterrupted)")
    return diffs


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--kills", type=int, default=10)
    p.add_argument(
        "--script", default="temperature", help="sweeps/<script>.py (default temperature)"
    )
    p.add_argument("--seed", type=int, default=0, help="random kill points")
    p.add_argument("--workdir", help="keep everything here (default: a temporary folder)")
    p.add_argument("--no-reference", action="store_true", help="skip the uninterrupted sweep")
    p.add_argument("--timeout", type=float, default=900, help="seconds per driver run")
    p.add_argument("overrides", nargs="*", help="sweep overrides (default: epochs=8 --no-asha)")
    args = p.parse_args(argv)
    extra = args.overrides or ["epochs=8", "--no-asha"]
    rng = random.Random(args.seed)
    root = Path(args.workdir or tempfile.mkdtemp(prefix="kdsweep-kill-")).resolve()
    killed_dir, ref_dir = root / "killed", root / "reference"
    for d in (killed_dir, ref_dir):  # this script's own folders: a rerun starts them afresh
        shutil.rmtree(d, ignore_errors=True)
        d.mkdir(parents=True)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("RAY_ADDRESS", None)

    # The uninterrupted reference runs first: its epoch-report count places the kills.
    summary: dict = {"script": args.script, "overrides": extra}
    ref_rows, total = None, None
    if not args.no_reference:
        t1 = time.time()
        cmd_ref = sweep_cmd(args.script, ref_dir, extra)
        ref_rc = run_to_end(cmd_ref, ref_dir, env, ref_dir / "final.log", args.timeout)
        summary["wall_s_reference"] = round(time.time() - t1, 1)
        summary["reference_exit_code"] = ref_rc
        if ref_rc == 0:
            ref_rows, total = table(ref_dir), n_results(ref_dir)
    points = kill_points(total, args.kills, rng)
    summary["kill_points"] = points

    t0 = time.time()
    cmd = sweep_cmd(args.script, killed_dir, extra)
    kills, orphans, kill_ts = kill_rounds(
        cmd, killed_dir, env, args.kills, rng, args.timeout, points
    )
    rc = run_to_end(cmd, killed_dir, env, killed_dir / "final.log", args.timeout)
    wall_killed = time.time() - t0

    events = journal_of(killed_dir)
    redone = [
        max(0, ev["logged_epoch"] - ev["from_epoch"]) for ev in events if ev["ev"] == "resumed"
    ]
    redone_s = redone_seconds(events, kill_ts)
    alive = [
        o["pid"]
        for o in orphans
        if psutil.pid_exists(o["pid"])
        and abs(psutil.Process(o["pid"]).create_time() - o["created"]) < 1
    ]
    # Scratch checkpoints of killed workers (named kdsweep-ckpt-<pid>-*) left behind by now.
    scratch = [str(p) for p in orphaned_scratch()]
    summary.update(
        {
            "kills_tried": args.kills,
            "kills_done": kills,
            "final_exit_code": rc,
            "resumes": len(redone),
            "max_epochs_redone": max(redone, default=0),
            "epochs_redone_total": sum(redone),
            "max_redone_s": round(max(redone_s, default=0.0), 1),
            "orphaned_ray_procs": len(orphans),
            "orphans_still_alive": alive,
            "mlflow": mlflow_check(killed_dir),
            "checkpoints_not_loading": checkpoints_load(killed_dir),
            "orphaned_scratch_checkpoints": scratch,
            "wall_s_killed": round(wall_killed, 1),
        }
    )
    rows = table(killed_dir)
    summary["statuses"] = sorted(r["status"] for r in rows.values())
    if not args.no_reference:
        summary["table_diffs"] = same_table(rows, ref_rows) if ref_rows else ["no ref"]

    failures = []
    if rc != 0:
        failures.append(f"resumed sweep exited {rc} (see {killed_dir / 'final.log'})")
    if kills < min(args.kills, 1):
        failures.append("no kill happened")
    if points is not None and kills < args.kills:
        failures.append(f"only {kills}/{args.kills} kills landed before the sweep ended")
    if any(s not in ("finished", "pruned") for s in summary["statuses"]):
        failures.append(f"trials not ended: {summary['statuses']}")
    if summary["max_redone_s"] > REDONE_LIMIT_S:
        failures.append(
            f"a trial redid an epoch reported {summary['max_redone_s']} s before the kill "
            f"(limit {REDONE_LIMIT_S:g} s)"
        )
    m = summary["mlflow"]
    if m["duplicate_runs"] or m["running"] or m["epochs_logged_twice_or_missing"]:
        failures.append(f"MLflow: {m}")
    if m["runs"] != len(rows):
        failures.append(f"MLflow has {m['runs']} trial runs for {len(rows)} trials")
    if summary["checkpoints_not_loading"]:
        failures.append(f"checkpoints: {summary['checkpoints_not_loading']}")
    if scratch:
        failures.append(f"scratch checkpoints of killed workers left in /tmp: {scratch}")
    if alive:
        failures.append(f"orphaned Ray processes still alive: {alive}")
    if summary.get("table_diffs"):
        failures.append(f"table differs from the uninterrupted sweep: {summary['table_diffs']}")
    summary["failures"] = failures
    (root / "kill_resume.json").write_text(json.dumps(summary, indent=1))
    print(json.dumps(summary, indent=1))
    print(
        f"[kill_resume] {kills}/{args.kills} kills survived; epochs redone per resume: max "
        f"{summary['max_epochs_redone']} (reported up to {summary['max_redone_s']} s before "
        "the kill), "
        f"total {summary['epochs_redone_total']} over {summary['resumes']} resumes; "
        f"duplicate MLflow runs {m['duplicate_runs']}; "
        f"{'OK' if not failures else 'FAILED: ' + '; '.join(failures)}  ({root})"
    )
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
