"""One sweep from start to end, as a short sequence of named steps:

    resume check -> prepare (data, teacher) -> journal + MLflow parent run -> Ray + Tuner + fit
    -> summary (table, best trial tested once) -> confirm stage (--confirm K: driver/confirm.py)
    -> trials.csv/md, best.json, parent run closed -> the answer printed

Every step reads the `SweepPlan` (driver/plan.py). Ray starts once, when the search's Tuner
first needs it, and serves the confirm stage too; it is shut down whatever happens. The Tuner
itself is built in driver/tuner.py (`build_tuner`), one Tune run in driver/fit.py (`fit`).
"""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path

from driver import ray_auth
from driver.confirm import run_confirm
from driver.fit import _trial_tags, describe_trial, fit, trial_callback  # noqa: F401
from driver.packing import fit_gpu_share
from driver.plan import PROJECT_DIR, SweepPlan
from driver.preparation import prepare
from driver.resume import SPACE_FILE, check_resume
from driver.summary import SweepOutcome, format_table, summarize, write_tables
from driver.tuner import RAY_PIDS, init_ray, resolve_resources, shutdown_ray

# Sweeps started before driver/fit.py pickled these names (in their trial callback) as
# driver.run's: kept here so that they resume (driver/resume.py checks every pickled name).
_describe = describe_trial


class RaySession:
    """The sweep's one Ray: started by the first Tune run that needs it (`cluster()`), shared
    by the search and its confirm stage, shut down by `close()` (its process ids are kept in
    the search's folder, so a killed sweep's Ray is reaped by the next run)."""

    def __init__(self, plan: SweepPlan, res: dict[str, float]):
        self.plan, self.res = plan, res  # res: each trial's CPU/GPU share
        self._cluster: dict | None = None

    def cluster(self) -> dict:
        """The cluster's resources, Ray started on the first call."""
        if self._cluster is None:
            t0 = time.monotonic()
            self._cluster = init_ray(self.plan, self.plan.path / RAY_PIDS, self.res)
            where = f"cluster {self.plan.address}" if self.plan.address else "local"
            print(f"[kdsweep] Ray ({where}) started in {time.monotonic() - t0:.1f} s")
        return self._cluster

    def close(self) -> None:
        if self._cluster is not None:
            shutdown_ray(self.plan.path / RAY_PIDS)
            self._cluster = None


def run_sweep(plan: SweepPlan) -> SweepOutcome:
    """Validate, prepare, run (or resume) the sweep, then summarize and test the best trial."""
    res = resolve_resources(plan)
    # Ray token auth on and the token file checked before anything is written or prepared
    ray_auth.configure(plan.address)
    restore = check_resume(plan.path, plan.space.to_dict(), plan.resume)
    print(f"[kdsweep] sweep {plan.name}: {'resuming' if restore else 'starting'} ({plan.path})")
    prep = prepare(plan.space)  # bad data/teacher fails here, before anything is written
    res = fit_gpu_share(plan, res)  # GPU: auto share measured, a given one checked
    plan.path.mkdir(parents=True, exist_ok=True)
    (plan.path / SPACE_FILE).write_text(json.dumps(plan.space.to_dict(), default=str, indent=1))
    journal, callback = open_journal(plan, prep)
    ray = RaySession(plan, res)
    try:
        grid, wall = fit(plan, ray, callback, restore)
        outcome = summarize_search(plan, grid, journal, prep)
        callback.close_open_runs()
        confirmed = None
        if plan.confirm.k and not outcome.interrupted:
            confirmed = run_confirm(plan, grid, outcome, ray, journal, prep)
    finally:
        ray.close()
    if confirmed and not confirmed.complete:
        outcome.interrupted = True  # the parent run ends KILLED; the same command finishes it
    artifacts = write_tables(outcome, plan.path)
    extra = confirmed.artifacts if confirmed else []
    tags = confirmed.tags if confirmed else {}
    synced = close_journal(journal, outcome, wall, artifacts + extra, tags)
    print_outcome(outcome, plan.metric, wall, artifacts, journal, synced)
    if confirmed:
        print(confirmed.text)
    return outcome


def summarize_search(plan: SweepPlan, grid, journal, prep: dict) -> SweepOutcome:
    """The search's table and best trial (tested once), linked to the MLflow parent run."""
    n_dev = int(prep.get("tags", {}).get("dev_examples", 0))
    outcome = summarize(
        grid,
        plan.space,
        plan.name,
        plan.path,
        plan.max_epochs,
        ended(journal),
        plan.test,
        n_dev,
        attributions=not plan.confirm.k,  # the confirm stage's trials compute them: once is enough
    )
    outcome.parent_run_id = journal.state().get("parent")
    return outcome


def open_journal(plan: SweepPlan, prep: dict):
    """The sweep's MLflow journal with its parent run opened, and the per-trial callback."""
    from driver.tracking import Journal

    space = plan.space
    artifact_root = (PROJECT_DIR / "mlartifacts").as_uri()
    journal = Journal(plan.path, plan.tracking_uri, f"kdsweep/{plan.name}", artifact_root)
    # The parent run is this sweep folder's: a resume finds it again by the uid its journal
    # holds; a new sweep under a reused name (its folder deleted) gets a run of its own instead
    # of logging changed params onto the old one, which MLflow refuses.
    opened = [ev["uid"] for ev in journal.events() if ev["ev"] == "parent"]
    journal.append(
        ev="parent",
        uid=opened[0] if opened else f"sweep:{plan.name}:{uuid.uuid4().hex[:12]}",
        name=plan.name,
        tags={"kdsweep.sweep": plan.name, "task": space.task, **prep.get("tags", {})},
        params={
            "space": space.source,
            **{f"fixed.{k}": v for k, v in space.fixed.items()},
            **{f"space.{k}": f"{kind}{vals}" for k, (kind, vals) in space.dists.items()},
        },
    )
    journal.sync(force=True)
    return journal, trial_callback(journal, plan, prep)


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
