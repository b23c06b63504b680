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
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # runnable without installing

from kdsweep.errors import KDSweepError  # noqa: E402

# CLI: sweeps/cli.py; the Tuner: sweeps/tuner.py build_tuner(); the steps: sweeps/run.py
from sweeps.cli import build_parser, space_from_args  # noqa: E402
from sweeps.run import run_sweep  # noqa: E402


def _stage_label(student: str) -> str:
    """A stage's name part: the shape, or a pretrained model's directory / hub name's last part
    (a path or `org/name` must not become directories of the sweep's name)."""
    return Path(student.rstrip("/")).name or "student"


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
        return outcomes
    except KDSweepError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
