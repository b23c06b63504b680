"""The command line every sweeps/<name>.py shares: flags, overrides, the smoke preset, main().

    main("temperature", __doc__)     # parse, build the space, run_sweep (driver/run.py)

Bad input raises KDSweepError anywhere before the first trial; main() turns it into one line
`error: ...` and exit status 2.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from driver.confirm import check_confirm_args
from driver.run import PROJECT_DIR, run_sweep
from driver.space import SPACES_DIR, SweepSpace, parse_overrides, parse_space, read_space
from driver.summary import SweepOutcome
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
# Smoke keeps these asr sizes fixed even where the YAML varies them (like `student` for text).
ASR_SIZES = ("n_utterances", "layers", "hidden", "teacher_layers", "teacher_hidden")
LM_SIZES = ("block_size", "data_subset")


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
        "dataset=data/legal.csv. Results: MLflow UI (make mlflow-ui).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("overrides", nargs="*", help="config overrides key=value")
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
    p.add_argument("--no-test", action="store_true", help="skip the best trial's test eval")
    p.add_argument("--verbose", action="store_true", help="show Ray's and trials' logs")
    p.add_argument("--quiet", action="store_true", help="no live status or progress bars")
    return p


def space_from_args(name: str, args: argparse.Namespace) -> SweepSpace:
    """YAML (read once) + smoke preset + CLI flags/overrides -> a validated space."""
    ref = args.space
    if args.task == "asr" and ref == name and (SPACES_DIR / f"asr_{name}.yaml").is_file():
        ref = f"asr_{name}"  # `--task asr` picks the speech version of the sweep
    cli = parse_overrides(args.overrides)
    cache_dir = str(cache_root(cli.get("cache_dir", "")))
    raw, where = read_space(ref)
    task = args.task or (raw.get("task", "text") if isinstance(raw, dict) else "text")
    overrides: dict[str, Any] = {"task": args.task} if args.task else {}
    for flag in ("dataset", "teacher", "student"):
        if getattr(args, flag):
            key = "corpus" if task == "asr" and flag == "dataset" else flag
            overrides[key] = getattr(args, flag)
    if args.max_epochs:
        overrides["epochs"] = args.max_epochs
    overrides.update(cli)
    overrides["cache_dir"] = cache_dir
    if args.smoke:
        # The real sweep's space is validated too: a smoke run must not hide a bad YAML value
        # that its preset happens to replace (e.g. `lr: abc`).
        parse_space(raw, where, overrides, seeds=args.seeds)
        overrides = {**SMOKE.get(task, {}), **overrides}
    space = parse_space(raw, where, overrides, seeds=args.seeds)
    if args.smoke:
        # Smoke fixes what would make it slow even if the YAML varies it.
        sizes = ("epochs", "student", "per_class", "max_len", "teacher_epochs", *ASR_SIZES)
        for k in (*sizes, *LM_SIZES):
            if k in space.dists and k in SMOKE.get(task, {}) and k not in cli:
                del space.dists[k]
                space.fixed[k] = SMOKE[task][k]
    if args.num_samples:
        space.num_samples = args.num_samples
    elif args.smoke:
        space.num_samples = min(space.num_samples, 2 if space.uses_optuna else 1)
    check_confirm_args(args, space)
    return space


def main(name: str, doc: str | None, argv: list[str] | None = None) -> SweepOutcome | None:
    """Entry point of every sweep script: clear one-line errors (exit 2) for bad input."""
    args = build_parser(name, doc).parse_args(argv)
    if args.quiet:  # preparation progress bars (kdsweep.progress) read it too
        os.environ["KDSWEEP_QUIET"] = "1"
    try:
        return run_sweep(name, args, space_from_args(name, args))
    except KDSweepError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
