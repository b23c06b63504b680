"""The confirm stage (`--confirm K`): the sweep's answer, on fresh seeds and on test.

After the search, the top K configs by dev (the mean over a config's seeds; a config is a
trial's config without `seed`) and the independent baseline are rerun with fresh seeds
(`--confirm-seeds M`: seeds 1000, 1001, ...) to full length, without early stopping (FIFO, an
exhaustive grid over arm x seed), as a second Tune run beside the sweep (runs/<sweep>-confirm,
resumable like the first). Each trial's best checkpoint by dev is evaluated once on test (the
result is kept in the trial folder). The answer: per config mean +- 95% CI on dev and test,
paired differences against the baseline by seed (t-test, Holm across the K comparisons,
Cohen's d_z) and one verdict per config; written to confirm.md and logged on the parent run.

    confirm = run_confirm(grid, outcome, space, args, sweep, storage, res, journal, prep, uri)
    print(confirm.text)
"""

from __future__ import annotations

import argparse
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sweeps.labels import describe
from sweeps.space import SweepSpace
from trainables.metrics import METRIC, MODE

BASELINE = "independent"  # the condition every confirmed config is compared against
SEED_BASE = 1000  # confirm seeds start here: never a seed of the search (0..N-1)
ARMS_FILE = "confirm_arms.json"  # the arms the confirm run started with (a resume keeps them)
RESULTS_FILE = "confirm.json"  # written once the stage is complete: a rerun reads it
TEST_FILE = "confirm_test.json"  # per trial folder: its best checkpoint's test metrics


@dataclass
class Arm:
    """One confirmed config: its config (no seed), label, how the search saw it."""

    config: dict[str, Any]
    label: str
    search_dev: float = math.nan  # mean best dev over the config's search seeds
    search_status: str = ""  # finished | pruned | added (the baseline built for the confirm)
    baseline: bool = False


@dataclass
class ConfirmOutcome:
    """What the confirm stage produced: one row per trial, the answer text and tags."""

    path: Path
    arms: list[Arm]
    trials: list[dict[str, Any]] = field(default_factory=list)  # arm, seed, dev, test, seconds
    text: str = ""
    tags: dict[str, str] = field(default_factory=dict)


def _key(config: dict[str, Any]) -> str:
    return json.dumps({k: v for k, v in config.items() if k != "seed"}, sort_keys=True, default=str)


def top_configs(
    trials: list[tuple[dict[str, Any], float, str]], k: int, mode: str
) -> list[tuple[dict[str, Any], float, str]]:
    """The best `k` configs by the mean over their seeds of each trial's best dev metric.

    `trials`: (trial config, best dev value, status) per trial; errored or NaN trials are left
    out. Returns (config without seed, mean, 'pruned' if any of its seeds was stopped early
    else 'finished'), best first; ties keep the search's order."""
    groups: dict[str, list] = {}
    for config, value, status in trials:
        if status == "error" or not _finite(value):
            continue
        g = groups.setdefault(_key(config), [{**config}, [], "finished"])
        g[0].pop("seed", None)
        g[1].append(float(value))
        if status == "pruned":
            g[2] = "pruned"
    ranked = [(cfg, sum(v) / len(v), st) for cfg, v, st in groups.values()]
    sign = -1 if mode == "max" else 1
    ranked.sort(key=lambda t: sign * t[1])
    return ranked[:k]


def choose_arms(
    trials: list[tuple[dict[str, Any], float, str]], space: SweepSpace, k: int
) -> list[Arm]:
    """The top `k` configs and the baseline (the best independent config of the search, or
    one built from the best config's fixed fields with condition=independent); every arm runs
    the same epochs (the most any search trial was allowed)."""
    from sweeps.run import max_epochs
    from trainables.registry import config_class

    mode = MODE[space.task]
    varied = [v for v in space.varied if v != "seed"]
    arms = [Arm(cfg, _label(cfg, varied), dev, st) for cfg, dev, st in top_configs(trials, k, mode)]
    base = top_configs([t for t in trials if t[0].get("condition") == BASELINE], 1, mode)
    found = next((a for a in arms if a.config.get("condition") == BASELINE), None)
    if found is not None:
        found.baseline = True
    elif base:
        cfg, dev, st = base[0]
        arms.append(Arm(cfg, _label(cfg, varied), dev, st, baseline=True))
    elif arms:
        names = config_class(space.task, BASELINE).field_names() | {"task"}
        cfg = {k: v for k, v in arms[0].config.items() if k in names}
        cfg["condition"] = BASELINE
        arms.append(Arm(cfg, _label(cfg, varied), math.nan, "added", baseline=True))
    epochs = max_epochs(space)
    for a in arms:
        a.config["epochs"] = epochs  # fair budgets: the same epochs for every arm
    return arms


def _label(config: dict[str, Any], varied: list[str]) -> str:
    return describe(config, [k for k in varied if config.get(k) is not None])


class ConfirmSpace(SweepSpace):
    """A space of exactly these arms x seeds: a grid over `confirm_arm` (an index; not a config
    field, so run_trial drops it) and `seed`; every config field follows the arm."""

    def __init__(self, space: SweepSpace, arms: list[dict[str, Any]], seeds: list[int]):
        super().__init__(
            source=f"{space.source} (confirm)",
            task=space.task,
            conditions=sorted({a["condition"] for a in arms}),
            condition_is_grid=True,
            resources=dict(space.resources),
        )
        self.arms, self.seeds = arms, seeds
        keys = sorted({k for a in arms for k in a} - {"task", "condition", "seed"})
        self.fixed = {k: arms[0][k] for k in keys if all(a.get(k) == arms[0].get(k) for a in arms)}
        self.arm_keys = ["condition"] + [k for k in keys if k not in self.fixed]
        self.dists = {"seed": ("grid", list(seeds))}

    @property
    def varied(self) -> list[str]:
        return [*self.arm_keys, "seed"]

    def grid_size(self) -> int:
        return len(self.arms) * len(self.seeds)

    def to_dict(self) -> dict[str, Any]:
        return {"task": self.task, "arms": self.arms, "seeds": self.seeds}

    def param_space(self) -> dict[str, Any]:
        from ray import tune

        arms = self.arms
        space: dict[str, Any] = {"task": self.task, **self.fixed}
        space["confirm_arm"] = tune.grid_search(list(range(len(arms))))
        space["seed"] = tune.grid_search(list(self.seeds))
        for k in self.arm_keys:  # resolved after the grid: the value of this trial's arm
            space[k] = tune.sample_from(lambda spec, k=k: arms[spec.config.confirm_arm].get(k))
        return space


def run_confirm(
    grid,
    outcome,
    space: SweepSpace,
    args: argparse.Namespace,
    sweep: str,
    storage: Path,
    res: dict[str, float],
    journal,
    prep: dict[str, Any],
    tracking_uri: str,
) -> ConfirmOutcome | None:
    """Run (or resume, or read back) the confirm stage; None when there is nothing to confirm."""
    from ray.tune import Tuner

    from sweeps import run

    metric = METRIC[space.task]
    name = f"{sweep}-confirm"
    path = storage / name
    seeds = [SEED_BASE + i for i in range(args.confirm_seeds)]
    done = path / RESULTS_FILE
    if done.is_file():  # complete: the answer is read back, nothing is trained or tested again
        saved = json.loads(done.read_text())
        arms = [Arm(**a) for a in saved["arms"]]
        print(f"[kdsweep] confirm stage already done ({path}): reading its results")
        return answer(path, arms, saved["trials"], space.task, prep, outcome, seeds)
    trials = [(r.config or {}, row[metric], row["status"]) for r, row in zip(grid, outcome.rows)]
    restore = Tuner.can_restore(str(path))
    if restore and (path / ARMS_FILE).is_file():
        arms = [Arm(**a) for a in json.loads((path / ARMS_FILE).read_text())]
    else:
        arms = choose_arms(trials, space, args.confirm)
    if not arms:
        print("[kdsweep] confirm: no finished config to confirm")
        return None
    cspace = ConfirmSpace(space, [a.config for a in arms], seeds)
    path.mkdir(parents=True, exist_ok=True)
    (path / ARMS_FILE).write_text(json.dumps([a.__dict__ for a in arms], default=str, indent=1))
    print(
        f"[kdsweep] confirm stage: {len(arms)} config(s) x {len(seeds)} fresh seed(s) "
        f"{seeds}, {arms[0].config['epochs']} epochs each, no early stopping ({path})"
    )
    cargs = argparse.Namespace(**{**vars(args), "no_asha": True, "seeds": 0})
    max_t = int(arms[0].config["epochs"])
    callback = run.trial_callback(journal, cspace, prep, max_t)
    cgrid, _ = run.fit(cspace, cargs, name, storage, res, max_t, callback, restore, tracking_uri)
    callback.close_open_runs()
    rows = confirm_rows(cgrid, metric, MODE[space.task])
    complete = len(rows) == cspace.grid_size() and all(r["done"] for r in rows)
    if complete:
        done.write_text(json.dumps({"arms": [a.__dict__ for a in arms], "trials": rows}))
    return answer(path, arms, rows, space.task, prep, outcome, seeds)


def confirm_rows(cgrid, metric: str, mode: str) -> list[dict[str, Any]]:
    """Per confirm trial: arm, seed, best dev, test of its best checkpoint (once), seconds."""
    from sweeps.summary import best_checkpoint

    rows = []
    for r in cgrid:
        cfg, m = r.config or {}, r.metrics or {}
        df = r.metrics_dataframe
        dev = [] if df is None or metric not in df else [v for v in df[metric] if _finite(v)]
        test_file = Path(r.path) / TEST_FILE
        if test_file.is_file():
            test = json.loads(test_file.read_text())
        elif r.error or not dev:
            test = {}
        else:
            test = best_checkpoint(r, metric, mode, test=True).get("test", {})
            test_file.write_text(json.dumps(test))
        rows.append(
            {
                "arm": int(cfg.get("confirm_arm", -1)),
                "seed": cfg.get("seed"),
                "dev": (max(dev) if mode == "max" else min(dev)) if dev else math.nan,
                "test": test,
                "seconds": float(m.get("train_seconds", m.get("time_total_s", math.nan))),
                "done": not r.error and bool(dev) and int(m.get("epoch", 0)) >= 1,
            }
        )
    return rows


def answer(
    path: Path,
    arms: list[Arm],
    rows: list[dict[str, Any]],
    task: str,
    prep: dict[str, Any],
    outcome,
    seeds: list[int],
) -> ConfirmOutcome:
    """Format the answer, write confirm.md (here and in the sweep folder), build the tags."""
    metric = METRIC[task]
    teacher_share = _teacher_share(arms, rows, task, prep, outcome)
    text = format_answer(arms, rows, metric, MODE[task] == "max", seeds, teacher_share)
    out = ConfirmOutcome(path=path, arms=arms, trials=rows, text=text)
    for p in (path / "confirm.md", Path(outcome.path) / "confirm.md"):
        p.write_text(text + "\n")
    verdicts = [ln for ln in text.splitlines() if ln.startswith("- verdict")]
    out.tags = {f"confirm.verdict_{i}": v[len("- verdict ") :] for i, v in enumerate(verdicts)}
    return out


def _teacher_share(arms, rows, task, prep, outcome) -> list[float]:
    """Per arm: the teacher's training seconds / the trials (search + confirm) that used it."""
    from trainables.conditions import Needs
    from trainables.registry import config_for

    seconds = prep.get("teacher_seconds")
    uses = [config_for({**a.config, "task": task}).needs != Needs() for a in arms]
    search_users = sum(
        r.get("condition") != BASELINE and r.get("status") != "error" for r in outcome.rows
    )
    n = search_users + sum(uses[r["arm"]] for r in rows if 0 <= r["arm"] < len(arms))
    if not seconds or not n:
        return [0.0 if not u else math.nan for u in uses]
    return [float(seconds) / n if u else 0.0 for u in uses]


def _finite(v: Any) -> bool:
    try:
        return math.isfinite(float(v))
    except (TypeError, ValueError):
        return False


def format_answer(
    arms: list[Arm],
    rows: list[dict[str, Any]],
    metric: str,
    higher_is_better: bool,
    seeds: list[int],
    teacher_share: list[float] | None = None,
) -> str:
    """The answer as markdown lines: per config CIs, paired differences, verdicts."""
    from sweeps.reporting.stats import holm, mean_ci, paired_comparison

    test_metric = metric.replace("dev_", "test_", 1)
    by_arm = {i: {r["seed"]: r for r in rows if r["arm"] == i} for i in range(len(arms))}

    def values(i: int, key: str) -> list[float]:
        got = by_arm[i]
        pick = (lambda r: r["dev"]) if key == "dev" else (lambda r: r["test"].get(test_metric))
        return [pick(got[s]) if s in got and pick(got[s]) is not None else math.nan for s in seeds]

    def ci(vals: list[float]) -> str:
        m, lo, hi = mean_ci(vals)
        half = (hi - lo) / 2 if _finite(lo) else math.nan
        return f"{m:.4f} +- {half:.4f}" if _finite(half) else f"{m:.4f} (no CI)"

    share = teacher_share or [0.0] * len(arms)
    lines = [
        "# Confirm stage: the answer",
        "",
        f"{len(arms)} config(s) x {len(seeds)} fresh seeds {seeds}, full length, no early "
        f"stopping; best checkpoint by {metric}, evaluated once on test. mean +- 95% CI (t).",
        "",
    ]
    for i, a in enumerate(arms):
        secs = [by_arm[i][s]["seconds"] for s in seeds if s in by_arm[i]]
        mean_s = sum(secs) / len(secs) if secs else math.nan
        tag = " [baseline]" if a.baseline else ""
        lines.append(
            f"- {a.label}{tag}: {metric} {ci(values(i, 'dev'))}, {test_metric} "
            f"{ci(values(i, 'test'))}; search: {a.search_status}, dev {a.search_dev:.4f}; "
            f"train {mean_s:.0f} s/trial + teacher {share[i]:.0f} s (amortised)"
        )
    base = next((i for i, a in enumerate(arms) if a.baseline), None)
    if base is None:
        return "\n".join(lines)
    others = [i for i in range(len(arms)) if i != base]
    comps = [paired_comparison(values(i, "test"), values(base, "test")) for i in others]
    for c, p in zip(comps, holm([c["p"] for c in comps])):
        c["p_holm"] = p
        c["significant"] = _finite(p) and p < 0.05
    lines += ["", f"Paired by seed against {arms[base].label} on {test_metric} (Holm over "
              f"{len(comps)} comparison(s)):", ""]  # fmt: skip
    for i, c in zip(others, comps):
        lines.append(
            f"- {arms[i].label} - {arms[base].label}: {c['mean_diff']:+.4f} "
            f"[{c['low']:+.4f}, {c['high']:+.4f}], d_z {c['d_z']:.2f}, p {c['p']:.3g}, "
            f"Wilcoxon p {c['wilcoxon_p']:.3g}, bootstrap [{c['boot_low']:+.4f}, "
            f"{c['boot_high']:+.4f}]"
        )
    lines.append("")
    for i, c in zip(others, comps):
        lines.append(f"- verdict {arms[i].label}: {_verdict(c, higher_is_better, BASELINE)}")
    lines += _pruned_lines(arms, others, values, higher_is_better)
    return "\n".join(lines)


def _verdict(c: dict[str, Any], higher_is_better: bool, baseline: str) -> str:
    if c["n"] < 2:
        return f"not testable ({c['n']} paired seed(s); need >= 2)"
    if not c["significant"]:
        return (
            f"not distinguishable from {baseline} (Holm p={c['p_holm']:.3g}; "
            f"difference {c['mean_diff']:+.4f})"
        )
    better = (c["mean_diff"] > 0) == higher_is_better
    return f"{'better' if better else 'worse'} than {baseline} (Holm p={c['p_holm']:.3g})"


def _pruned_lines(arms, others, values, higher_is_better) -> list[str]:
    """For confirmed configs the search pruned: was any better than a kept one (paired)?"""
    from sweeps.reporting.stats import paired_comparison

    pruned = [i for i in others if arms[i].search_status == "pruned"]
    kept = [i for i in others if arms[i].search_status == "finished"]
    lines = []
    for i in pruned:
        wins = []
        for j in kept:
            c = paired_comparison(values(i, "test"), values(j, "test"))
            if c["n"] >= 2 and c["p"] < 0.05 and (c["mean_diff"] > 0) == higher_is_better:
                wins.append(arms[j].label)
        found = f"better than kept {', '.join(wins)}" if wins else "not better than any kept one"
        lines.append(f"- pruned by the search, confirmed: {arms[i].label}: {found} (paired p<0.05)")
    return [""] + lines if lines else []
