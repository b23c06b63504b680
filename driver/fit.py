"""One Tune run of a plan on the sweep's Ray session: the search, or its confirm stage.

    callback = trial_callback(journal, plan, prep)      # per-trial MLflow runs
    grid, wall = fit(plan, ray, callback, restore)      # ray: driver/run.py's RaySession

Ray is started once per sweep (by the first `fit` that needs it) and shut down by run_sweep.
"""

from __future__ import annotations

import functools
import time
from typing import Any

from driver.labels import describe
from driver.plan import SweepPlan
from driver.tuner import build_tuner, concurrent_slots


def fit(plan: SweepPlan, ray, callback, restore: bool):
    """Build the plan's Tuner on the sweep's Ray session `ray` (`ray.cluster()` starts it once;
    `ray.res`: each trial's CPU/GPU share), run it. (grid, seconds)"""
    from driver.progress import LiveProgress
    from driver.pruning import CheckpointPruner, prune_checkpoints

    res = ray.res
    slots = concurrent_slots(ray.cluster(), res)
    progress = LiveProgress(
        plan.metric,
        plan.mode,
        plan.max_epochs,
        describe=functools.partial(describe_trial, varied=plan.space.varied),
        slots=slots,
        quiet=plan.quiet,
        start=time.monotonic(),
    )
    callbacks = [callback, CheckpointPruner(plan.path, plan.metric, plan.mode), progress]
    tuner = build_tuner(plan, res, slots, callbacks, restore)
    print(
        f"[kdsweep] {plan.n_trials} trial(s), {slots} at a time, "
        f"{res['cpu']:g} CPU / {res['gpu']:g} GPU each; "
        f"metric {plan.metric} ({plan.mode}); MLflow: {plan.tracking_uri}"
    )
    t0 = time.time()
    try:
        grid = tuner.fit()
    finally:
        progress.close()
    wall = time.time() - t0
    prune_checkpoints(plan.path, plan.metric, plan.mode, margin=1)  # fit saved the final state
    return grid, wall


def trial_callback(journal, plan: SweepPlan, prep: dict, extra_tags: dict | None = None):
    """The per-trial MLflow callback of a Tune run journaled into `journal` (`extra_tags` on
    every trial's run, e.g. the confirm stage's)."""
    from driver.tracking import MlflowTrialCallback

    tags = {**prep.get("tags", {}), **(extra_tags or {})}
    return MlflowTrialCallback(
        journal,
        describe=functools.partial(describe_trial, varied=plan.space.varied),
        tags_for=functools.partial(_trial_tags, task=plan.space.task, prep_tags=tags),
        max_epochs=plan.max_epochs,
    )


def describe_trial(config: dict[str, Any], varied: list[str]) -> str:
    """The run name; a param the trial's condition does not have (None) is left out."""
    return describe(config, [k for k in varied if config.get(k) is not None])


def _trial_tags(config: dict[str, Any], task: str, prep_tags: dict[str, str]) -> dict:
    """The MLflow tags of one trial's run."""
    return {
        "condition": config.get("condition"),
        "task": task,
        "student": config.get("student", ""),
        "dataset": config.get("dataset", ""),
        **prep_tags,
    }
