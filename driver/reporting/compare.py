"""Each distilled config against the `independent` baseline of the same student, paired by
seed, with Holm's correction over the configs compared with one baseline on one metric."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from driver.reporting.load import BASELINE, Group, Sweep, primary
from driver.reporting.stats import LEVEL, VERDICT_MIN_PAIRS, holm, paired_comparison, verdict


def baseline_for(group: Group, groups: list[Group]) -> Group | None:
    """The independent config of the same student (the closest one if there are several)."""
    cands = [g for g in groups if g.condition == BASELINE and g.student == group.student]
    if not cands:
        return None
    mine = dict(group.key)
    return max(cands, key=lambda g: sum(mine.get(k) == v for k, v in g.key))


def comparisons(sweep: Sweep) -> list[dict[str, Any]]:
    """One row per (distilled config, metric): the paired statistics and the verdict."""
    out = []
    for g in sweep.groups:
        if g.condition == BASELINE:
            continue
        base = baseline_for(g, sweep.groups)
        for metric, title, higher in primary(sweep.task):
            row = {"config": g.label, "metric": title, "higher_is_better": higher}
            if base is None:
                row.update(baseline="", n=0, verdict=f"no `{BASELINE}` {g.student} in this sweep")
                out.append(row)
                continue
            a, b = g.values(metric), base.values(metric)
            seeds = sorted(set(a) & set(b))
            row.update(baseline=base.label, seeds=seeds)
            row.update(paired_comparison([a[s] for s in seeds], [b[s] for s in seeds]))
            out.append(row)
    adjust(out)
    for row in out:
        if row["baseline"]:
            row["verdict"] = verdict(row, row["higher_is_better"], BASELINE)
    return out


def adjust(rows: list[dict[str, Any]], level: float = LEVEL) -> None:
    """Holm-adjust the p of the rows compared with the same baseline on the same metric
    (sets p_holm and significant in place)."""
    families: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for row in rows:
        if row["baseline"]:
            families[(row["baseline"], row["metric"])].append(row)
    for family in families.values():
        for row, p in zip(family, holm([r["p"] for r in family])):
            row["p_holm"] = p
            # NaN (n < 2) is never significant; nor is anything from under 3 pairs
            row["significant"] = p < 1 - level and row["n"] >= VERDICT_MIN_PAIRS
