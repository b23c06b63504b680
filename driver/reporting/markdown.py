"""report.md and report.csv of a sweep."""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any

from driver.reporting.budget import sweep_budget_lines, teacher_cost_note
from driver.reporting.load import BASELINE, EXTRA, INCL_TEACHER, Sweep, as_float, primary
from driver.reporting.stats import (
    BOOTSTRAP_MIN_PAIRS,
    BOOTSTRAP_RESAMPLES,
    BOOTSTRAP_SEED,
    VERDICT_MIN_PAIRS,
)

# Speech: the beam + LM WER/CER each trial reports at its last epoch, next to the greedy one.
BEAM = {"dev_wer": ("dev_wer_beam", "WER beam"), "dev_cer": ("dev_cer_beam", "CER beam")}
TEACHER_KINDS = ("teacher", "twin")  # the stored models a sweep's conditions learn from
GAIN_PLOT = "gain_vs_baseline.png"  # shown under the comparisons, not with the other plots

METHODS = (
    "mean diff and 95% CI: paired t-test of the per-seed differences (scipy.stats.ttest_rel); "
    f"boot CI: percentile bootstrap of the mean difference ({BOOTSTRAP_RESAMPLES} paired "
    f"resamples, seed {BOOTSTRAP_SEED}), shown only from {BOOTSTRAP_MIN_PAIRS} pairs on: with "
    "fewer it is far too narrow (a nominal 95% interval covers ~74% of the time at 3 pairs), "
    "so there the t-interval is the interval; d_z: Cohen's d_z, mean difference / SD of the "
    "differences; Holm p: the t-test p adjusted"
    f" (Holm step-down) over the configs compared with the same `{BASELINE}` on the same "
    "metric; Wilcoxon p: signed-rank test of the same differences (zeros dropped, exact p), a "
    "check that does not assume normal differences; with fewer than 6 nonzero differences it "
    "cannot go below 0.0625. Verdict: significant when the Holm p < 0.05, otherwise not "
    f"distinguishable; no verdict from fewer than {VERDICT_MIN_PAIRS} paired seeds."
)


def _num(v: Any, fmt: str) -> str:
    return format(v, fmt) if isinstance(v, float) and not math.isnan(v) else "–"


def _cell(stat: tuple[float, float, float], scale: float = 1.0, digits: int = 3) -> str:
    m, lo, hi = (x / scale for x in stat)
    if not math.isfinite(m):
        return "–"
    s = f"{m:.{digits}f}"
    return s + (f" ± {(hi - lo) / 2:.{digits}f}" if math.isfinite(lo) else "")


def metric_columns(task: str) -> list[tuple[str, str, float, int]]:
    """(metric, title, scale, digits) of the main table."""
    cols = []
    for m, t, _ in primary(task):
        cols += [(m, t, 1.0, 3)] + ([(*BEAM[m], 1.0, 3)] if m in BEAM else [])
    digits = {"train_seconds": 1, INCL_TEACHER: 1, "throughput": 0, "latency_ms": 1}
    digits.update(size_mb=1, params=2)
    for m, t in EXTRA:
        cols.append((m, t, 1e6 if m == "params" else 1.0, digits.get(m, 3)))
    return cols


def table_rows(sweep: Sweep) -> list[dict[str, Any]]:
    """One row per config: its varied params, seeds, and mean/low/high of every metric."""
    rows = []
    for g in sweep.groups:
        row: dict[str, Any] = {"student": g.student, "condition": g.condition}
        row.update({k: v for k, v in g.key})
        row["n"] = len(g.trials)
        row["seeds"] = " ".join(str(s) for s in sorted({t.seed for t in g.trials}))
        for m, *_ in metric_columns(sweep.task):
            mean, lo, hi = g.stat(m)
            row.update({m: mean, f"{m}_low": lo, f"{m}_high": hi})
        rows.append(row)
    return rows


def _table(head: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    return lines + ["| " + " | ".join(cells) + " |" for cells in rows]


def markdown(
    sweep: Sweep, comps: list[dict], plots: list[Path], uri: str, cost: dict | None = None
) -> str:
    """The whole report.md: results per config (and the teacher's), the budget check, the
    comparisons with the gain chart, the other plots. `cost`: budget.add_teacher_cost's."""
    lines = _results(sweep, uri, cost)
    lines += ["", "## Budgets", "", *sweep_budget_lines(sweep)]
    lines += ["", f"## Against the `{BASELINE}` baseline (paired by seed)", ""]
    lines += _comparisons(comps, primary(sweep.task)[0][1])
    lines += [f"\n{_image(p)}" for p in plots if p.name == GAIN_PLOT]
    rest = [p for p in plots if p.name != GAIN_PLOT]
    if rest:
        lines += ["", "## Plots", ""]
        lines += [_image(p) for p in rest]
    return "\n".join(lines) + "\n"


def _image(p: Path) -> str:
    return f"![{p.stem.replace('_', ' ')}]({p.name})"


def teacher_rows(
    sweep: Sweep, cols: list[tuple[str, str, float, int]], cost: dict | None = None
) -> list[list[str]]:
    """Table rows of the stored teacher / twin the sweep learned from (its dev metrics from the
    parent run's `<kind>_<metric>` tags, driver/preparation.py; its training seconds), cells
    after the student and condition ones; none without such tags."""
    tags, rows = sweep.parent_tags, []
    for kind in TEACHER_KINDS:
        if not any(f"{kind}_{m}" in tags for m, *_ in cols):
            continue
        cells = [tags.get(f"{kind}_arch") or tags.get(kind) or "", f"({kind})"]
        cells += [""] * len(sweep.varied) + ["–"]
        seconds = (cost or {}).get(kind, (_tag_float(tags, f"{kind}_train_seconds"), 0))[0]
        for m, _, scale, d in cols:
            v = seconds if m in ("train_seconds", INCL_TEACHER) else _tag_float(tags, f"{kind}_{m}")
            cells.append(_num(v / scale, f".{d}f"))
        rows.append(cells)
    return rows


def _tag_float(tags: dict[str, str], key: str) -> float:
    v = as_float(tags.get(key, ""))
    return math.nan if v is None else v


def _results(sweep: Sweep, uri: str, cost: dict | None = None) -> list[str]:
    cols = metric_columns(sweep.task)
    n_excl = sum(sweep.excluded.values())
    excl = ", ".join(f"{v} {k}" for k, v in sorted(sweep.excluded.items()))
    lines = [
        f"# Sweep report: {sweep.name}",
        "",
        f"MLflow experiment `{sweep.experiment_name}` (id {sweep.experiment_id}), parent run "
        f"`{sweep.parent_id}`, tracking URI `{uri}`.",
        f"{len(sweep.trials)} trial(s) in {len(sweep.groups)} config(s)"
        + (f"; {n_excl} left out ({excl})" if n_excl else "")
        + f". Task `{sweep.task}`; dev metrics at each trial's last epoch.",
        "",
        "## Results per config (mean ± 95% CI over seeds)",
        "",
    ]
    head = ["student", "condition", *sweep.varied, "n", *[t for _, t, _, _ in cols]]
    rows = [
        [g.student, g.condition, *[v for _, v in g.key], str(len(g.trials))]
        + [_cell(g.stat(m), scale, d) for m, _, scale, d in cols]
        for g in sweep.groups
    ]
    teachers = teacher_rows(sweep, cols, cost)
    note = (
        "± is the half-width of the 95% t-interval of the mean over seeds (n = seeds); "
        "no ± with a single seed. attr cos / attr rho: cosine and Spearman similarity of the "
        "student's Integrated Gradients token attributions to the teacher's on a fixed dev "
        "probe. ex/s and ms/batch: inference on one fixed batch of 32 on the trial's device "
        "(trials sharing CPU cores make these noisy)."
    )
    if sweep.task == "asr":
        note += " WER beam / CER beam: beam search with the LM, at the last epoch."
    if teachers:
        note += (
            " A (teacher) / (twin) row: the stored model the students learn from, evaluated "
            "once on the same dev set (one model: no seeds, no ±)."
        )
    return lines + _table(head, rows + teachers) + ["", note, "", teacher_cost_note(cost or {})]


def _comparisons(comps: list[dict], metric_name: str) -> list[str]:
    if not any(c["baseline"] for c in comps):
        return [
            f"No paired comparison: this sweep has no `{BASELINE}` config of the same student "
            f"next to a distilled one (sweeps/strategy.py and sweeps/compression.py have both; "
            f"add a separately run baseline sweep with `--baseline <sweep>`)."
        ]
    lines = []
    missing = sorted({c["config"] for c in comps if not c["baseline"]})
    if missing:
        lines += [f"No `{BASELINE}` config of the same student for: {', '.join(missing)}.", ""]
    comps = [c for c in comps if c["baseline"]]
    head = ["config", "baseline", "metric", "n", "mean diff", "95% CI", "boot CI", "d_z", "p"]
    head += ["Holm p", "Wilcoxon p", "verdict"]
    lines += _table(head, [_comparison_cells(c) for c in comps]) + ["", METHODS, ""]
    for c in comps:
        if c["metric"] == metric_name:
            lines.append(_sentence(c, metric_name))
    return lines


def _ci(low: float, high: float) -> str:
    return f"[{low:+.4f}, {high:+.4f}]" if math.isfinite(low) else "–"


def _comparison_cells(c: dict[str, Any]) -> list[str]:
    wil = _num(c["wilcoxon_p"], ".3g") + (f" ({c['wilcoxon']})" if c["wilcoxon"] else "")
    return [
        c["config"],
        c["baseline"],
        c["metric"],
        str(c["n"]),
        _num(c["mean_diff"], "+.4f"),
        _ci(c["low"], c["high"]),
        _ci(c["boot_low"], c["boot_high"]),
        _num(c["d_z"], ".2f"),
        _num(c["p"], ".3g"),
        _num(c["p_holm"], ".3g"),
        wil,
        c["verdict"],
    ]


def _sentence(c: dict[str, Any], metric_name: str) -> str:
    if c["n"] < 2:
        return f"- {c['config']} vs {c['baseline']}: {c['verdict']}."
    return (
        f"- {c['config']} vs {c['baseline']}: {metric_name} {c['mean_diff']:+.4f} "
        f"(95% CI {c['low']:+.4f} to {c['high']:+.4f}, p = {c['p']:.3g}, "
        f"Holm p = {c['p_holm']:.3g}, d_z = {_num(c['d_z'], '.2f')}, "
        f"Wilcoxon p = {_num(c['wilcoxon_p'], '.3g')}"
        + (f" ({c['wilcoxon']})" if c["wilcoxon"] else "")
        + f", n = {c['n']} seeds): {c['verdict']}."
    )


def write_csv(sweep: Sweep, path: Path) -> None:
    """report.csv: table_rows, one line per config."""
    rows = table_rows(sweep)
    cols = list(dict.fromkeys(k for r in rows for k in r))
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=cols)
        w.writeheader()
        w.writerows(rows)
