"""ASHA vs the full grid on the same temperature x alpha grid: epochs trained and best found.

    python bench/asha_vs_grid.py [--quick] [--max-t 9] [--grace-period 1] [--reduction-factor 3]
    python bench/asha_vs_grid.py --seeds 3 --confirm 2   # seed groups, then the confirm stage

Two runs of `sweeps/temperature.py --space <grid.yaml>` on T in {1, 2, 4, 8} x alpha in
{0.25, 0.5, 0.75, 0.9} (16 soft-KD trials, 320 training examples, 2 slots): one with ASHA (grace
period 1, reduction factor 3, max_t 9 = rungs at epochs 1, 3, 9) and one with `--no-asha` (every
trial to max_t).
Compared: total epochs trained (sum of `epochs` in each sweep's trials.csv) and the best dev
accuracy found. Goals: ASHA trains <= 35% of the grid's epochs, and its best dev accuracy is
within 0.5 points of the grid's.

Finding (2 cores, this data): after 1 epoch every trial is still at chance (dev accuracy 1/6 for
all 16), and ASHA keeps ties, so its first rung stops nobody; pruning starts at epoch 3. See the
"stopped at" note in the output.

Note: dev has 120 examples here, so one example is 0.83 points: "within 0.5 points" means ASHA
must find a configuration as good as the grid's best.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

EPOCH_GOAL = ("<=", 0.35)
BEST_GOAL_POINTS = 0.5
TEMPS = [1, 2, 4, 8]
ALPHAS = [0.25, 0.5, 0.75, 0.9]


def write_space(path: Path, temps: list, alphas: list, grace: int, rf: float) -> Path:
    path.write_text(
        "# bench/asha_vs_grid.py: temperature x alpha grid\n"
        "task: text\ncondition: soft\nnum_samples: 1\n"
        f"asha: {{grace_period: {grace}, reduction_factor: {rf}}}\n"
        "params:\n"
        f"  temperature: {{grid: {temps}}}\n"
        f"  alpha: {{grid: {alphas}}}\n"
    )
    return path


def config_means(trials: list[dict]) -> dict[str, float]:
    """Mean dev accuracy (each trial's best) per config over its seeds; label without seed."""
    groups: dict[str, list[float]] = {}
    for t in trials:
        groups.setdefault(f"T={t['temperature']} a={t['alpha']}", []).append(
            float(t["dev_accuracy"])
        )
    return {k: sum(v) / len(v) for k, v in groups.items()}


def run_one(
    cfg: dict, work: Path, space: Path, asha: bool, grace: int, rf: float, seeds: int = 0,
    confirm: int = 0,
) -> dict:  # fmt: skip
    name = "asha" if asha else "grid"
    flags = ["--space", str(space), "--no-test", "--cpus-per-trial", "1"]
    flags += (
        ["--grace-period", str(grace), "--reduction-factor", str(rf)] if asha else ["--no-asha"]
    )
    if seeds > 1:  # seed groups: a config is kept or stopped with all its seeds
        flags += ["--seeds", str(seeds)]
    if confirm:
        flags += ["--confirm", str(confirm), "--confirm-seeds", str(max(seeds, 3))]
    cmd = common.sweep_command("temperature", cfg, work, name, *flags, skip=("alpha",))
    wall = common.run_logged(cmd, work / f"{name}.log", work)
    trials = common.read_trials(work / "runs" / name)
    errors = [t for t in trials if t["status"] == "error"]
    if errors:
        raise RuntimeError(f"{name}: {len(errors)} trial(s) failed: {errors[0]['error']}")
    means = config_means(trials)
    best_label = max(means, key=means.__getitem__)
    out = {
        "wall": wall,
        "epochs": sum(int(t["epochs"]) for t in trials),
        "trials": len(trials),
        "pruned": sum(t["status"] == "pruned" for t in trials),
        "best": means[best_label],
        "best_label": best_label,
        "stopped_at": sorted(int(t["epochs"]) for t in trials if t["status"] == "pruned"),
        "ranking": sorted(means, key=lambda k: -means[k]),
    }
    if confirm:
        out["confirmed"] = confirmed_best(work / "runs" / name / "confirm.json")
    return out


def confirmed_best(path: Path) -> dict:
    """The confirm stage's configs by test mean, and each one's verdict vs the baseline."""
    import json

    answer = json.loads(path.read_text())["answer"]
    verdicts = {c["label"]: c["verdict"] for c in answer["comparisons"]}
    rows = sorted(answer["configs"], key=lambda c: -c["test_mean"])
    return {
        "order": [(c["label"], c["test_mean"], verdicts.get(c["label"], "baseline")) for c in rows],
    }


def run(
    quick: bool = False,
    max_t: int | None = None,
    grace: int = 1,
    rf: float = 3,
    seeds: int = 0,
    confirm: int = 0,
) -> list[common.Result]:
    max_t = max_t or (3 if quick else 9)
    temps, alphas = (TEMPS[::2], ALPHAS[1::2]) if quick else (TEMPS, ALPHAS)
    # small data: 320 training examples (dev stays whole), so the 16-trial grid fits the budget
    cfg = common.base_config(quick, epochs=max_t, **({} if quick else {"data_subset": 320}))
    common.ensure_teacher(quick)
    work = common.bench_dir("asha_vs_grid")
    space = write_space(work / "grid.yaml", temps, alphas, grace, rf)
    n = len(temps) * len(alphas)
    print(
        f"asha_vs_grid: {n} trials (T {temps} x alpha {alphas}), max_t {max_t}, "
        f"ASHA grace {grace} rf {rf:g}, {cfg.get('data_subset') or 'all'} train examples"
        + (f", {seeds} seeds per config (seed groups)" if seeds > 1 else "")
        + (f", confirm top {confirm} after ASHA" if confirm else "")
    )
    got = {}
    for asha in (True, False):
        got[asha] = r = run_one(cfg, work, space, asha, grace, rf, seeds, confirm if asha else 0)
        print(
            f"  {'ASHA' if asha else 'grid'}: {r['epochs']} epochs over {r['trials']} trials "
            f"({r['pruned']} pruned), best dev {r['best']:.4f} ({r['best_label']}, mean over "
            f"seeds), wall {r['wall']:.0f} s; top 3 {r['ranking'][:3]}"
        )
    a, g = got[True], got[False]
    if confirm:
        order = a["confirmed"]["order"]
        print("  confirmed (test mean over fresh seeds): " + "; ".join(
            f"{lab} {m:.4f} ({v})" for lab, m, v in order))  # fmt: skip
        top = order[0][0]
        match = g["best_label"] in top
        print(f"  confirmed best {top} {'matches' if match else 'differs from'} the grid's best "
              f"{g['best_label']}")  # fmt: skip
    frac = a["epochs"] / g["epochs"]
    gap = 100 * (g["best"] - a["best"])  # points the ASHA best is below the grid best
    return [
        common.Result(
            "asha_vs_grid",
            "ASHA epochs / grid epochs",
            frac,
            f"{EPOCH_GOAL[0]} {EPOCH_GOAL[1]:.2f}x",
            common.check(frac, *EPOCH_GOAL),
            f"{a['epochs']} vs {g['epochs']} epochs; wall ratio {a['wall'] / g['wall']:.2f}x; "
            f"ASHA stopped {len(a['stopped_at'])} trials, at epochs {a['stopped_at']}",
        ),
        common.Result(
            "asha_vs_grid",
            "best dev accuracy: grid - ASHA (points)",
            None,
            f"<= {BEST_GOAL_POINTS} pt",
            gap <= BEST_GOAL_POINTS + 1e-9,
            f"ASHA {100 * a['best']:.2f} ({a['best_label']}), "
            f"grid {100 * g['best']:.2f} ({g['best_label']})",
            shown=f"{gap:+.2f} pt",
        ),
    ]


def main(argv: list[str] | None = None) -> list[common.Result]:
    common.setup_env()
    p = common.parser(__doc__)
    p.add_argument("--max-t", type=int, help="epochs per trial (default 9, quick 3)")
    p.add_argument("--grace-period", type=int, default=1)
    p.add_argument("--reduction-factor", type=float, default=3)
    p.add_argument("--seeds", type=int, default=0, help="seeds per config (seed groups)")
    p.add_argument("--confirm", type=int, default=0, help="confirm the top K after ASHA")
    args = p.parse_args(argv)
    results = run(args.quick, args.max_t, args.grace_period, args.reduction_factor, args.seeds,
                  args.confirm)  # fmt: skip
    common.finish(results, args.json)
    return results


if __name__ == "__main__":
    main()
