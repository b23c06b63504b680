"""The command line every sweeps/<name>.py shares: flags, overrides, the smoke preset, main().

    main("temperature", __doc__)     # parse, build_plan (driver/plan.py), run_sweep (driver/run.py)

Bad input raises KDSweepError anywhere before the first trial; main() turns it into one line
`error: ...` and exit status 2.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from driver.confirm import check_confirm_args
from driver.docs import HelpFields
from driver.plan import (
    PROJECT_DIR,
    SMOKE_PRESET,
    USER,
    Confirm,
    SweepPlan,
    compose_space,
    max_epochs,
    max_failures,
    scheduler_settings,
)
from driver.run import run_sweep
from driver.space import SPACES_DIR, SweepSpace, parse_overrides, read_space
from kdsweep.errors import KDSweepError
from kdsweep.paths import cache_root

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
    # lm: the default GGUF teacher is kept (the top-k cache of ~100 blocks costs a few seconds)
    "lm": {
        "max_docs": 400,
        "block_size": 32,
        "data_subset": 64,
        "eval_subset": 8,
        "topk": 8,
        "student": "L2-H64",
        "epochs": 2,
        "batch_size": 16,
        "lr": 3e-3,
        "continuation_tokens": 8,
    },
}
# Smoke fixes what would make it slow even where the YAML varies it (unless the user gave it).
SMOKE_FIXED = ("epochs", "student", "per_class", "max_len", "teacher_epochs", "n_utterances")
SMOKE_FIXED += ("layers", "hidden", "teacher_layers", "teacher_hidden")  # asr
SMOKE_FIXED += ("block_size", "data_subset")  # lm


def gpu_share(text: str) -> str | float:
    """--gpus-per-trial: "auto" or a number (its range, a share in (0, 1] or whole GPUs, is
    checked with the resources, as one `error:` line)."""
    if text.strip().lower() == "auto":
        return "auto"
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r}: give auto, a share such as 0.25, or whole GPUs"
        ) from None


def build_parser(name: str, doc: str | None) -> argparse.ArgumentParser:
    """The CLI every sweep script shares."""
    p = argparse.ArgumentParser(
        prog=f"sweeps/{name}.py",
        description=(doc or "").strip().splitlines()[0] if doc else None,
        epilog="Overrides: any config field as key=value, e.g. alpha=0.9 student=L4-H256 "
        "dataset=data/legal.csv (--help-fields lists them). Results: MLflow UI (make mlflow-ui).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("overrides", nargs="*", help="config overrides key=value")
    p.add_argument(
        "--help-fields", action=HelpFields, space=name, help="list the config fields and exit"
    )
    p.add_argument("--space", default=name, help="search_spaces/<name>.yaml or a YAML path")
    p.add_argument("--task", choices=["text", "asr", "lm"], help="override the YAML's task")
    p.add_argument("--dataset", help="fortunes | rotten_tomatoes | hf:<name> | file path")
    p.add_argument("--teacher", help="teacher backbone: minilm | model dir | hub name")
    p.add_argument("--student", help="student size, e.g. L2-H128, L4-H312")
    p.add_argument("--num-samples", type=int, help="grid repeats, or Optuna trials")
    p.add_argument("--seeds", type=int, default=0, help="repeat every config with N seeds")
    p.add_argument(
        "--confirm",
        type=int,
        metavar="K",
        help="after the search: rerun the top K configs + the independent baseline on fresh "
        "seeds, full length, tested once (mean +- CI, paired tests, verdicts)",
    )
    p.add_argument("--confirm-seeds", type=int, default=3, help="fresh seeds per confirm config")
    p.add_argument("--max-epochs", type=int, help="epochs per trial (ASHA's max_t)")
    p.add_argument("--grace-period", type=int, help="ASHA: epochs before a trial can be cut")
    p.add_argument("--reduction-factor", type=float, help="ASHA: keep 1/rf at each rung")
    p.add_argument("--no-asha", action="store_true", help="run every trial to max epochs")
    p.add_argument("--cpus-per-trial", type=float, help="CPUs per trial (default: YAML or 1)")
    p.add_argument(
        "--gpus-per-trial",
        type=gpu_share,
        help="GPU share per trial, e.g. 0.25, or auto (as many trials as fit the card's memory)",
    )
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
    p.add_argument(
        "--dry-run", action="store_true", help="validate, print the plan and trial count, stop"
    )
    p.add_argument("--no-test", action="store_true", help="skip the best trial's test eval")
    p.add_argument("--verbose", action="store_true", help="show Ray's and trials' logs")
    p.add_argument("--quiet", action="store_true", help="no live status or progress bars")
    return p


def user_values(args: argparse.Namespace, task: str) -> dict[str, Any]:
    """The config values the user gave: --dataset/--teacher/--student/--max-epochs + key=value."""
    given: dict[str, Any] = {"task": args.task} if args.task else {}
    flags = {"dataset": args.dataset, "teacher": args.teacher, "student": args.student}
    for flag, value in flags.items():
        if value:
            given["corpus" if task == "asr" and flag == "dataset" else flag] = value
    if args.max_epochs:
        given["epochs"] = args.max_epochs
    return {**given, **parse_overrides(args.overrides)}


def space_from_args(name: str, args: argparse.Namespace) -> tuple[SweepSpace, dict[str, str]]:
    """YAML (read once) + smoke preset + CLI flags/overrides -> (validated space, sources)."""
    ref = args.space
    if args.task == "asr" and ref == name and (SPACES_DIR / f"asr_{name}.yaml").is_file():
        ref = f"asr_{name}"  # `--task asr` picks the speech version of the sweep
    raw, where = read_space(ref)
    task = args.task or (raw.get("task", "text") if isinstance(raw, dict) else "text")
    user = user_values(args, task)
    user["cache_dir"] = str(cache_root(user.get("cache_dir", "")))
    smoke = SMOKE.get(task, {}) if args.smoke else None
    space, sources = compose_space(raw, where, user, smoke, SMOKE_FIXED, seeds=args.seeds)
    if args.seeds:
        sources["seed"] = USER
    if args.num_samples:
        space.num_samples = args.num_samples
        sources["num_samples"] = USER
    elif args.smoke:
        space.num_samples = min(space.num_samples, 2 if space.uses_optuna else 1)
        sources["num_samples"] = SMOKE_PRESET
    return space, sources


def build_plan(name: str, args: argparse.Namespace) -> SweepPlan:
    """The one `SweepPlan` of this command line: everything below reads the plan, not `args`."""
    from driver.tracking import default_tracking_uri  # imports Ray: not for --help

    space, sources = space_from_args(name, args)
    epochs = max_epochs(space)
    plan = SweepPlan(
        script=name,
        name=sweep_name(name, space, args),
        space=space,
        storage=Path(args.storage).expanduser().resolve(),
        tracking_uri=args.mlflow_uri or default_tracking_uri(PROJECT_DIR),
        seeds=args.seeds,
        max_epochs=epochs,
        max_failures=max_failures(space),
        scheduler=scheduler_settings(
            space, epochs, not args.no_asha, args.grace_period, args.reduction_factor
        ),
        cpu=float(args.cpus_per_trial or space.resources.get("cpu", 1.0)),
        gpu=_gpu(args.gpus_per_trial, space),
        confirm=Confirm(args.confirm, args.confirm_seeds),
        optuna_storage=args.optuna_storage,
        address=args.address or os.environ.get("RAY_ADDRESS") or None,
        searcher_seed=args.seed,
        smoke=args.smoke,
        test=not args.no_test,
        quiet=args.quiet,
        verbose=args.verbose,
        resume=args.resume,
        fresh=args.fresh,
        sources={**sources, **({"name": USER} if args.name else {}), **_gpu_source(args, space)},
    )
    check_confirm_args(plan.confirm, plan.space)
    return plan


def _gpu_source(args: argparse.Namespace, space: SweepSpace) -> dict[str, str]:
    """Where the GPU share came from (none: packing.py's default for a visible GPU decides)."""
    if args.gpus_per_trial is not None:
        return {"gpu": USER}
    return {"gpu": f"search space {space.source}"} if "gpu" in space.resources else {}


def _gpu(given: str | float | None, space: SweepSpace) -> str | float:
    gpu = given if given is not None else space.resources.get("gpu", 0.0)
    return gpu if gpu == "auto" or not isinstance(gpu, int | float) else float(gpu)


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


def parse(name: str, doc: str | None, argv: list[str] | None) -> argparse.Namespace:
    """The parsed command line (`--quiet` also reaches the preparation's progress bars)."""
    args = build_parser(name, doc).parse_args(argv)
    if args.quiet:  # preparation progress bars (kdsweep.progress) read it too
        os.environ["KDSWEEP_QUIET"] = "1"
    return args


def main(
    name: str,
    doc: str | None,
    argv: list[str] | None = None,
    run: Callable[[SweepPlan], Any] = run_sweep,
) -> Any:
    """Entry point of every sweep script: parse, build the plan, `run` it (a sweep, or the
    cascade's stages); clear one-line errors (exit 2) for bad input."""
    args = parse(name, doc, argv)
    try:
        plan = build_plan(name, args)
        if args.dry_run:  # validated and counted; nothing prepared, written or started
            print(plan.describe())
            return plan
        return run(plan)
    except KDSweepError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
