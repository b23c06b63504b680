"""One sweep from start to end, as a short sequence of named steps:

    resume check -> prepare (data, teacher) -> journal + MLflow parent run -> Ray + Tuner + fit
    -> summary (table, best trial tested once) -> confirm stage (--confirm K: driver/confirm.py)
    -> trials.csv/md, best.json, parent run closed -> the answer printed

The Tuner itself is built in driver/tuner.py (`build_tuner`).
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import time
from pathlib import Path
from typing import Any

from driver import ray_auth
from driver.labels import describe
from driver.packing import fit_gpu_share
from driver.preparation import prepare
from driver.space import SweepSpace
from driver.summary import SweepOutcome, format_table, summarize, write_tables
from driver.tuner import (
    RAY_PIDS,
    build_tuner,
    concurrent_slots,
    init_ray,
    resolve_resources,
    shutdown_ray,
)
from kdsweep.errors import KDSweepError
from trainables.metrics import METRIC, MODE
from trainables.registry import config_class

PROJECT_DIR = Path(__file__).resolve().parents[1]
SPACE_FILE = "kdsweep_space.json"  # the space a sweep started with, for `--resume` checks


def run_sweep(name: str, args: argparse.Namespace, space: SweepSpace) -> SweepOutcome:
    """Validate, prepare, run (or resume) the sweep, then summarize and test the best trial."""
    from driver.tracking import default_tracking_uri

    sweep = sweep_name(name, space, args)
    storage = Path(args.storage).expanduser().resolve()
    path = storage / sweep
    res = resolve_resources(space, args)
    # Ray token auth on and the token file checked before anything is written or prepared
    ray_auth.configure(args.address or os.environ.get("RAY_ADDRESS"))
    restore = check_resume(path, space, args.resume)
    print(f"[kdsweep] sweep {sweep}: {'resuming' if restore else 'starting'} ({path})")
    prep = prepare(space)  # bad data/teacher fails here, before anything is written
    res = fit_gpu_share(space, args, res)  # GPU: auto share measured, a given one checked
    path.mkdir(parents=True, exist_ok=True)
    (path / SPACE_FILE).write_text(json.dumps(space.to_dict(), default=str, indent=1))
    max_t = max_epochs(space)
    tracking_uri = args.mlflow_uri or default_tracking_uri(PROJECT_DIR)
    journal, callback = open_journal(path, sweep, space, prep, tracking_uri, max_t)

    grid, wall = fit(space, args, sweep, storage, res, max_t, callback, restore, tracking_uri)

    n_dev = int(prep.get("tags", {}).get("dev_examples", 0))
    outcome = summarize(grid, space, sweep, path, max_t, ended(journal), not args.no_test, n_dev)
    outcome.parent_run_id = journal.state().get("parent")
    callback.close_open_runs()
    confirmed = confirm(grid, outcome, space, args, storage, res, journal, prep, tracking_uri)
    if confirmed and not confirmed.complete:
        outcome.interrupted = True  # the parent run ends KILLED; the same command finishes it
    artifacts = write_tables(outcome, path)
    extra = confirmed.artifacts if confirmed else []
    tags = confirmed.tags if confirmed else {}
    synced = close_journal(journal, outcome, wall, artifacts + extra, tags)
    print_outcome(outcome, METRIC[space.task], wall, artifacts, journal, synced)
    if confirmed:
        print(confirmed.text)
    return outcome


def confirm(grid, outcome, space, args, storage, res, journal, prep, tracking_uri):
    """The confirm stage (`--confirm K`, driver/confirm.py): top K + baseline on fresh seeds,
    full length, tested once; None when not asked for or the search was interrupted."""
    if not getattr(args, "confirm", None) or outcome.interrupted:
        return None
    from driver.confirm import run_confirm

    return run_confirm(grid, outcome, space, args, storage, res, journal, prep, tracking_uri)


def sweep_name(name: str, space: SweepSpace, args: argparse.Namespace) -> str:
    """`--name`, or '<sweep>-<task>-<dataset>[-smoke]' (+ a time stamp with --fresh)."""
    if args.name:
        return args.name
    data = space.fixed.get("corpus", "commands") if space.task == "asr" else None
    dataset = Path(str(data or space.fixed.get("dataset", "fortunes"))).stem
    suffix = "-smoke" if args.smoke else ""
    stem = Path(str(args.space)).stem  # `--space other.yaml` is another sweep: its own folder
    label = name if stem in (name, f"asr_{name}") else stem
    base = f"{label}-{space.task}-{dataset}{suffix}"
    return f"{base}-{time.strftime('%Y%m%d-%H%M%S')}" if args.fresh else base


def check_resume(path: Path, space: SweepSpace, resume: bool) -> bool:
    """Whether the sweep at `path` is resumed: the same command continues an interrupted sweep,
    with the same search space (a changed one is an error); `--resume` demands one."""
    from ray.tune import Tuner

    restorable = Tuner.can_restore(str(path))
    if resume and not restorable:
        raise KDSweepError(f"--resume: nothing to resume at {path}")
    space_file = path / SPACE_FILE
    if restorable and space_file.is_file():
        before = json.loads(space_file.read_text())
        now = json.loads(json.dumps(space.to_dict(), default=str))
        if before != now:
            raise KDSweepError(
                f"--resume: the search space of {path} changed since the sweep started "
                f"({space_diff(before, now)}); restore the YAML/overrides, or use --fresh "
                "(a new sweep beside this one, whose results stay)"
            )
    return restorable


def space_diff(before: dict[str, Any], now: dict[str, Any]) -> str:
    """'key: old -> new' for what differs between two saved spaces (fixed values, dists, ...)."""

    def flat(d: dict[str, Any]) -> dict[str, Any]:
        out = {k: v for k, v in d.items() if k not in ("fixed", "dists")}
        out.update(d.get("fixed", {}))
        out.update({k: f"{kind} {vals}" for k, (kind, vals) in d.get("dists", {}).items()})
        return out

    a, b = flat(before), flat(now)
    keys = sorted(k for k in set(a) | set(b) if a.get(k, "(unset)") != b.get(k, "(unset)"))
    return "; ".join(f"{k}: {a.get(k, '(unset)')} -> {b.get(k, '(unset)')}" for k in keys)


def max_epochs(space: SweepSpace) -> int:
    """The most epochs any trial runs (ASHA's max_t): the space's, or the config default."""
    max_t = int(max([space.fixed.get("epochs", 0)] + list(space.dists.get("epochs", (0, [0]))[1])))
    return max_t or config_class(space.task, space.conditions[0])().epochs


def open_journal(
    path: Path, sweep: str, space: SweepSpace, prep: dict, tracking_uri: str, max_t: int
):
    """The sweep's MLflow journal with its parent run opened, and the per-trial callback."""
    from driver.tracking import Journal

    artifact_root = (PROJECT_DIR / "mlartifacts").as_uri()
    journal = Journal(path, tracking_uri, f"kdsweep/{sweep}", artifact_root)
    journal.append(
        ev="parent",
        uid=f"sweep:{sweep}",
        name=sweep,
        tags={"kdsweep.sweep": sweep, "task": space.task, **prep.get("tags", {})},
        params={
            "space": space.source,
            **{f"fixed.{k}": v for k, v in space.fixed.items()},
            **{f"space.{k}": f"{kind}{vals}" for k, (kind, vals) in space.dists.items()},
        },
    )
    journal.sync(force=True)
    return journal, trial_callback(journal, space, prep, max_t)


def trial_callback(
    journal, space: SweepSpace, prep: dict, max_t: int, extra_tags: dict | None = None
):
    """The per-trial MLflow callback of a Tune run journaled into `journal` (`extra_tags` on
    every trial's run, e.g. the confirm stage's)."""
    from driver.tracking import MlflowTrialCallback

    tags = {**prep.get("tags", {}), **(extra_tags or {})}
    return MlflowTrialCallback(
        journal,
        describe=functools.partial(_describe, varied=space.varied),
        tags_for=functools.partial(_trial_tags, task=space.task, prep_tags=tags),
        max_epochs=max_t,
    )


def _describe(config: dict[str, Any], varied: list[str]) -> str:
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


def fit(
    space: SweepSpace,
    args: argparse.Namespace,
    sweep: str,
    storage: Path,
    res: dict[str, float],
    max_t: int,
    callback,
    restore: bool,
    tracking_uri: str,
):
    """Start Ray, build the Tuner, run it; Ray is shut down whatever happens. (grid, seconds)"""
    from driver.progress import LiveProgress
    from driver.pruning import CheckpointPruner, prune_checkpoints

    path = storage / sweep
    metric, mode = METRIC[space.task], MODE[space.task]
    cluster = init_ray(args, path / RAY_PIDS, res)
    try:
        slots = concurrent_slots(cluster, res)
        progress = LiveProgress(
            metric,
            mode,
            max_t,
            describe=functools.partial(_describe, varied=space.varied),
            slots=slots,
            quiet=getattr(args, "quiet", False),
            start=time.monotonic(),
        )
        callbacks = [callback, CheckpointPruner(path, metric, mode), progress]
        tuner = build_tuner(space, args, sweep, storage, res, slots, max_t, callbacks, restore)
        n_trials = space.num_samples * (1 if space.uses_optuna else space.grid_size())
        print(
            f"[kdsweep] {n_trials} trial(s), {slots} at a time, "
            f"{res['cpu']:g} CPU / {res['gpu']:g} GPU each; "
            f"metric {metric} ({mode}); MLflow: {tracking_uri}"
        )
        t0 = time.time()
        try:
            grid = tuner.fit()
        finally:
            progress.close()
        wall = time.time() - t0
        prune_checkpoints(path, metric, mode, margin=1)  # fit saved the final state
    finally:
        shutdown_ray(path / RAY_PIDS)
    return grid, wall


def ended(journal) -> dict[str, str]:
    """Trial id -> FINISHED/FAILED for the trials the journal saw end (others were cut off)."""
    return {
        ev["trial"]: ev["status"]
        for ev in journal.events()
        if ev["ev"] == "end" and ev["status"] in ("FINISHED", "FAILED")
    }


def close_journal(
    journal, outcome: SweepOutcome, wall: float, artifacts: list[Path], tags: dict | None = None
) -> bool:
    """End the parent run with the best trial's metrics, the tables and `tags` (the confirm
    stage's verdicts); True when synced."""
    best_metrics = {}
    if outcome.best:
        best_metrics = {
            f"best_{outcome.best['metric']}": outcome.best["value"],
            **{f"best_{k}": v for k, v in outcome.best.get("test", {}).items()},
        }
    journal.append(
        ev="parent_end",
        status="KILLED" if outcome.interrupted else "FINISHED",
        metrics={
            **best_metrics,
            "wall_seconds": wall,
            "trials": len(outcome.rows),
            "pruned": sum(r["status"] == "pruned" for r in outcome.rows),
        },
        tags={
            "best_trial": outcome.best["trial_id"] if outcome.best else "",
            **{f"warning.summary_{i}": w for i, w in enumerate(outcome.warnings)},
            **(tags or {}),
        },
        artifacts=[str(a) for a in artifacts],
    )
    return journal.sync(force=True)


def print_outcome(
    outcome: SweepOutcome, metric: str, wall: float, artifacts: list[Path], journal, synced: bool
) -> None:
    """The table, the best trial and what to do next, on the console."""
    print(format_table(outcome.rows, metric))
    print(outcome.best_summary())
    for w in outcome.warnings:
        print(f"[kdsweep] warning: {w}")
    print(f"[kdsweep] wall time {wall:.0f} s; table: {artifacts[1]}")
    print(f"[kdsweep] MLflow UI: {journal.ui_link()}")
    if not synced:
        pending = journal.pending()
        print(
            f"[kdsweep] {pending} MLflow event(s) pending: python -m sweeps.sync_mlflow "
            f"{outcome.path}"
        )
    if outcome.interrupted:
        print("[kdsweep] interrupted: run the same command again (or add --resume) to continue")
