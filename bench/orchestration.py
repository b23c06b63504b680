"""Orchestration overhead: the same trials as a kdsweep sweep vs plain Python loops.

    python bench/orchestration.py [--quick] [--rounds N] [--epochs E] [--both]

The same 4 soft-KD trials (T in {1, 2, 4, 8}, 8 epochs, 1 CPU each), each way timed from process
start to exit, interleaved (the order rotates every round), 2 rounds:

- plain: 2 Python processes in parallel (= the sweep's 2 slots on 2 cores), each running 2
  trials one after the other with `local_session` (no Ray, no MLflow);
- sweep: `sweeps/temperature.py --no-asha --no-test` (Ray Tune, MLflow, checkpoints, summary)
  with `reuse_actors` as driver/tuner.py ships it (True: a slot's Ray worker runs its next
  trial); `--both` also runs the other setting (False: a fresh Ray worker per trial).

The sweeps run through a small driver that forces `reuse_actors` in `tune.TuneConfig`, so either
setting can be measured whatever driver/tuner.py ships. Ratio = sweep wall / plain wall.
Goal <= 1.10x for trials of 30 s or more (known fixed costs: `ray.init` 5-6 s, a Ray trial worker
5-7 s to start on 2 cores).
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

GOAL = ("<=", 1.10)
TEMPS = [1.0, 2.0, 4.0, 8.0]
SLOTS = 2


def plain_worker(cfg: dict[str, Any], temps: list[float], out: Path) -> None:
    """One 'slot' of the plain loop: the given trials one after another, no Ray."""
    from trainables.text.trainable import CONDITIONS
    from trainables.tune_io import local_session

    rows = []
    for t in temps:
        conf = common.config_fields({**cfg, "temperature": t}, "soft")
        with (
            tempfile.TemporaryDirectory(prefix="kdsweep-plain-") as tmp,
            local_session(Path(tmp), cpus=1) as s,
        ):
            t0 = time.perf_counter()
            CONDITIONS["soft"](conf)
            rows.append(
                {
                    "temperature": t,
                    "wall": time.perf_counter() - t0,
                    "train_seconds": s.results[-1]["train_seconds"],
                    "dev_accuracy": max(r["dev_accuracy"] for r in s.results),
                }
            )
    out.write_text(json.dumps(rows))


def sweep_driver(reuse: bool, argv: list[str]) -> None:
    """sweeps/temperature.py's main(), with `reuse_actors` forced in the TuneConfig."""
    from ray import tune

    orig = tune.TuneConfig

    def tune_config(*a, **kw):
        kw["reuse_actors"] = reuse
        return orig(*a, **kw)

    tune.TuneConfig = tune_config
    import sweeps.temperature as script
    from driver.cli import main

    main("temperature", script.__doc__, argv)


def run_plain(cfg: dict[str, Any], work: Path) -> tuple[float, list[dict]]:
    me = str(Path(__file__).resolve())
    cfg_json = json.dumps(cfg)
    procs, outs, logs = [], [], []
    t0 = time.perf_counter()
    for slot in range(SLOTS):
        out = work / f"plain_{slot}.json"
        log = (work / f"plain_{slot}.log").open("w")
        temps = ",".join(str(t) for t in TEMPS[slot::SLOTS])
        cmd = [sys.executable, me, "--plain-worker", temps, "--cfg", cfg_json, "--out", str(out)]
        procs.append(
            subprocess.Popen(
                cmd, stdout=log, stderr=subprocess.STDOUT, env=common.child_env(1), cwd=work
            )
        )
        outs.append(out)
        logs.append(log)
    codes = [p.wait() for p in procs]
    wall = time.perf_counter() - t0
    for f in logs:
        f.close()
    if any(codes):
        raise RuntimeError(f"plain worker failed: see {work}/plain_*.log")
    return wall, [row for out in outs for row in json.loads(out.read_text())]


def run_sweep(cfg: dict[str, Any], work: Path, reuse: bool, tag: str) -> tuple[float, Path]:
    name = f"orch-{tag}"
    cmd = [sys.executable, str(Path(__file__).resolve()), "--sweep-driver", str(int(reuse))]
    cmd += ["--", *common.sweep_command("temperature", cfg, work, name)[2:]]
    cmd += ["--no-asha", "--no-test", "--cpus-per-trial", "1"]
    wall = common.run_logged(cmd, work / f"{name}.log", work)
    return wall, work / "runs" / name


def run(
    quick: bool = False, rounds: int | None = None, epochs: int | None = None, both: bool = False
) -> list[common.Result]:
    rounds = rounds or 2
    epochs = epochs or (2 if quick else 8)
    cfg = common.base_config(quick, epochs=epochs)
    common.ensure_teacher(quick)
    work = common.bench_dir("orchestration")
    shipped = _shipped_reuse()
    # The sweep as shipped; --both also measures the other reuse_actors setting.
    sweeps = [shipped, not shipped] if both else [shipped]
    variants = ["plain"] + [_name(r) for r in sweeps]
    print(
        f"orchestration: {len(TEMPS)} soft-KD trials x {epochs} epochs "
        f"({cfg.get('data_subset') or 'all'} train examples), {SLOTS} slots, {rounds} round(s): "
        + ", ".join(variants)
    )
    walls: dict[str, list[float]] = {v: [] for v in variants}
    ratios: dict[str, list[float]] = {v: [] for v in variants[1:]}
    trial_walls: list[float] = []
    for i in range(rounds):
        k = i % len(variants)
        got = {}
        for v in variants[k:] + variants[:k]:  # rotate the order: no position bias
            if v == "plain":
                got[v], rows = run_plain(cfg, work)
                trial_walls += [r["wall"] for r in rows]
            else:
                got[v], sweep_dir = run_sweep(cfg, work, v == _name(True), f"{v}-{i}")
                trials = common.read_trials(sweep_dir)
                assert len(trials) == len(TEMPS), trials
                assert all(t["status"] == "finished" for t in trials), trials
            walls[v].append(got[v])
        for v in ratios:
            ratios[v].append(got[v] / got["plain"])
        print(
            f"  round {i + 1}: wall s "
            + ", ".join(f"{v} {got[v]:.1f}" for v in variants)
            + " -> "
            + ", ".join(f"{v}/plain {ratios[v][-1]:.3f}" for v in ratios)
        )
    trial_s = common.median(trial_walls)
    goal = f"{GOAL[0]} {GOAL[1]:.2f}x"
    detail = f"trials ~{trial_s:.0f} s each (plain loop, median); walls (median s): " + ", ".join(
        f"{v} {common.median(walls[v]):.0f}" for v in variants
    )
    if trial_s < 30 and not quick:
        detail += "; NOTE trials shorter than the 30 s the goal assumes"
    rows = []
    for reuse in sweeps:
        r = common.median(ratios[_name(reuse)])
        is_shipped = reuse == shipped
        rows.append(
            common.Result(
                "orchestration",
                f"sweep reuse_actors={reuse}{' (shipped)' if is_shipped else ''} / plain, wall",
                r,
                goal if is_shipped else "",
                common.check(r, *GOAL) if is_shipped else None,
                detail if is_shipped else "",
            )
        )
    return rows


def _name(reuse: bool) -> str:
    return "sweep+reuse" if reuse else "sweep"


def _shipped_reuse() -> bool:
    """Whether driver/tuner.py sets reuse_actors=True (the default the table marks)."""
    text = (common.ROOT / "sweeps" / "tuner.py").read_text()
    return "reuse_actors=True" in text


def main(argv: list[str] | None = None) -> list[common.Result] | None:
    common.setup_env()
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--plain-worker"]:
        temps = [float(t) for t in argv[1].split(",")]
        cfg = json.loads(argv[argv.index("--cfg") + 1])
        plain_worker(cfg, temps, Path(argv[argv.index("--out") + 1]))
        return None
    if argv[:1] == ["--sweep-driver"]:
        sweep_driver(argv[1] == "1", argv[argv.index("--") + 1 :])
        return None
    p = common.parser(__doc__)
    p.add_argument("--rounds", type=int, help="interleaved repeats (default 2)")
    p.add_argument("--epochs", type=int, help="epochs per trial (default 8, quick 2)")
    p.add_argument("--both", action="store_true", help="also the other reuse_actors setting")
    args = p.parse_args(argv)
    results = run(args.quick, args.rounds, args.epochs, args.both)
    common.finish(results, args.json)
    return results


if __name__ == "__main__":
    main()
