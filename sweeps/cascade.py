"""Cascade sweep: teacher -> student 1 -> student 2, each stage taught by the last stage's best.

    python sweeps/cascade.py                     # MiniLM -> L4-H256 -> L2-H128 (YAML `stages`)
    python sweeps/cascade.py --smoke

A stage may be a pretrained model (`stages: [<model dir | hub name>, L4-H312, L2-H128]`): it is
fine-tuned with soft KD on its own tokenizer's tokens, and the shape stages after it are built on
its vocabulary and read its tokens (soft KD across tokenizers needs only per-example logits).

Each stage is a sweep of its own (same YAML params, its own trials, ASHA, MLflow parent run);
the best checkpoint of stage k becomes `teacher_checkpoint` of stage k+1, and its cached logits
are stored in the teacher store like any teacher's.
"""

import argparse
import copy
import math
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # runnable without installing

# CLI: driver/cli.py; the Tuner: driver/tuner.py build_tuner(); the steps: driver/run.py
from driver.cli import build_parser, space_from_args  # noqa: E402
from driver.run import run_sweep  # noqa: E402
from kdsweep.errors import KDSweepError  # noqa: E402


def _stage_label(student: str) -> str:
    """A stage's name part: the shape, or a pretrained model's directory / hub name's last part
    (a path or `org/name` must not become directories of the sweep's name)."""
    return Path(student.rstrip("/")).name or "student"


def _fmt(v: object, digits: int = 3) -> str:
    return f"{v:.{digits}f}" if isinstance(v, (int, float)) and math.isfinite(v) else "-"


def _best_config_values(outcome) -> list[float]:
    """The tuning metric of every seed of the stage's best config (its seed group)."""
    best = outcome.best
    same = {k: v for k, v in best["params"].items() if k != "seed"}
    return [
        r[best["metric"]]
        for r in outcome.rows
        if r["status"] != "error" and all(r.get(k) == v for k, v in same.items())
    ]


def stage_table(stages: list[str], outcomes: list) -> str:
    """Per stage: its best config's dev metric (mean ± 95% CI over its seeds), the best
    trial's test metric, and attribution similarity (IG cosine) to the stage's own teacher and
    to the cascade's original teacher."""
    from driver.reporting.stats import mean_ci

    first = outcomes[0].best or {}
    metric = first.get("metric", "dev_accuracy")
    teacher_acc = first.get("analysis", {}).get("teacher_dev_accuracy", math.nan)
    lines = [
        f"| stage | student | taught by | {metric} (mean ± 95% CI, n) | test | "
        "attr cos to own teacher | attr cos to original teacher |",
        "|---|---|---|---|---|---|---|",
        f"| 0 | original teacher | - | {_fmt(teacher_acc)} (its fine-tune) | - | - | - |",
    ]
    for i, (student, o) in enumerate(zip(stages, outcomes), start=1):
        b = o.best or {}
        vals = _best_config_values(o) if b else []
        m, low, high = mean_ci(vals)
        ci = f" ± {_fmt((high - low) / 2)}" if math.isfinite(low) else ""
        a = b.get("analysis", {})
        own = a.get("attr_cosine", math.nan)
        origin = a.get("attr_cosine_origin", own if i == 1 else math.nan)
        test = next(iter(b.get("test", {}).values()), math.nan)
        lines.append(
            f"| {i} | {student} | {'teacher' if i == 1 else f'stage {i - 1}'} | "
            f"{_fmt(m)}{ci} (n={len(vals)}) | {_fmt(test)} | {_fmt(own)} | {_fmt(origin)} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> list:
    args = build_parser("cascade", __doc__).parse_args(argv)
    if args.quiet:
        os.environ["KDSWEEP_QUIET"] = "1"
    try:
        space = space_from_args("cascade", args)
        if not space.stages:
            raise KDSweepError(f"search space {space.source}: cascade needs `stages: [...]`")
        outcomes, teacher_ckpt = [], ""
        for i, student in enumerate(space.stages, start=1):
            stage = copy.deepcopy(space)
            stage.fixed.update(student=student, teacher_checkpoint=teacher_ckpt)
            stage.dists.pop("student", None)
            name = f"{args.name or 'cascade-' + stage.task}-stage{i}-{_stage_label(student)}"
            print(
                f"[kdsweep] cascade stage {i}: {student} taught by {teacher_ckpt or 'the teacher'}"
            )
            stage_args = argparse.Namespace(**{**vars(args), "name": name})  # args stay as given
            outcome = run_sweep("cascade", stage_args, stage)
            if not outcome.best or "checkpoint" not in outcome.best:
                raise KDSweepError(f"cascade stage {i} ({student}) produced no checkpoint")
            teacher_ckpt = outcome.best["checkpoint"]
            outcomes.append(outcome)
        for i, o in enumerate(outcomes, start=1):
            print(f"stage {i}: {o.best_summary()}")
        print(stage_table(space.stages, outcomes))
        return outcomes
    except KDSweepError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
