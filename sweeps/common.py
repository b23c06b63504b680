"""The one shared helper behind every sweeps/<name>.py: CLI, Tuner, MLflow, resume, summary.

    args = build_parser("temperature", __doc__).parse_args()
    outcome = run_sweep("temperature", args)

Ray is configured for a home PC (local, dashboard off, token auth off, short trial dirs) and kept
behind this module; trainables only see `trainables.tune_io`.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kdsweep.errors import KDSweepError
from kdsweep.paths import cache_root
from sweeps.space import SPACES_DIR, SweepSpace, load_space, parse_overrides
from trainables.checkpointing import checkpoint_epoch, ranked_checkpoints
from trainables.metrics import METRIC, MODE
from trainables.registry import config_class, evaluate_checkpoint, run_trial

PROJECT_DIR = Path(__file__).resolve().parents[1]

# --smoke: tiny real runs (seconds per trial) for tests and a first look.
SMOKE = {
    "text": {
        "per_class": 30,
        "max_len": 32,
        "teacher_epochs": 1,
        "epochs": 2,
        "batch_size": 16,
        "student": "L2-H128",
        "lr": 1e-3,
        "attribution_examples": 16,
    },
    "asr": {
        "n_utterances": 40,
        "layers": 1,
        "hidden": 32,
        "teacher_layers": 1,
        "teacher_hidden": 48,
        "epochs": 2,
        "teacher_epochs": 2,
        "batch_size": 8,
        "beam_width": 8,
    },
}
# Smoke keeps these asr sizes fixed even where the YAML varies them (like `student` for text).
ASR_SIZES = ("n_utterances", "layers", "hidden", "teacher_layers", "teacher_hidden")
# Not *.json: Tune's restore re-uploads a stale copy of every *.json in the experiment folder.
RAY_PIDS = "ray_pids.txt"
MODE_OF_METRIC = {METRIC[t]: MODE[t] for t in METRIC}  # best first in tables
# Short labels for run names: "soft T=4 a=0.9 L2-H128 s0".
SHORT = {"temperature": "T", "alpha": "a", "seed": "s", "lr": "lr", "data_subset": "n"}


def build_parser(name: str, doc: str | None) -> argparse.ArgumentParser:
    """The CLI every sweep script shares."""
    p = argparse.ArgumentParser(
        prog=f"sweeps/{name}.py",
        description=(doc or "").strip().splitlines()[0] if doc else None,
        epilog="Overrides: any config field as key=value, e.g. alpha=0.9 student=L4-H256 "
        "dataset=data/legal.csv. Results: MLflow UI (make mlflow-ui).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("overrides", nargs="*", help="config overrides key=value")
    p.add_argument("--space", default=name, help="search_spaces/<name>.yaml or a YAML path")
    p.add_argument("--task", choices=["text", "asr"], help="override the YAML's task")
    p.add_argument("--dataset", help="fortunes | rotten_tomatoes | hf:<name> | file path")
    p.add_argument("--teacher", help="teacher backbone: minilm | model dir | hub name")
    p.add_argument("--student", help="student size, e.g. L2-H128, L4-H312")
    p.add_argument("--num-samples", type=int, help="grid repeats, or Optuna trials")
    p.add_argument("--seeds", type=int, default=0, help="repeat every config with N seeds")
    p.add_argument("--max-epochs", type=int, help="epochs per trial (ASHA's max_t)")
    p.add_argument("--grace-period", type=int, help="ASHA: epochs before a trial can be cut")
    p.add_argument("--reduction-factor", type=float, help="ASHA: keep 1/rf at each rung")
    p.add_argument("--no-asha", action="store_true", help="run every trial to max epochs")
    p.add_argument("--cpus-per-trial", type=float, help="CPUs per trial (default: YAML or 1)")
    p.add_argument("--gpus-per-trial", type=float, help="GPU share per trial, e.g. 0.25")
    p.add_argument("--name", help="sweep name (default: <sweep>-<task>-<dataset>)")
    p.add_argument("--storage", default=str(PROJECT_DIR / "runs"), help="sweep results dir")
    p.add_argument("--mlflow-uri", help="tracking URI (default $MLFLOW_TRACKING_URI or sqlite)")
    p.add_argument("--optuna-storage", help="e.g. sqlite:///optuna.db (for optuna-dashboard)")
    p.add_argument("--address", help="existing Ray cluster (default $RAY_ADDRESS or local)")
    p.add_argument("--seed", type=int, default=0, help="searcher seed")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--resume", action="store_true", help="resume; fail if nothing to resume")
    g.add_argument("--fresh", action="store_true", help="new sweep; keeps the old results")
    p.add_argument("--smoke", action="store_true", help="tiny real run (seconds per trial)")
    p.add_argument("--no-test", action="store_true", help="skip the best trial's test eval")
    p.add_argument("--verbose", action="store_true", help="show Ray's and trials' logs")
    return p


@dataclass
class SweepOutcome:
    """What a sweep produced: its table, the best trial and where everything is."""

    name: str
    path: Path
    rows: list[dict[str, Any]] = field(default_factory=list)
    best: dict[str, Any] | None = None
    interrupted: bool = False
    parent_run_id: str | None = None

    def best_summary(self) -> str:
        if not self.best:
            return "no trial finished"
        b = self.best
        tests = ", ".join(f"{k}={v:.4f}" for k, v in b.get("test", {}).items())
        return f"best: {b['label']}  {b['metric']}={b['value']:.4f}  {tests}  config={b['params']}"


def space_from_args(name: str, args: argparse.Namespace) -> SweepSpace:
    """YAML + smoke preset + CLI flags/overrides -> a validated space."""
    overrides: dict[str, Any] = {}
    task = args.task
    if task == "asr" and args.space == name and (SPACES_DIR / f"asr_{name}.yaml").is_file():
        args.space = f"asr_{name}"  # `--task asr` picks the speech version of the sweep
    if task is None:
        import yaml

        raw_path = Path(args.space) if Path(args.space).suffix else None
        raw_path = raw_path or PROJECT_DIR / "search_spaces" / f"{args.space}.yaml"
        try:
            task = (yaml.safe_load(raw_path.read_text()) or {}).get("task", "text")
        except (OSError, yaml.YAMLError, AttributeError):
            task = "text"  # load_space below reports the real problem
    if args.task:
        overrides["task"] = args.task
    for flag in ("dataset", "teacher", "student"):
        if getattr(args, flag):
            key = "corpus" if task == "asr" and flag == "dataset" else flag
            overrides[key] = getattr(args, flag)
    if args.max_epochs:
        overrides["epochs"] = args.max_epochs
    overrides.update(parse_overrides(args.overrides))
    overrides["cache_dir"] = str(cache_root(overrides.get("cache_dir", "")))
    if args.smoke:
        # The real sweep's space is validated too: a smoke run must not hide a bad YAML value
        # that its preset happens to replace (e.g. `lr: abc`).
        load_space(args.space, overrides, seeds=args.seeds)
        overrides = {**SMOKE.get(task, {}), **overrides}
    space = load_space(args.space, overrides, seeds=args.seeds)
    if args.smoke:
        # Smoke fixes what would make it slow even if the YAML varies it.
        for k in ("epochs", "student", "per_class", "max_len", "teacher_epochs", *ASR_SIZES):
            if k in space.dists and k in SMOKE.get(task, {}) and k not in overrides_cli(args):
                del space.dists[k]
                space.fixed[k] = SMOKE[task][k]
    if args.num_samples:
        space.num_samples = args.num_samples
    elif args.smoke:
        space.num_samples = min(space.num_samples, 2 if space.uses_optuna else 1)
    return space


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


def overrides_cli(args: argparse.Namespace) -> set[str]:
    return set(parse_overrides(args.overrides))


def sweep_name(name: str, space: SweepSpace, args: argparse.Namespace) -> str:
    if args.name:
        return args.name
    data = space.fixed.get("corpus", "commands") if space.task == "asr" else None
    dataset = Path(str(data or space.fixed.get("dataset", "fortunes"))).stem
    suffix = "-smoke" if args.smoke else ""
    stem = Path(str(args.space)).stem  # `--space other.yaml` is another sweep: its own folder
    label = name if stem in (name, f"asr_{name}") else stem
    base = f"{label}-{space.task}-{dataset}{suffix}"
    return f"{base}-{time.strftime('%Y%m%d-%H%M%S')}" if args.fresh else base


def describe(config: dict[str, Any], varied: list[str]) -> str:
    """Run name that says what the trial is: 'soft T=4 a=0.9 L2-H128 s0'."""
    parts = [str(config.get("condition", "?"))]
    for k in varied:
        if k in ("condition", "student", "seed"):
            continue
        v = config.get(k)
        if isinstance(v, float):
            v = f"{v:.3g}"
        parts.append(f"{SHORT.get(k, k)}={v}")
    size = config.get("student") or (  # asr: L<layers>-H<hidden>
        f"L{config['layers']}-H{config['hidden']}" if "hidden" in config else ""
    )
    parts.append(str(size))
    if "seed" in varied:
        parts.append(f"s{config.get('seed', 0)}")
    return " ".join(p for p in parts if p)


def resolve_resources(space: SweepSpace, args: argparse.Namespace) -> dict[str, float]:
    """CPU/GPU share per trial; a GPU request without a GPU falls back to CPU (never hangs)."""
    cpu = args.cpus_per_trial or space.resources.get("cpu", 1.0)
    gpu = args.gpus_per_trial if args.gpus_per_trial is not None else space.resources.get("gpu", 0)
    if cpu <= 0 or gpu < 0 or gpu > 1 and not float(gpu).is_integer():
        raise KDSweepError(
            f"resources: cpu must be > 0 and gpu a share <= 1 or whole GPUs ({cpu}, {gpu})"
        )
    if gpu > 0 and not args.address and not os.environ.get("RAY_ADDRESS"):
        import torch

        if torch.cuda.device_count() == 0:
            print(f"[kdsweep] no GPU found: running trials on CPU (asked for gpu={gpu} per trial)")
            gpu = 0.0
    return {"cpu": float(cpu), "gpu": float(gpu)}


def init_ray(args: argparse.Namespace, pid_file: Path, res: dict[str, float]) -> dict:
    import ray

    from sweeps import ray_procs

    address = args.address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, log_to_driver=args.verbose, runtime_env=_runtime_env())
    else:
        reaped = ray_procs.reap(pid_file)
        if reaped:
            print(f"[kdsweep] stopped {reaped} Ray process(es) left by a killed earlier run")
        import torch

        ray.init(
            num_cpus=os.cpu_count(),
            num_gpus=torch.cuda.device_count(),
            include_dashboard=False,
            dashboard_host="127.0.0.1",
            log_to_driver=args.verbose,
            logging_level="WARNING",
            configure_logging=True,
            runtime_env=_runtime_env(),
        )
        ray_procs.record(pid_file)
    return ray.cluster_resources()


def _runtime_env() -> dict:
    keep = ("KDSWEEP_HOME", "HF_HOME", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    env = {k: os.environ[k] for k in keep if k in os.environ}
    env.update(TOKENIZERS_PARALLELISM="false", HF_HUB_DISABLE_PROGRESS_BARS="1")
    return {"env_vars": env}


from sweeps.preparation import prepare  # noqa: E402


def run_sweep(
    name: str,
    args: argparse.Namespace,
    space: SweepSpace | None = None,
    parent_run_id: str | None = None,
) -> SweepOutcome:
    """Validate, prepare, run (or resume) the sweep, then summarize and test the best trial."""
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    from sweeps.pruning import CheckpointPruner, prune_checkpoints
    from sweeps.tracking import Journal, MlflowTrialCallback, default_tracking_uri

    space = space or space_from_args(name, args)
    task, metric, mode = space.task, METRIC[space.task], MODE[space.task]
    sweep = sweep_name(name, space, args)
    storage = Path(args.storage).expanduser().resolve()
    path = storage / sweep
    res = resolve_resources(space, args)

    # ---- resume or start: the same command continues an interrupted sweep
    from ray.tune import Tuner

    restorable = Tuner.can_restore(str(path))
    if args.resume and not restorable:
        raise KDSweepError(f"--resume: nothing to resume at {path}")
    space_file = path / "kdsweep_space.json"
    if restorable and space_file.is_file():
        before = json.loads(space_file.read_text())
        now = json.loads(json.dumps(space.to_dict(), default=str))
        if before != now:
            raise KDSweepError(
                f"--resume: the search space of {path} changed since the sweep started "
                f"({space_diff(before, now)}); restore the YAML/overrides, or use --fresh "
                "(a new sweep beside this one, whose results stay)"
            )
    print(f"[kdsweep] sweep {sweep}: {'resuming' if restorable else 'starting'} ({path})")
    prep = prepare(space)  # bad data/teacher fails here, before anything is written
    path.mkdir(parents=True, exist_ok=True)
    space_file.write_text(json.dumps(space.to_dict(), default=str, indent=1))
    max_t = int(max([space.fixed.get("epochs", 0)] + list(space.dists.get("epochs", (0, [0]))[1])))
    max_t = max_t or config_class(task, space.conditions[0])().epochs

    tracking_uri = args.mlflow_uri or default_tracking_uri(PROJECT_DIR)
    artifact_root = (PROJECT_DIR / "mlartifacts").as_uri()
    journal = Journal(path, tracking_uri, f"kdsweep/{sweep}", artifact_root)
    journal.append(
        ev="parent",
        uid=f"sweep:{sweep}",
        name=sweep,
        tags={"kdsweep.sweep": sweep, "task": task, **prep.get("tags", {})},
        params={
            "space": space.source,
            **{f"fixed.{k}": v for k, v in space.fixed.items()},
            **{f"space.{k}": f"{kind}{vals}" for k, (kind, vals) in space.dists.items()},
        },
    )
    journal.sync(force=True)
    callback = MlflowTrialCallback(
        journal,
        describe=lambda c: describe(c, space.varied),
        tags_for=lambda c: {
            "condition": c.get("condition"),
            "task": task,
            "student": c.get("student", ""),
            "dataset": c.get("dataset", ""),
            **prep.get("tags", {}),
        },
        max_epochs=max_t,
    )

    cluster = init_ray(args, path / RAY_PIDS, res)
    try:
        slots = int(cluster.get("CPU", 1) // res["cpu"])
        if res["gpu"]:
            slots = min(slots, int(cluster.get("GPU", 0) / res["gpu"] + 1e-9))
        slots = max(1, slots)
        trainable = tune.with_resources(run_trial, {"cpu": res["cpu"], "gpu": res["gpu"]})
        run_config = tune.RunConfig(
            name=sweep,
            storage_path=str(storage),
            # Ray keeps every checkpoint; CheckpointPruner deletes all but each trial's best
            # and latest once no saved experiment state needs them (num_to_keep=1 does not
            # wait for that: sweeps/pruning.py).
            callbacks=[callback, CheckpointPruner(path, metric, mode)],
            checkpoint_config=tune.CheckpointConfig(
                checkpoint_score_attribute=metric, checkpoint_score_order=mode
            ),
            failure_config=tune.FailureConfig(max_failures=1),
            verbose=1 if args.verbose else 0,
        )
        if restorable:
            tuner = Tuner.restore(str(path), trainable=trainable, resume_errored=True)
        else:
            tuner = Tuner(
                trainable,
                param_space=space.param_space(),
                tune_config=tune.TuneConfig(
                    metric=metric,
                    mode=mode,
                    num_samples=space.num_samples,
                    scheduler=_scheduler(space, args, max_t, ASHAScheduler, FIFOScheduler),
                    search_alg=_searcher(space, args, metric, mode, sweep),
                    max_concurrent_trials=slots,
                    # A slot's Ray worker runs its next trial: saves a worker start + imports
                    # (5-7 s on 2 cores) per trial after the first (bench/orchestration.py).
                    reuse_actors=True,
                    trial_dirname_creator=lambda t: t.trial_id,
                    trial_name_creator=lambda t: t.trial_id,
                ),
                run_config=run_config,
            )
        n_trials = space.num_samples * (1 if space.uses_optuna else space.grid_size())
        print(
            f"[kdsweep] {n_trials} trial(s), {slots} at a time, "
            f"{res['cpu']:g} CPU / {res['gpu']:g} GPU each; "
            f"metric {metric} ({mode}); MLflow: {tracking_uri}"
        )
        t0 = time.time()
        grid = tuner.fit()
        wall = time.time() - t0
        prune_checkpoints(path, metric, mode, margin=1)  # fit saved the final state
    finally:
        import ray

        from sweeps import ray_procs

        if ray.is_initialized():
            ray.shutdown()
        ray_procs.forget(path / RAY_PIDS)

    ended = {
        ev["trial"]: ev["status"]
        for ev in journal.events()
        if ev["ev"] == "end" and ev["status"] in ("FINISHED", "FAILED")
    }
    outcome = summarize(grid, space, sweep, path, metric, mode, max_t, args, ended)
    outcome.parent_run_id = journal.state().get("parent")
    callback.close_open_runs()
    artifacts = write_tables(outcome, path)
    best_metrics = {}
    if outcome.best:
        best_metrics = {
            f"best_{metric}": outcome.best["value"],
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
        tags={"best_trial": outcome.best["trial_id"] if outcome.best else ""},
        artifacts=[str(a) for a in artifacts],
    )
    synced = journal.sync(force=True)
    print(format_table(outcome.rows, metric))
    print(outcome.best_summary())
    print(f"[kdsweep] wall time {wall:.0f} s; table: {artifacts[1]}")
    if not synced:
        pending = journal.pending()
        print(f"[kdsweep] {pending} MLflow event(s) pending: python -m sweeps.sync_mlflow {path}")
    if outcome.interrupted:
        print("[kdsweep] interrupted: run the same command again (or add --resume) to continue")
    return outcome


def _scheduler(space, args, max_t, asha_cls, fifo_cls):
    if args.no_asha:
        return fifo_cls()
    grace = args.grace_period or space.asha.get("grace_period", 1)
    rf = args.reduction_factor or space.asha.get("reduction_factor", 2)
    return asha_cls(
        time_attr="epoch",
        max_t=int(space.asha.get("max_t", max_t)),
        grace_period=min(int(grace), max_t),
        reduction_factor=float(rf),
    )


def _searcher(space, args, metric, mode, sweep):
    if not space.uses_optuna:
        return None  # exhaustive grid (BasicVariantGenerator)
    from ray.tune.search.optuna import OptunaSearch

    storage = None
    if args.optuna_storage:
        import optuna

        storage = optuna.storages.RDBStorage(args.optuna_storage)
    return OptunaSearch(metric=metric, mode=mode, seed=args.seed, study_name=sweep, storage=storage)


def summarize(grid, space, sweep, path, metric, mode, max_t, args, ended) -> SweepOutcome:
    """Trial table (condition, varied params, best metric, epochs, status) + the best trial."""
    outcome = SweepOutcome(name=sweep, path=path)
    sign = 1 if mode == "max" else -1
    best_row = None
    for r in grid:
        cfg = r.config or {}
        df = r.metrics_dataframe
        values = [] if df is None or metric not in df else [v for v in df[metric] if _finite(v)]
        best_v = (max(values) if mode == "max" else min(values)) if values else math.nan
        epochs = int((r.metrics or {}).get("epoch", 0))
        trial_id = (r.metrics or {}).get("trial_id") or Path(r.path).name
        status = "error" if r.error else ("pruned" if epochs < max_t else "finished")
        if not r.error and trial_id not in ended:
            status, outcome.interrupted = "interrupted", True
        row = {
            "trial_id": trial_id,
            "label": describe(cfg, space.varied),
            "condition": cfg.get("condition"),
            **{k: cfg.get(k) for k in space.varied if k != "condition"},
            metric: best_v,
            "epochs": epochs,
            "status": status,
            "error": str(r.error).splitlines()[0][:200] if r.error else "",
        }
        outcome.rows.append(row)
        if _finite(best_v) and (best_row is None or sign * best_v > sign * best_row[0][metric]):
            best_row = (row, r)
    if best_row:
        row, r = best_row
        outcome.best = {
            "trial_id": row["trial_id"],
            "label": row["label"],
            "metric": metric,
            "value": row[metric],
            "params": {k: r.config.get(k) for k in space.varied},
            "config": r.config,
        }
        local = _best_on_disk(Path(r.path), metric, mode)
        if local is not None:
            outcome.best["checkpoint"] = str(local)
            if not args.no_test:
                outcome.best["test"] = evaluate_checkpoint(r.config, local, "test")
        elif r.best_checkpoints or r.checkpoint:  # remote storage, or an older kdsweep's
            ckpt = r.get_best_checkpoint(metric, mode) if r.best_checkpoints else r.checkpoint
            outcome.best["checkpoint"] = ckpt.path
            if not args.no_test:
                with ckpt.as_directory() as d:
                    outcome.best["test"] = evaluate_checkpoint(r.config, Path(d), "test")
    return outcome


def _best_on_disk(trial_dir: Path, metric: str, mode: str) -> Path | None:
    """The trial's best checkpoint that loads, ranked by the metric in each checkpoint's
    header, as CheckpointPruner ranks them (Ray's own record may name one a kill cut short
    or that the pruner removed). None when the trial dir is not on this disk."""
    if not trial_dir.is_dir():
        return None
    return next(
        (c for c in ranked_checkpoints(trial_dir, metric, mode) if checkpoint_epoch(c)), None
    )


def _finite(v) -> bool:
    try:
        return math.isfinite(float(v))
    except (TypeError, ValueError):
        return False


def format_table(rows: list[dict], metric: str) -> str:
    if not rows:
        return "(no trials)"
    cols = [c for c in rows[0] if c not in ("trial_id", "error")] + (
        ["error"] if any(r["error"] for r in rows) else []
    )
    fmt = lambda v: f"{v:.4f}" if isinstance(v, float) else str(v)  # noqa: E731
    width = {c: max(len(c), *(len(fmt(r.get(c, ""))) for r in rows)) for c in cols}
    lines = [" | ".join(c.ljust(width[c]) for c in cols)]
    lines.append("-|-".join("-" * width[c] for c in cols))
    sign = -1 if metric not in MODE_OF_METRIC or MODE_OF_METRIC[metric] == "max" else 1
    key = lambda r: sign * r[metric] if _finite(r[metric]) else math.inf  # noqa: E731
    for r in sorted(rows, key=key):
        lines.append(" | ".join(fmt(r.get(c, "")).ljust(width[c]) for c in cols))
    return "\n".join(lines)


def write_tables(outcome: SweepOutcome, path: Path) -> list[Path]:
    """trials.csv + trials.md (+ best.json) beside the sweep; logged on the parent run."""
    csv_path, md_path, best_path = path / "trials.csv", path / "trials.md", path / "best.json"
    if outcome.rows:
        cols = list(dict.fromkeys(k for r in outcome.rows for k in r))
        with csv_path.open("w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=cols)
            w.writeheader()
            w.writerows(outcome.rows)
        metric = (
            outcome.best["metric"]
            if outcome.best
            else next((c for c in cols if c.startswith("dev_")), cols[0])
        )
        table = format_table(outcome.rows, metric).splitlines()
        md = [f"# {outcome.name}", "", "| " + table[0].replace(" | ", " | ") + " |"]
        md.append("|" + "|".join("---" for _ in table[0].split(" | ")) + "|")
        md += ["| " + ln + " |" for ln in table[2:]]
        if outcome.best:
            md += ["", outcome.best_summary()]
        md_path.write_text("\n".join(md) + "\n")
    else:
        csv_path.write_text("")
        md_path.write_text(f"# {outcome.name}\n\nno trials\n")
    best = {k: v for k, v in (outcome.best or {}).items() if k != "config"}
    best_path.write_text(json.dumps(best, indent=1, default=str))
    return [csv_path, md_path, best_path]


def main(name: str, doc: str | None, argv: list[str] | None = None) -> SweepOutcome | None:
    """Entry point of every sweep script: clear one-line errors (exit 2) for bad input."""
    args = build_parser(name, doc).parse_args(argv)
    try:
        return run_sweep(name, args)
    except KDSweepError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
