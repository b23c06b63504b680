"""The end of a sweep: the trials table, the best trial (its best checkpoint evaluated once on
test), and trials.csv / trials.md / best.json beside the sweep."""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from driver.labels import describe
from driver.space import SweepSpace
from trainables.checkpointing import checkpoint_epoch, ranked_checkpoints
from trainables.metrics import METRIC, MODE
from trainables.registry import evaluate_checkpoint

MODE_OF_METRIC = {METRIC[t]: MODE[t] for t in METRIC}  # best first in tables


@dataclass
class SweepOutcome:
    """What a sweep produced: its table, the best trial and where everything is."""

    name: str
    path: Path
    rows: list[dict[str, Any]] = field(default_factory=list)
    best: dict[str, Any] | None = None
    interrupted: bool = False
    parent_run_id: str | None = None
    warnings: list[str] = field(default_factory=list)

    def best_summary(self) -> str:
        if not self.best:
            return "no trial finished"
        b = self.best
        tests = ", ".join(f"{k}={v:.4f}" for k, v in b.get("test", {}).items())
        return f"best: {b['label']}  {b['metric']}={b['value']:.4f}  {tests}  config={b['params']}"


def summarize(
    grid,
    space: SweepSpace,
    sweep: str,
    path: Path,
    max_t: int,
    ended: dict,
    test: bool = True,
    n_dev: int = 0,
    attributions: bool = True,
) -> SweepOutcome:
    """Trial table (condition, varied params, best metric, epochs, status) + the best trial.

    `grid` is Tune's ResultGrid; `ended` maps the trial ids the journal saw end to their status
    (a trial not in it was interrupted); `test`: evaluate the best checkpoint on test;
    `attributions`: IG similarity of the best checkpoint (off when a confirm stage computes
    it); `n_dev`: dev examples (text), for the "dev set too small for the gap claimed" warning."""
    from driver.group_asha import STATE_FILE, saved_scheduler

    metric, mode = METRIC[space.task], MODE[space.task]
    outcome = SweepOutcome(name=sweep, path=path)
    groups = saved_scheduler(path / STATE_FILE)  # seed groups (--seeds N): why each ended
    sign = 1 if mode == "max" else -1
    best_row = None
    for r in grid:
        row = _row(r, space, max_t, groups, ended)
        if row["status"] == "interrupted":
            outcome.interrupted = True
        outcome.rows.append(row)
        best_v = row[metric]
        if _finite(best_v) and (best_row is None or sign * best_v > sign * best_row[0][metric]):
            best_row = (row, r)
    outcome.warnings = _tie_warnings(outcome.rows, space, metric)
    if groups is None and (w := single_seed_note(outcome.rows)):
        outcome.warnings.append(w)
    if n_dev and mode == "max" and (w := _small_dev_warning(outcome.rows, metric, n_dev)):
        outcome.warnings.append(w)
    if best_row:
        row, r = best_row
        outcome.best = {
            "trial_id": row["trial_id"],
            "label": row["label"],
            "metric": metric,
            "value": row[metric],
            "params": {k: r.config.get(k) for k in space.varied},
            "config": r.config,
            # its last report's analysis (attribution similarity; *_origin in a cascade stage)
            "analysis": {k: v for k, v in (r.metrics or {}).items()
                         if k.startswith("attr_") or k == "teacher_dev_accuracy"},
        }  # fmt: skip
        outcome.best.update(best_checkpoint(r, metric, mode, test))
        if test and attributions:  # the search skips them (they decide nothing there); the
            _add_attributions(outcome.best)  # answer has them (the confirm stage's, if it follows)
    return outcome


def _row(r, space: SweepSpace, max_t: int, groups, ended: dict) -> dict[str, Any]:
    """One trial's table row: its varied params, best metric, epochs and how it ended."""
    metric, mode = METRIC[space.task], MODE[space.task]
    cfg = r.config or {}
    df = r.metrics_dataframe
    values = [] if df is None or metric not in df else [v for v in df[metric] if _finite(v)]
    best_v = (max(values) if mode == "max" else min(values)) if values else math.nan
    epochs = int((r.metrics or {}).get("epoch", 0))
    trial_id = (r.metrics or {}).get("trial_id") or Path(r.path).name
    pruned = groups.is_stopped(trial_id) if groups else epochs < max_t
    status = "error" if r.error else ("pruned" if pruned else "finished")
    if not r.error and trial_id not in ended:
        status = "interrupted"
    return {
        "trial_id": trial_id,
        "label": describe(cfg, space.varied),
        "condition": cfg.get("condition"),
        **{k: cfg.get(k) for k in space.varied if k != "condition"},
        metric: best_v,
        "epochs": epochs,
        "status": status,
        "error": str(r.error).splitlines()[0][:200] if r.error else "",
        **({"why": groups.reason_for(trial_id)} if groups else {}),
    }


def _add_attributions(best: dict[str, Any]) -> None:
    """The best trial's attr_* from its best checkpoint, when its trial did not report them."""
    text = best["config"].get("task", "text") == "text"
    if text and "attr_cosine" not in best["analysis"] and "checkpoint" in best:
        print("[kdsweep] best trial: its attribution similarity to the teacher (IG)")
        best["analysis"].update(checkpoint_attributions(best["config"], best["checkpoint"]))


def checkpoint_attributions(config: dict[str, Any], ckpt: str | Path) -> dict[str, float]:
    """The attr_* metrics (IG similarity to the teacher on the dev probe) of a text trial's
    checkpoint; {} for another task or a checkpoint not on this disk."""
    if config.get("task", "text") != "text" or not Path(ckpt).is_dir():
        return {}
    from trainables.registry import config_class, config_for
    from trainables.text.loop import attribute_text_checkpoint

    names = config_class("text", config.get("condition", "independent")).field_names()
    cfg = config_for({k: v for k, v in config.items() if k in names | {"task", "condition"}})
    return attribute_text_checkpoint(cfg, Path(ckpt))  # type: ignore[arg-type]


def single_seed_note(rows: list[dict]) -> str | None:
    """A search without seed groups prunes each trial on its own single-seed dev values, in
    the order trials arrive: say so where it stopped anything (its ranking is a lead)."""
    pruned = sum(r["status"] == "pruned" for r in rows)
    if not pruned:
        return None
    return (
        f"the search stopped {pruned} trial(s) early on one seed each, in the order trials "
        "arrived (another seed or order can stop another config): its ranking is a lead; the "
        "answer is the confirm stage (--confirm K: fresh seeds, full length, no early stopping)"
        " or a search with --seeds N (pruning by seed group)"
    )


def _small_dev_warning(rows: list[dict], metric: str, n_dev: int) -> str | None:
    """The best trial against the best independent trial (or, without one, the runner-up
    config's best): is the dev set large enough to detect that gap at 80% power?"""
    from kdsweep.analysis.sanity import small_dev_warning

    ok = sorted((r for r in rows if r["status"] != "error" and _finite(r[metric])),
                key=lambda r: -r[metric])  # fmt: skip
    if len(ok) < 2:
        return None
    best = ok[0]
    base = next((r for r in ok if r["condition"] == "independent"), None)
    if base is None or base is best:
        base = next((r for r in ok[1:] if r["label"] != best["label"]), None)
    return small_dev_warning(best[metric], base[metric], n_dev) if base else None


def _tie_warnings(rows: list[dict], space: SweepSpace, metric: str) -> list[str]:
    """'all configs tie' when no config's seeds can be told apart from another's."""
    from kdsweep.analysis.sanity import tie_warning

    by_config: dict[str, list[float]] = {}
    for row in rows:
        if row["status"] != "error":
            varied = [k for k in space.varied if k != "seed"]
            key = describe(
                {**{k: row.get(k) for k in varied}, "condition": row["condition"]}, varied
            )
            by_config.setdefault(key, []).append(row[metric])
    w = tie_warning(by_config) if len(by_config) > 1 else None
    return [w] if w else []


def best_checkpoint(result, metric: str, mode: str, test: bool) -> dict[str, Any]:
    """{"checkpoint": path, "test": metrics} of a trial's best checkpoint (test once, if asked).

    Prefers the trial's checkpoints on this disk, ranked as CheckpointPruner ranks them; Ray's
    own record only when the trial dir is elsewhere (remote storage) or from an older kdsweep."""
    out: dict[str, Any] = {}
    local = best_on_disk(Path(result.path), metric, mode)
    if local is not None:
        out["checkpoint"] = str(local)
        if test:
            out["test"] = evaluate_checkpoint(result.config, local, "test")
    elif result.best_checkpoints or result.checkpoint:
        ckpt = (
            result.get_best_checkpoint(metric, mode)
            if result.best_checkpoints
            else result.checkpoint
        )
        out["checkpoint"] = ckpt.path
        if test:
            with ckpt.as_directory() as d:
                out["test"] = evaluate_checkpoint(result.config, Path(d), "test")
    return out


def best_on_disk(trial_dir: Path, metric: str, mode: str) -> Path | None:
    """The trial's best checkpoint that loads, ranked by the metric in each checkpoint's
    header, as CheckpointPruner ranks them (Ray's own record may name one a kill cut short
    or that the pruner removed). None when the trial dir is not on this disk."""
    if not trial_dir.is_dir():
        return None
    return next(
        (c for c in ranked_checkpoints(trial_dir, metric, mode) if checkpoint_epoch(c)), None
    )


_best_on_disk = best_on_disk  # its earlier, private name


def _finite(v) -> bool:
    try:
        return math.isfinite(float(v))
    except (TypeError, ValueError):
        return False


def format_table(rows: list[dict], metric: str) -> str:
    """The trials as an aligned text table, best first."""
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
