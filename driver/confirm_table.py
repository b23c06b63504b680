"""The confirm stage's answer from per-seed numbers: pure, no Ray, no MLflow, no files.

    answer = confirm_answer(test, baseline="independent", higher_is_better=True, dev=dev)
    print(format_answer(answer))          # the aligned console table
    markdown_answer(answer)               # the same as markdown (confirm.md)

`test` / `dev` map a config's label to its values in seed order (NaN where a seed is missing);
the seeds are paired by position. Per config: mean +- 95% t-interval over seeds. Per config
against the baseline (paired by seed, on test): the mean difference with its t-interval and a
bootstrap CI, Cohen's d_z, the paired t-test p and its Holm-corrected p over the family of
comparisons, the Wilcoxon check, and a verdict: "better", "worse" or "not distinguishable from
<baseline>" (identical numbers are a tie: not distinguishable). The statistics are those of
driver/reporting/stats.py (scipy.stats).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from driver.reporting.stats import (
    BOOTSTRAP_MIN_PAIRS,
    LEVEL,
    VERDICT_MIN_PAIRS,
    holm,
    mean_ci,
    paired_comparison,
    too_few_pairs,
)

ALPHA = 1 - LEVEL  # a Holm-corrected p below this is a difference


def verdict(comparison: dict[str, Any], higher_is_better: bool, baseline: str) -> str:
    """'better' | 'worse' (Holm p < ALPHA, by the sign of the difference) | 'not
    distinguishable from <baseline>' | 'no verdict: ...' with fewer than VERDICT_MIN_PAIRS
    paired seeds (2 pairs gave 'better' at d_z 21 from one degree of freedom)."""
    n = comparison["n"]
    if n < VERDICT_MIN_PAIRS:
        return too_few_pairs(n)
    p = comparison["p_holm"]
    if not (_finite(p) and p < ALPHA) or comparison["mean_diff"] == 0:
        return f"not distinguishable from {baseline}"
    return "better" if (comparison["mean_diff"] > 0) == higher_is_better else "worse"


def confirm_answer(
    test: dict[str, Sequence[float]],
    baseline: str,
    higher_is_better: bool,
    dev: dict[str, Sequence[float]] | None = None,
    info: dict[str, dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """{"baseline", "higher_is_better", "configs": [...], "comparisons": [...]}.

    configs: one row per label (the order of `test`): label, baseline, seeds (finite test
    values), test_mean/low/high, dev_mean/low/high, plus `info[label]` (e.g. the search's view).
    comparisons: one row per non-baseline label: paired_comparison's fields (mean_diff,
    low/high, boot_low/boot_high, d_z, p, p_holm (Holm over all rows), wilcoxon_p) + verdict."""
    if baseline not in test:
        raise ValueError(f"baseline {baseline!r} has no values")
    configs = []
    for label, values in test.items():
        row: dict[str, Any] = {"label": label, "baseline": label == baseline}
        row["seeds"] = sum(_finite(v) for v in values)
        row.update(zip(("test_mean", "test_low", "test_high"), mean_ci(values)))
        dv = (dev or {}).get(label, [])
        row.update(zip(("dev_mean", "dev_low", "dev_high"), mean_ci(dv)))
        row.update((info or {}).get(label, {}))
        configs.append(row)
    others = [label for label in test if label != baseline]
    comps = [{"label": o, **paired_comparison(test[o], test[baseline])} for o in others]
    for c, p in zip(comps, holm([c["p"] for c in comps])):
        c["p_holm"] = p
        c["significant"] = _finite(p) and p < ALPHA and c["n"] >= VERDICT_MIN_PAIRS
        c["verdict"] = verdict(c, higher_is_better, baseline)
    return {
        "baseline": baseline,
        "higher_is_better": higher_is_better,
        "configs": configs,
        "comparisons": comps,
    }


def _finite(v: Any) -> bool:
    try:
        return math.isfinite(float(v))
    except (TypeError, ValueError):
        return False


def _num(v: Any, fmt: str = ".4f") -> str:
    return format(float(v), fmt) if _finite(v) else "-"


def _ci(mean: Any, low: Any, high: Any) -> str:
    if not _finite(mean):
        return "-"
    if not _finite(low):
        return f"{mean:.4f} (no CI)"
    return f"{mean:.4f} +- {(high - low) / 2:.4f}"


def _interval(low: Any, high: Any) -> str:
    return f"[{low:+.4f}, {high:+.4f}]" if _finite(low) and _finite(high) else "-"


def answer_tables(answer: dict[str, Any], metric: str = "accuracy") -> list[list[list[str]]]:
    """The answer as two tables of cells (header row first): configs, then comparisons."""
    head = ["config", "seeds", f"test {metric} (95% CI)", f"dev {metric} (95% CI)"]
    extra = [k for k in ("search_dev", "search_status", "train_s") if k in answer["configs"][0]]
    configs = [head + [k.replace("_", " ") for k in extra]]
    for r in answer["configs"]:
        name = r["label"] + (" [baseline]" if r["baseline"] else "")
        cells = [name, str(r["seeds"]), _ci(r["test_mean"], r["test_low"], r["test_high"])]
        cells.append(_ci(r["dev_mean"], r["dev_low"], r["dev_high"]))
        cells += [_num(r[k], ".0f" if k == "train_s" else ".4f") if k != "search_status"
                  else str(r[k]) for k in extra]  # fmt: skip
        configs.append(cells)
    comps = [["vs " + answer["baseline"], "pairs", "diff [95% CI]", "bootstrap CI", "d_z", "p",
              "Holm p", "verdict"]]  # fmt: skip
    for c in answer["comparisons"]:
        comps.append(
            [
                c["label"],
                str(c["n"]),
                f"{_num(c['mean_diff'], '+.4f')} {_interval(c['low'], c['high'])}",
                _interval(c["boot_low"], c["boot_high"]),
                _num(c["d_z"], ".2f"),
                _num(c["p"], ".3g"),
                _num(c["p_holm"], ".3g"),
                c["verdict"],
            ]  # fmt: skip
        )
    return [configs, comps]


def interval_notes(answer: dict[str, Any]) -> list[str]:
    """Why intervals or verdicts are absent: the bootstrap CI below BOOTSTRAP_MIN_PAIRS pairs,
    any verdict below VERDICT_MIN_PAIRS (the rules of driver/reporting/stats.py)."""
    ns = [c["n"] for c in answer["comparisons"]]
    notes = []
    if ns and min(ns) < BOOTSTRAP_MIN_PAIRS:
        notes.append(
            f"bootstrap CI: shown from {BOOTSTRAP_MIN_PAIRS} paired seeds on; with fewer a "
            "percentile bootstrap is far too narrow (a nominal 95% interval covers ~74% of the "
            "time at 3 pairs, ~84% at 5), so the t-interval is the interval here"
        )
    if ns and min(ns) < VERDICT_MIN_PAIRS:
        notes.append(
            f"verdicts: none from fewer than {VERDICT_MIN_PAIRS} paired seeds (run with "
            f"--confirm-seeds {VERDICT_MIN_PAIRS} or more)"
        )
    return notes


def search_line(search_seeds: int, pruned_in_search: int, asha: bool = True) -> str:
    """What the search's ranking rests on: a single-seed search pruned on one seed per config,
    in the order trials arrived, so the confirm stage (fresh seeds, no pruning) is the answer.
    A search without early stopping (`--no-asha`) still ranked on one seed per config."""
    if search_seeds > 1:
        stop = "pruned by seed group" if asha else "no early stopping"
        return (
            f"search: {search_seeds} seeds per config, {stop}; this stage, on "
            "fresh seeds, full length and without pruning, is the answer"
        )
    if not asha:
        return (
            "search: one seed per config, no early stopping; its ranking rests on one seed "
            "each, so it is a lead, and this stage (fresh seeds) is the answer"
        )
    pruned = f", stopped {pruned_in_search} config(s) early" if pruned_in_search else ""
    return (
        f"search: one seed per config{pruned}; its early stopping compared single-seed dev "
        "values in the order trials arrived (another order or seed can stop another config), "
        "so its ranking is a lead, and this stage (fresh seeds, full length, no early "
        "stopping) is the answer"
    )


def format_answer(answer: dict[str, Any], metric: str = "accuracy") -> str:
    """Aligned console tables (configs, then the paired comparisons), then interval notes."""
    out = []
    for table in answer_tables(answer, metric):
        if len(table) < 2:
            continue
        width = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
        lines = [" | ".join(c.ljust(w) for c, w in zip(row, width)).rstrip() for row in table]
        lines.insert(1, "-|-".join("-" * w for w in width))
        out += lines + [""]
    out += interval_notes(answer)
    return "\n".join(out).rstrip()


def markdown_answer(answer: dict[str, Any], metric: str = "accuracy") -> str:
    """The same tables as markdown."""
    out = []
    for table in answer_tables(answer, metric):
        if len(table) < 2:
            continue
        out.append("| " + " | ".join(table[0]) + " |")
        out.append("|" + "|".join("---" for _ in table[0]) + "|")
        out += ["| " + " | ".join(row) + " |" for row in table[1:]]
        out.append("")
    out += [f"- {n}" for n in interval_notes(answer)]
    return "\n".join(out).rstrip()


def pruned_line(
    test: dict[str, Sequence[float]],
    status: dict[str, str],
    higher_is_better: bool,
    pruned_in_search: int,
) -> str:
    """Did early stopping cost anything? Each re-run config the search had pruned, compared
    (paired by seed) with each re-run config the search kept; or why nothing can be said."""
    pruned = [lab for lab in test if status.get(lab) == "pruned"]
    kept = [lab for lab in test if status.get(lab) == "finished"]
    if not pruned_in_search:
        return "pruned configs: none (the search stopped no config early)"
    if not pruned:
        return (
            f"pruned configs: {pruned_in_search} in the search, none among the configs re-run "
            "here (ranked by the search's dev metric), so this stage cannot tell whether "
            "pruning dropped a better one"
        )
    parts = []
    for p in pruned:
        for k in kept:
            c = paired_comparison(test[p], test[k])
            better = (c["mean_diff"] > 0) == higher_is_better
            sig = _finite(c["p"]) and c["p"] < ALPHA
            word = (
                ("better than" if better else "worse than") if sig else "not distinguishable from"
            )
            parts.append(f"{p} (pruned) is {word} {k} (kept), p = {_num(c['p'], '.3g')}")
    if not kept:
        parts.append("no kept config was re-run to compare with")
    return "pruned configs: " + "; ".join(parts)
