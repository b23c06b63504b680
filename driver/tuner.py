"""Building and running the Ray Tune Tuner: resources, Ray start-up, scheduler, searcher.

    tuner = build_tuner(plan, res, slots, callbacks, restore)     # plan: driver/plan.py
    results = tuner.fit()

Ray is configured for a home PC (local, dashboard off, short trial dirs) and kept behind this
module and driver/run.py; trainables only see `trainables.tune_io`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from driver.plan import SweepPlan
from trainables.registry import run_trial

# Not *.json: Tune's restore re-uploads a stale copy of every *.json in the experiment folder.
RAY_PIDS = "ray_pids.txt"


def can_restore(path: Path) -> bool:
    """Whether Tune saved an experiment at `path` that `Tuner.restore` can continue."""
    from ray.tune import Tuner

    return Tuner.can_restore(str(path))


def build_tuner(plan: SweepPlan, res: dict[str, float], slots: int, callbacks: list, restore: bool):
    """The plan's `tune.Tuner` (or the interrupted one at plan.path, restored)."""
    from ray import tune

    trainable = tune.with_resources(run_trial, {"cpu": res["cpu"], "gpu": res["gpu"]})
    if restore:  # searcher, scheduler and callbacks come back from the saved experiment
        # Tune does not save the param space: a space with tune.sample_from (the confirm
        # stage's) must be handed back, or trials not started yet keep unresolved placeholders.
        space = plan.space
        again = space.param_space() if getattr(space, "restore_with_param_space", False) else None
        return tune.Tuner.restore(
            str(plan.path), trainable=trainable, resume_errored=True, param_space=again
        )
    return tune.Tuner(
        trainable,
        param_space=plan.space.param_space(),
        tune_config=tune_config(plan, slots),
        run_config=tune.RunConfig(
            name=plan.name,
            storage_path=str(plan.storage),
            # Ray keeps every checkpoint; CheckpointPruner (in callbacks) deletes all but each
            # trial's best and latest once no saved experiment state needs them (num_to_keep=1
            # does not wait for that: driver/pruning.py).
            callbacks=callbacks,
            checkpoint_config=tune.CheckpointConfig(
                checkpoint_score_attribute=plan.metric, checkpoint_score_order=plan.mode
            ),
            failure_config=tune.FailureConfig(max_failures=plan.max_failures),
            verbose=1 if plan.verbose else 0,
        ),
    )


def tune_config(plan: SweepPlan, slots: int):
    """Metric, scheduler, searcher and the number of trials (`plan.n_trials` in all)."""
    from ray import tune

    seeds = plan.seed_groups
    return tune.TuneConfig(
        metric=plan.metric,
        mode=plan.mode,
        scheduler=make_scheduler(plan),
        search_alg=make_searcher(plan),
        num_samples=plan.tune_num_samples,
        # Optuna: a config's seeds are suggested together and paused ones still count as
        # live trials, so a limit of whole groups. A grid: no limit (trials wait PENDING,
        # the slots bound what runs): Tune creates grid trials seed-major, and a limit
        # filled with first seeds paused at a rung would starve every group of its others.
        max_concurrent_trials=seeds * -(-slots // seeds) if plan.space.uses_optuna else None,
        # A slot's Ray worker runs its next trial: saves a worker start + imports
        # (5-7 s on 2 cores) per trial after the first (bench/orchestration.py).
        reuse_actors=True,
        trial_dirname_creator=lambda t: t.trial_id,
        trial_name_creator=lambda t: t.trial_id,
    )


def make_scheduler(plan: SweepPlan):
    """ASHA on the `epoch` each trial reports (YAML `asha:` + CLI flags), or FIFO (--no-asha).

    With `--seeds N` (N > 1) the N seeds of a config are one unit: GroupASHA judges a config
    at each rung on the mean of its seeds' best-so-far metric, once every seed got there
    (driver/group_asha.py); its state lives in the sweep folder so a resume keeps decisions."""
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    s, max_t = plan.scheduler, plan.max_epochs
    if not s.asha:
        return FIFOScheduler()
    if plan.seeds > 1:
        from driver.group_asha import STATE_FILE, GroupASHA

        return GroupASHA(
            time_attr="epoch",
            max_t=s.max_t,
            grace_period=min(s.grace_period, max_t),
            reduction_factor=s.reduction_factor,
            min_epochs=s.min_epochs,
            num_seeds=plan.seeds,
            floor_key="dev_majority_rate" if plan.space.task == "text" else None,
            state_path=plan.path / STATE_FILE,
        )
    return ASHAScheduler(
        time_attr="epoch",
        max_t=s.max_t,
        grace_period=min(max(s.grace_period, s.min_epochs), max_t),
        reduction_factor=s.reduction_factor,
    )


def make_searcher(plan: SweepPlan):
    """Optuna (TPE) for sampled dimensions; None = Tune's exhaustive grid."""
    if not plan.space.uses_optuna:
        return None  # exhaustive grid (BasicVariantGenerator)
    from ray.tune.search.optuna import OptunaSearch

    storage = None
    if plan.optuna_storage:
        import optuna

        storage = optuna.storages.RDBStorage(plan.optuna_storage)
    tpe = OptunaSearch(
        space=plan.space.optuna_space(),  # None: Tune's param space is converted instead
        metric=plan.metric,
        mode=plan.mode,
        seed=plan.searcher_seed,
        study_name=plan.name,
        storage=storage,
    )
    if plan.seeds:  # each Optuna suggestion runs with every seed; Optuna is told their mean
        from driver.seed_groups import SeedGroupSearcher

        return SeedGroupSearcher(tpe, plan.seeds)
    return tpe


def resolve_resources(plan: SweepPlan) -> dict[str, Any]:
    """CPU/GPU share per trial; a GPU request without a GPU falls back to CPU (never hangs).

    gpu "auto" stays "auto" when a local GPU is visible (driver/packing.py measures and picks
    the share after preparation); on a cluster (`--address`) it is one GPU per trial."""
    cpu, gpu = plan.cpu, plan.gpu
    auto = gpu == "auto"
    if plan.address:
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


def init_ray(plan: SweepPlan, pid_file: Path, res: dict[str, float]) -> dict:
    """Start a local Ray for the plan (or connect to its cluster); the cluster's resources."""
    import ray

    from driver import ray_procs

    if plan.address:
        ray.init(address=plan.address, log_to_driver=plan.verbose, runtime_env=_runtime_env())
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
            log_to_driver=plan.verbose,
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
