"""Building and running the Ray Tune Tuner: resources, Ray start-up, scheduler, searcher.

    tuner = build_tuner(space, args, sweep, storage, res, slots, max_t, callbacks, restore)
    results = tuner.fit()

Ray is configured for a home PC (local, dashboard off, short trial dirs) and kept behind this
module and driver/run.py; trainables only see `trainables.tune_io`.
"""

from __future__ import annotations

import argparse
import math
import os
from pathlib import Path
from typing import Any

from driver.space import SweepSpace
from kdsweep.errors import KDSweepError
from trainables.metrics import METRIC, MODE
from trainables.registry import config_class, run_trial

# Not *.json: Tune's restore re-uploads a stale copy of every *.json in the experiment folder.
RAY_PIDS = "ray_pids.txt"


def build_tuner(
    space: SweepSpace,
    args: argparse.Namespace,
    sweep: str,
    storage: Path,
    res: dict[str, float],
    slots: int,
    max_t: int,
    callbacks: list,
    restore: bool,
):
    """The sweep's `tune.Tuner` (or the interrupted one at storage/sweep, restored)."""
    from ray import tune

    metric, mode = METRIC[space.task], MODE[space.task]
    seeds = max(1, getattr(args, "seeds", 0) or 0)
    trainable = tune.with_resources(run_trial, {"cpu": res["cpu"], "gpu": res["gpu"]})
    if restore:  # searcher, scheduler and callbacks come back from the saved experiment
        # Tune does not save the param space: a space with tune.sample_from (the confirm
        # stage's) must be handed back, or trials not started yet keep unresolved placeholders.
        again = space.param_space() if getattr(space, "restore_with_param_space", False) else None
        return tune.Tuner.restore(
            str(storage / sweep), trainable=trainable, resume_errored=True, param_space=again
        )
    return tune.Tuner(
        trainable,
        param_space=space.param_space(),
        tune_config=tune.TuneConfig(
            metric=metric,
            mode=mode,
            scheduler=make_scheduler(space, args, max_t, storage / sweep),
            search_alg=make_searcher(space, args, metric, mode, sweep),
            num_samples=space.num_samples * (seeds if space.uses_optuna else 1),
            # Optuna: a config's seeds are suggested together and paused ones still count as
            # live trials, so a limit of whole groups. A grid: no limit (trials wait PENDING,
            # the slots bound what runs): Tune creates grid trials seed-major, and a limit
            # filled with first seeds paused at a rung would starve every group of its others.
            max_concurrent_trials=seeds * -(-slots // seeds) if space.uses_optuna else None,
            # A slot's Ray worker runs its next trial: saves a worker start + imports
            # (5-7 s on 2 cores) per trial after the first (bench/orchestration.py).
            reuse_actors=True,
            trial_dirname_creator=lambda t: t.trial_id,
            trial_name_creator=lambda t: t.trial_id,
        ),
        run_config=tune.RunConfig(
            name=sweep,
            storage_path=str(storage),
            # Ray keeps every checkpoint; CheckpointPruner (in callbacks) deletes all but each
            # trial's best and latest once no saved experiment state needs them (num_to_keep=1
            # does not wait for that: driver/pruning.py).
            callbacks=callbacks,
            checkpoint_config=tune.CheckpointConfig(
                checkpoint_score_attribute=metric, checkpoint_score_order=mode
            ),
            failure_config=tune.FailureConfig(max_failures=max_failures(space)),
            verbose=1 if args.verbose else 0,
        ),
    )


def max_failures(space: SweepSpace) -> int:
    """Tune's retries per trial: one for any failure, plus one per possible out-of-memory
    halving of the largest batch size (trainables/oom_guard.py: 32 -> 16 -> ... -> 1)."""
    sizes = [space.fixed.get("batch_size", 0), *space.dists.get("batch_size", ("", []))[1]]
    biggest = max([int(b) for b in sizes if isinstance(b, int | float)] or [0])
    if biggest < 1:
        biggest = config_class(space.task, space.conditions[0])().batch_size
    return 1 + math.ceil(math.log2(max(1, biggest)))


def make_scheduler(space: SweepSpace, args: argparse.Namespace, max_t: int, path: Path):
    """ASHA on the `epoch` each trial reports (YAML `asha:` + CLI flags), or FIFO (--no-asha).

    With `--seeds N` (N > 1) the N seeds of a config are one unit: GroupASHA judges a config
    at each rung on the mean of its seeds' best-so-far metric, once every seed got there
    (driver/group_asha.py); its state lives in the sweep folder so a resume keeps decisions."""
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    if args.no_asha:
        return FIFOScheduler()
    grace = args.grace_period or space.asha.get("grace_period", 1)
    rf = args.reduction_factor or space.asha.get("reduction_factor", 2)
    min_epochs = int(space.asha.get("min_epochs", 0))
    seeds = getattr(args, "seeds", 0) or 0
    if seeds > 1:
        from driver.group_asha import STATE_FILE, GroupASHA

        return GroupASHA(
            time_attr="epoch",
            max_t=int(space.asha.get("max_t", max_t)),
            grace_period=min(int(grace), max_t),
            reduction_factor=float(rf),
            min_epochs=min_epochs,
            num_seeds=seeds,
            floor_key="dev_majority_rate" if space.task == "text" else None,
            state_path=path / STATE_FILE,
        )
    return ASHAScheduler(
        time_attr="epoch",
        max_t=int(space.asha.get("max_t", max_t)),
        grace_period=min(max(int(grace), min_epochs), max_t),
        reduction_factor=float(rf),
    )


def make_searcher(space: SweepSpace, args: argparse.Namespace, metric: str, mode: str, sweep: str):
    """Optuna (TPE) for sampled dimensions; None = Tune's exhaustive grid."""
    if not space.uses_optuna:
        return None  # exhaustive grid (BasicVariantGenerator)
    from ray.tune.search.optuna import OptunaSearch

    storage = None
    if args.optuna_storage:
        import optuna

        storage = optuna.storages.RDBStorage(args.optuna_storage)
    tpe = OptunaSearch(metric=metric, mode=mode, seed=args.seed, study_name=sweep, storage=storage)
    seeds = getattr(args, "seeds", 0) or 0
    if seeds:  # each Optuna suggestion runs with every seed; Optuna is told their mean
        from driver.seed_groups import SeedGroupSearcher

        return SeedGroupSearcher(tpe, seeds)
    return tpe


def resolve_resources(space: SweepSpace, args: argparse.Namespace) -> dict[str, Any]:
    """CPU/GPU share per trial; a GPU request without a GPU falls back to CPU (never hangs).

    gpu "auto" stays "auto" when a local GPU is visible (driver/packing.py measures and picks
    the share after preparation); on a cluster (`--address`) it is one GPU per trial."""
    cpu = args.cpus_per_trial or space.resources.get("cpu", 1.0)
    gpu = args.gpus_per_trial if args.gpus_per_trial is not None else space.resources.get("gpu", 0)
    auto = gpu == "auto"
    if not auto and (
        not isinstance(gpu, int | float) or gpu < 0 or gpu > 1 and not float(gpu).is_integer()
    ):
        raise KDSweepError(f"resources: gpu must be auto, a share <= 1 or whole GPUs (got {gpu})")
    if cpu <= 0:
        raise KDSweepError(f"resources: cpu must be > 0 (got {cpu})")
    if args.address or os.environ.get("RAY_ADDRESS"):
        if auto:  # the driver cannot measure the cluster's cards
            print("[kdsweep] --gpus-per-trial auto on a cluster: 1 GPU per trial (give a share)")
        return {"cpu": float(cpu), "gpu": 1.0 if auto else float(gpu)}
    if auto or gpu > 0:
        import torch

        if torch.cuda.device_count() == 0:
            print(f"[kdsweep] no GPU found: running trials on CPU (asked for gpu={gpu} per trial)")
            return {"cpu": float(cpu), "gpu": 0.0}
    return {"cpu": float(cpu), "gpu": "auto" if auto else float(gpu)}


def concurrent_slots(cluster: dict[str, Any], res: dict[str, float]) -> int:
    """How many trials of `res` the cluster runs at once (at least one)."""
    slots = int(cluster.get("CPU", 1) // res["cpu"])
    if res["gpu"]:
        slots = min(slots, int(cluster.get("GPU", 0) / res["gpu"] + 1e-9))
    return max(1, slots)


def init_ray(args: argparse.Namespace, pid_file: Path, res: dict[str, float]) -> dict:
    import ray

    from driver import ray_procs

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
    # A reused actor waits this long for its finished trial's thread (Ray's default 2 s: on
    # busy shared cores the last epoch's clean-up overran it and the next trial errored with
    # "Could not re-use actor ... reset_config()"; seen in an LM smoke sweep at load 11).
    env.setdefault("TUNE_FUNCTION_THREAD_TIMEOUT_S", "30")
    return {"env_vars": env}


def shutdown_ray(pid_file: Path) -> None:
    """Stop the local Ray (or disconnect from the cluster) and forget its process ids."""
    import ray

    from driver import ray_procs

    if ray.is_initialized():
        ray.shutdown()
    ray_procs.forget(pid_file)
