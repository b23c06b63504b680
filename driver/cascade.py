"""The cascade: teacher -> student 1 -> student 2, each stage taught by the last stage's best.

    outcomes = run_cascade(plan)      # plan: driver/plan.py, from sweeps/cascade.py's CLI

Each stage is a sweep of its own (the plan with that stage's student: `dataclasses.replace`),
with its own trials, ASHA and MLflow parent run; the best checkpoint of stage k becomes
`teacher_checkpoint` of stage k+1. `stage_table` compares the stages.
"""

from __future__ import annotations

import copy
import math
from pathlib import Path

from driver.plan import USER, SweepPlan, derive
from driver.run import run_sweep
from kdsweep.errors import KDSweepError


def run_cascade(plan: SweepPlan) -> list:
    """Run the plan's `stages` in order, each taught by the last one's best checkpoint."""
    space = plan.space
    if not space.stages:
        raise KDSweepError(f"search space {space.source}: cascade needs `stages: [...]`")
    base = plan.name if plan.source_of("name") == USER else f"cascade-{space.task}"
    outcomes, teacher_ckpt = [], ""
    for i, student in enumerate(space.stages, start=1):
        stage = copy.deepcopy(space)
        stage.fixed.update(student=student, teacher_checkpoint=teacher_ckpt)
        stage.dists.pop("student", None)
        name = f"{base}-stage{i}-{_stage_label(student)}"
        print(f"[kdsweep] cascade stage {i}: {student} taught by {teacher_ckpt or 'the teacher'}")
        outcome = run_sweep(derive(plan, name=name, space=stage))
        if not outcome.best or "checkpoint" not in outcome.best:
            raise KDSweepError(f"cascade stage {i} ({student}) produced no checkpoint")
        teacher_ckpt = outcome.best["checkpoint"]
        outcomes.append(outcome)
    for i, o in enumerate(outcomes, start=1):
        print(f"stage {i}: {o.best_summary()}")
    print(stage_table(space.stages, outcomes))
    return outcomes


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
