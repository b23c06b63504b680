"""Fair budgets and the teacher's cost: did every config and its baseline get the same epochs
and optimizer steps, and what does a trial cost with its share of the teacher's training?

The pure pieces (`trial_budget`, `budget_check`, `amortised_seconds`) take plain values; the
`sweep_*` functions read them off a loaded `Sweep`.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from driver.reporting.compare import baseline_for
from driver.reporting.load import BASELINE, INCL_TEACHER, Sweep, as_float, group_trials

# The teacher store of each teacher kind, under the trial's cache_dir (kdsweep's layout).
STORE_DIR = {"text": "teachers", "asr": "asr_teachers"}


# ---------------------------------------------------------------- budgets
@dataclass(frozen=True)
class Budget:
    """What a trial trained for: epochs and optimizer steps (None: not reported)."""

    epochs: int
    steps: int | None = None

    def __str__(self) -> str:
        s = f"{self.epochs} epoch{'s' if self.epochs != 1 else ''}"
        return s + (f", {self.steps} steps" if self.steps is not None else "")


def trial_budget(metrics: dict[str, float]) -> Budget | None:
    """A trial's budget from its last reported metrics: `epoch`, and the steps as
    `optimizer_steps` or `epoch` x `steps_per_epoch`; None without an `epoch` metric."""
    if not math.isfinite(metrics.get("epoch", math.nan)):
        return None
    epochs = int(metrics["epoch"])
    if math.isfinite(metrics.get("optimizer_steps", math.nan)):
        return Budget(epochs, int(metrics["optimizer_steps"]))
    if math.isfinite(metrics.get("steps_per_epoch", math.nan)):
        return Budget(epochs, int(round(epochs * metrics["steps_per_epoch"])))
    return Budget(epochs)


# (trial name, its budget, pruned and not counted)
TrialBudget = tuple[str, Budget, bool]


def _modal(budgets: list[Budget]) -> Budget:
    return Counter(budgets).most_common(1)[0][0]


def budget_check(configs: dict[str, list[TrialBudget]], baseline_of: dict[str, str]) -> list[str]:
    """The report's budget lines: "budgets: equal (N epochs, S steps each)", or "budgets: not
    equal" and one line per mismatch (a config against its baseline, a trial against its
    config); then one line per pruned trial that ran less than its reference.

    `configs`: config label -> its trials; `baseline_of`: distilled label -> baseline label.
    A config's budget is the most common one of its counted trials; its reference is its
    baseline's (a config without a baseline: the sweep's most common budget).
    """
    counted = {k: [b for _, b, p in v if not p] for k, v in configs.items()}
    modal = {k: _modal(v) for k, v in counted.items() if v}  # configs with a counted trial
    every = [b for v in counted.values() for b in v] or [
        b for v in configs.values() for _, b, _ in v
    ]
    if not every:
        return ["budgets: no trial reported its epochs"]
    usual = _modal(every)
    mismatches, pruned_lines = [], []
    for label, trials in configs.items():
        mine, base = modal.get(label), baseline_of.get(label, "")
        if base in modal:
            ref, ref_name = modal[base], base
        elif mine is not None and label in baseline_of.values():
            ref, ref_name = mine, f"the rest of {label}"  # a baseline: against itself
        else:
            ref, ref_name = usual, "most trials"
        if mine is not None and mine != ref:
            mismatches.append(f"- {label}: {mine}; {ref_name}: {ref}")
        for name, b, pruned in trials:
            if pruned and b != ref:
                pruned_lines.append(f"- {name} (pruned, not counted): ran {b}; {ref_name}: {ref}")
            elif not pruned and mine is not None and b != mine:
                mismatches.append(f"- {name}: {b}; the rest of {label}: {mine}")
    if mismatches:
        head = [f"budgets: not equal ({len(mismatches)} mismatch(es)):", *mismatches]
    elif usual.steps is None:
        head = [f"budgets: equal ({usual} each; optimizer steps not reported by these trials)"]
    else:
        head = [f"budgets: equal ({usual} each)"]
    return head + pruned_lines


def sweep_budget_lines(sweep: Sweep) -> list[str]:
    """`budget_check` of a sweep: its counted configs, each against its `independent`
    baseline, and the pruned trials left out of the statistics."""
    configs: dict[str, list[TrialBudget]] = {}
    baseline_of: dict[str, str] = {}
    left_out = {t.run_id for t in sweep.pruned}
    for g in sweep.groups + group_trials(sweep.pruned, sweep.varied):
        for t in g.trials:
            if (b := trial_budget(t.metrics)) is not None:
                configs.setdefault(g.label, []).append((t.name, b, t.run_id in left_out))
        if g.condition != BASELINE and (base := baseline_for(g, sweep.groups)) is not None:
            baseline_of[g.label] = base.label
    return budget_check(configs, baseline_of)


# ---------------------------------------------------------------- the teacher's cost
def amortised_seconds(
    own: list[float], kinds: list[str], teacher_seconds: dict[str, float]
) -> list[float]:
    """Each trial's train seconds plus its share of its teacher's training: the teacher's
    seconds divided by the number of trials (in `kinds`) that used it. Kind "" = no teacher
    (its own seconds); a kind without known seconds gives NaN."""
    users = Counter(k for k in kinds if k)
    out = []
    for s, k in zip(own, kinds):
        if not k:
            out.append(s)
        else:
            out.append(s + teacher_seconds.get(k, math.nan) / users[k])
    return out


def teacher_kind(task: str, condition: str) -> str:
    """Which stored model a condition learns from: "" (none), "teacher" or (speech) "twin"."""
    if condition == BASELINE:
        return ""
    if task != "asr":
        return "teacher"
    from kdsweep.errors import KDSweepError
    from trainables.registry import config_class  # the condition's own declaration

    try:
        return config_class(task, condition).teacher_kind  # type: ignore[attr-defined]
    except KDSweepError:  # a condition this checkout does not know
        return "teacher"


def teacher_seconds(sweep: Sweep, kinds: set[str]) -> dict[str, float]:
    """Training seconds of each teacher kind: the parent run's `<kind>_train_seconds` tag
    (driver/preparation.py), else the teacher store's meta.json (`<kind>_id` tag, cache_dir)
    for sweeps run before the tag existed; a kind found in neither is left out."""
    out: dict[str, float] = {}
    trials = sweep.trials + sweep.pruned
    cache = next((t.params["cache_dir"] for t in trials if t.params.get("cache_dir")), "")
    for kind in kinds:
        tags = {**next((t.tags for t in trials if f"{kind}_id" in t.tags), {}), **sweep.parent_tags}
        if (s := as_float(tags.get(f"{kind}_train_seconds", ""))) is not None:
            out[kind] = s
            continue
        if not cache:
            continue
        entry = Path(cache) / STORE_DIR.get(sweep.task, "teachers") / tags.get(f"{kind}_id", "-")
        try:
            meta = json.loads((entry / "meta.json").read_text())
        except (OSError, ValueError):
            continue
        out[kind] = float(meta.get("train_seconds", 0.0))  # none: used as it is, not trained
    return out


def add_teacher_cost(sweep: Sweep) -> dict[str, Any]:
    """Set every trial's INCL_TEACHER metric (own train_seconds + its teacher's share);
    returns {kind: (teacher seconds, trials that used it)} for the report's note."""
    trials = [t for t in sweep.trials + sweep.pruned if "train_seconds" in t.metrics]
    kinds = [teacher_kind(sweep.task, t.condition) for t in trials]
    seconds = teacher_seconds(sweep, {k for k in kinds if k})
    totals = amortised_seconds([t.metrics["train_seconds"] for t in trials], kinds, seconds)
    for t, total in zip(trials, totals):
        t.metrics[INCL_TEACHER] = total
    users = Counter(k for k in kinds if k)
    return {k: (seconds.get(k, math.nan), n) for k, n in users.items()}


def teacher_cost_note(cost: dict[str, Any]) -> str:
    """One sentence on how the INCL_TEACHER column was computed."""
    if not cost:
        return "train s (incl. teacher): no trial learned from a teacher, so it is train s."
    parts = []
    for kind, (s, n) in sorted(cost.items()):
        known = f"{s:.0f} s" if math.isfinite(s) else "unknown seconds (not recorded)"
        parts.append(f"the {kind}'s training ({known}) / {n} trial(s) that used it")
    return (
        "train s (incl. teacher): the trial's own train seconds + "
        + "; ".join(parts)
        + f" (counted and pruned trials; `{BASELINE}` uses none). A teacher reused from the "
        "store is charged as if trained for this sweep."
    )
