"""The confirm stage (`--confirm K --confirm-seeds M`): the sweep's answer on fresh seeds, on test.

After the search, the top K configs by the tuning metric on dev (the mean over a config's
seeds; a config is a trial's config without `seed`) plus the independent baseline are rerun on
M fresh seeds (never a seed of the search: 1000, 1001, ...) to full length, without early
stopping (FIFO over an exhaustive grid arm x seed). It is a second Tune run beside the sweep,
runs/<sweep>-confirm-k<K>-s<M>, resumed by the same command like the search (Tuner.restore:
finished confirm trials are not run again). Each confirm trial's best checkpoint by dev is
evaluated on test exactly once (the result is kept in its trial folder). The answer
(driver/confirm_table.py) is printed, written to confirm.md / confirm.json in the sweep folder
and logged on the sweep's MLflow parent run; confirm trials are child runs of that parent run,
tagged kdsweep.stage=confirm.

    check_confirm_args(plan.confirm, plan.space)   # bad --confirm / --confirm-seeds: KDSweepError
    confirm = run_confirm(plan, grid, outcome, ray, journal, prep)   # in the search's Ray
    print(confirm.text)
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from driver.confirm_table import (
    confirm_answer,
    format_answer,
    markdown_answer,
    pruned_line,
    search_line,
)
from driver.fit import fit, trial_callback
from driver.labels import describe
from driver.plan import Confirm, SweepPlan, derive
from driver.resume import check_resume
from driver.space import SweepSpace
from kdsweep.errors import KDSweepError
from trainables.metrics import METRIC, MODE, TEST_METRIC

BASELINE = "independent"  # the condition every confirmed config is compared against
SEED_BASE = 1000  # confirm seeds start here: a search's seeds are 0..N-1 (or a YAML seed)
STAGE_TAG = {"kdsweep.stage": "confirm"}  # on every confirm trial's MLflow run
# Not *.json in Tune folders: a restore may upload a stale copy of those (driver/tracking.py).
ARMS_FILE = "confirm_arms.txt"  # the arms and seeds the confirm run started with
TEST_FILE = "confirm_test.txt"  # per confirm trial folder: its best checkpoint's test metrics


@dataclass
class Arm:
    """One confirmed config: its config (no seed), label, how the search saw it."""

    config: dict[str, Any]
    label: str
    search_dev: float = math.nan  # mean best dev over the config's search seeds
    search_status: str = ""  # finished | pruned | added (a baseline the search did not run)
    baseline: bool = False


@dataclass
class ConfirmOutcome:
    """What the confirm stage produced: one row per trial, the answer, its text and tags."""

    path: Path
    arms: list[Arm]
    seeds: list[int]
    trials: list[dict[str, Any]] = field(default_factory=list)  # arm, seed, dev, test, ...
    answer: dict[str, Any] = field(default_factory=dict)
    text: str = ""
    complete: bool = False
    tags: dict[str, str] = field(default_factory=dict)
    artifacts: list[Path] = field(default_factory=list)
    search_pruned: int = 0  # configs the search stopped early
    search_seeds: int = 1  # seeds per config in the search (--seeds; 0 or 1: single-seed)
    search_asha: bool = True  # whether the search could stop configs early (--no-asha: no)


# ---------------------------------------------------------------- input and choices (pure)
def n_configs(space: SweepSpace) -> int:
    """How many distinct configs the search tries (seed repeats are one config)."""
    if space.uses_optuna:
        return space.num_samples
    seeds = space.dists.get("seed", ("grid", [0]))[1]
    return space.grid_size() // max(1, len(seeds))


def check_confirm_args(confirm: Confirm, space: SweepSpace) -> None:
    """`--confirm K` needs 1 <= K <= the configs of the search, `--confirm-seeds` >= 2."""
    k = confirm.k
    if k is None:
        return
    if k < 1:
        raise KDSweepError(f"--confirm {k}: give the number of top configs to confirm (>= 1)")
    if confirm.seeds < 2:
        raise KDSweepError(
            f"--confirm-seeds {confirm.seeds}: a confidence interval needs >= 2 seeds"
        )
    n = n_configs(space)
    if k > n:
        raise KDSweepError(f"--confirm {k}: the search has only {n} config(s) ({space.source})")


def confirm_seeds(m: int, used: set[int]) -> list[int]:
    """`m` seeds from SEED_BASE on, none of them in `used` (the search's seeds)."""
    out, s = [], SEED_BASE
    while len(out) < m:
        if s not in used:
            out.append(s)
        s += 1
    return out


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
    trials: list[tuple[dict[str, Any], float, str]], space: SweepSpace, k: int, epochs: int
) -> list[Arm]:
    """The top `k` configs and the baseline: the best independent config of the search (it may
    be one of the top k), or one built from the best config's fields an independent run has.
    Every arm runs `epochs` (the most any search trial was allowed: fair budgets)."""
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
        names = space.config_class(BASELINE).field_names() | {"task"}
        cfg = {k: v for k, v in arms[0].config.items() if k in names}
        cfg["condition"] = BASELINE
        arms.append(Arm(cfg, _label(cfg, varied), math.nan, "added", baseline=True))
    for a in arms:
        a.config["epochs"] = epochs
        if "attributions" in space.config_class(a.config["condition"]).field_names():
            a.config["attributions"] = True  # the answer's trials: attribution similarity too
    return arms


def _label(config: dict[str, Any], varied: list[str]) -> str:
    return describe(config, [k for k in varied if config.get(k) is not None])


class ConfirmSpace(SweepSpace):
    """A space of exactly these arms x seeds: a grid over `confirm_arm` (an index; not a config
    field, so run_trial drops it) and `seed`; every config field follows the arm (sample_from:
    handed to Tuner.restore again, driver/tuner.py)."""

    restore_with_param_space = True

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
            space[k] = tune.sample_from(lambda config, k=k: arms[config["confirm_arm"]].get(k))
        return space


def _finite(v: Any) -> bool:
    try:
        return math.isfinite(float(v))
    except (TypeError, ValueError):
        return False


# ---------------------------------------------------------------- the stage (Ray + files)
def _arms_and_seeds(plan: SweepPlan, grid, outcome) -> tuple[list, list, bool]:
    """(arms, seeds, restore) of the confirm run `plan`: those it started with when it can be
    restored, else chosen from the search's results."""
    arms_file = plan.path / ARMS_FILE
    restore = arms_file.is_file() and check_resume(plan.path, plan.space.to_dict(), False)
    if restore:
        saved = json.loads(arms_file.read_text())
        return [Arm(**a) for a in saved["arms"]], saved["seeds"], True
    metric = METRIC[plan.space.task]
    trials = [(r.config or {}, row[metric], row["status"]) for r, row in zip(grid, outcome.rows)]
    used = {int(cfg.get("seed", 0)) for cfg, _, _ in trials}
    seeds = confirm_seeds(plan.confirm.seeds, used)
    return choose_arms(trials, plan.space, plan.confirm.k, plan.max_epochs), seeds, False


def confirm_plan(plan: SweepPlan) -> SweepPlan:
    """The confirm run's plan: its own folder beside the search's, no early stopping, no seed
    groups (the arms x seeds grid is explicit)."""
    k, m = plan.confirm.k, plan.confirm.seeds
    return derive(
        plan,
        name=f"{plan.name}-confirm-k{k}-s{m}",
        seeds=0,
        scheduler=dataclasses.replace(plan.scheduler, asha=False),
    )


def run_confirm(
    plan: SweepPlan, grid, outcome, ray, journal, prep: dict[str, Any]
) -> ConfirmOutcome | None:
    """Run (or resume) the confirm stage after the search, on the search's Ray session `ray`;
    None when nothing can be confirmed."""
    cplan = confirm_plan(plan)
    arms, seeds, restore = _arms_and_seeds(cplan, grid, outcome)
    if not arms:
        print("[kdsweep] confirm: no finished config to confirm")
        return None
    cplan.path.mkdir(parents=True, exist_ok=True)
    saved = {"arms": [asdict(a) for a in arms], "seeds": seeds}
    (cplan.path / ARMS_FILE).write_text(json.dumps(saved, default=str, indent=1))
    max_t = int(arms[0].config["epochs"])
    print(
        f"[kdsweep] confirm stage: {len(arms)} config(s) x {len(seeds)} fresh seed(s) {seeds}, "
        f"{max_t} epochs each, no early stopping; {'resuming' if restore else 'starting'} "
        f"({cplan.path})"
    )
    cspace = ConfirmSpace(plan.space, [a.config for a in arms], seeds)
    cplan = dataclasses.replace(cplan, space=cspace, max_epochs=max_t)
    callback = trial_callback(journal, cplan, prep, extra_tags=STAGE_TAG)
    cgrid, _ = fit(cplan, ray, callback, restore)
    callback.close_open_runs()
    rows = confirm_rows(cgrid, plan.space.task, max_t, journal)
    done = ConfirmOutcome(path=cplan.path, arms=arms, seeds=seeds, trials=rows)
    varied = [k for k in plan.space.varied if k != "seed"]
    pruned = {(r["condition"], *(str(r.get(k)) for k in varied))
              for r in outcome.rows if r["status"] == "pruned"}  # fmt: skip
    done.search_pruned = len(pruned)
    done.search_seeds = max(1, plan.seeds)
    done.search_asha = plan.scheduler.asha
    done.complete = len(rows) == cspace.grid_size() and all(r["done"] for r in rows)
    write_answer(done, plan.space.task, Path(outcome.path))
    return done


def confirm_rows(cgrid, task: str, max_t: int, journal) -> list[dict[str, Any]]:
    """Per confirm trial: arm, seed, best dev, test of its best checkpoint, seconds, done (ran
    all `max_t` epochs). Test is evaluated once per trial, kept in its folder and journaled
    as the trial run's test metrics (a rerun reads the kept file)."""
    metric, mode = METRIC[task], MODE[task]
    rows = []
    for r in cgrid:
        cfg, m = r.config or {}, r.metrics or {}
        df = r.metrics_dataframe
        dev = [] if df is None or metric not in df else [v for v in df[metric] if _finite(v)]
        done = not r.error and bool(dev) and int(m.get("epoch", 0)) >= max_t
        trial_id = m.get("trial_id") or Path(r.path).name
        rows.append(
            {
                "trial_id": trial_id,
                "arm": int(cfg.get("confirm_arm", -1)),
                "seed": cfg.get("seed"),
                "dev": (max(dev) if mode == "max" else min(dev)) if dev else math.nan,
                "test": _test_once(r, trial_id, metric, mode, max_t, journal) if done else {},
                "train_s": float(m.get("train_seconds", math.nan)),
                "done": done,
            }
        )
    return rows


def _test_once(result, trial_id: str, metric: str, mode: str, epochs: int, journal) -> dict:
    """The test metrics of a confirm trial's best checkpoint: from its folder, or evaluated now
    (once), journaled onto the trial's MLflow run and kept in the folder."""
    from driver.summary import best_checkpoint

    kept = Path(result.path) / TEST_FILE
    if kept.is_file():
        return json.loads(kept.read_text())["test"]
    got = best_checkpoint(result, metric, mode, test=True)
    test = {k: float(v) for k, v in got.get("test", {}).items() if _finite(v)}
    journal.append(ev="result", trial=trial_id, step=epochs, metrics=test, tags=STAGE_TAG)
    kept.write_text(json.dumps({"test": test, "checkpoint": got.get("checkpoint", "")}))
    return test


def write_answer(done: ConfirmOutcome, task: str, sweep_dir: Path) -> None:
    """The answer from the finished trials: text, confirm.md + confirm.json in the sweep
    folder, and the tags of the sweep's parent run."""
    metric = METRIC[task]
    short, test_key = metric.removeprefix("dev_"), TEST_METRIC[task]

    def per_seed(i: int, pick) -> list[float]:
        got = {r["seed"]: r for r in done.trials if r["arm"] == i and r["done"]}
        return [float(pick(got[s])) if s in got else math.nan for s in done.seeds]

    labels = [a.label for a in done.arms]
    test = {lab: per_seed(i, lambda r: r["test"].get(test_key, math.nan))
            for i, lab in enumerate(labels)}  # fmt: skip
    dev = {lab: per_seed(i, lambda r: r["dev"]) for i, lab in enumerate(labels)}
    train = {lab: per_seed(i, lambda r: r["train_s"]) for i, lab in enumerate(labels)}
    info = {
        a.label: {
            "search_dev": a.search_dev,
            "search_status": a.search_status,
            "train_s": _mean(train[a.label]),
        }
        for a in done.arms
    }
    base = next(a.label for a in done.arms if a.baseline)
    done.answer = confirm_answer(test, base, MODE[task] == "max", dev=dev, info=info)
    epochs = done.arms[0].config["epochs"]
    head = (
        f"confirm stage: {len(labels)} config(s) x seeds {done.seeds}, {epochs} epochs,"
        f" no early stopping; best checkpoint by {metric}, tested once; mean +- 95% CI "
        f"(t over seeds); paired by seed vs {base} on {test_key}, Holm-corrected"
    )
    if not done.complete:
        head += f"\n[kdsweep] confirm stage interrupted: {sum(r['done'] for r in done.trials)}"
        head += f"/{len(labels) * len(done.seeds)} trials done; run the same command to finish"
    status = {a.label: a.search_status for a in done.arms}
    pruned = pruned_line(test, status, MODE[task] == "max", done.search_pruned)
    pruned += "\n\n" + search_line(done.search_seeds, done.search_pruned, done.search_asha)
    done.text = "\n".join([f"[kdsweep] {head}", format_answer(done.answer, short), pruned])
    md, js = sweep_dir / "confirm.md", sweep_dir / "confirm.json"
    md.write_text(
        f"# Confirm stage\n\n{head}\n\n{markdown_answer(done.answer, short)}\n\n{pruned}\n"
    )
    record = {"complete": done.complete, "path": str(done.path), "seeds": done.seeds}
    record.update(arms=[asdict(a) for a in done.arms], trials=done.trials, answer=done.answer)
    js.write_text(json.dumps(record, indent=1, default=str))
    done.artifacts = [md, js]
    comps = done.answer["comparisons"]  # MLflow tag keys: no '=' (labels have 'T=4')
    done.tags = {
        f"confirm.verdict.{i}": f"{c['label']}: {c['verdict']}" for i, c in enumerate(comps)
    }
    done.tags["confirm.complete"] = str(done.complete)


def _mean(values: list[float]) -> float:
    vals = [v for v in values if _finite(v)]
    return sum(vals) / len(vals) if vals else math.nan
