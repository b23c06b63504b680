"""bench/reproduce.py's table: the published rows beside ours, from the stored records (pure).

Numbers are test accuracy in %. Student rows: mean +- half the 95% t-interval over the confirm
stage's seeds; KD gains: paired by seed against independent, with the Holm-corrected verdict of
driver/confirm_table.py (computed by the confirm stage, read from its confirm.json); retention:
student / teacher test accuracy per seed, mean +- half its 95% t-interval (driver's mean_ci).
"""

from __future__ import annotations

import math
from typing import Any

from driver.reporting.stats import mean_ci

CONDITIONS = ("independent", "soft", "hidden")


def _pct(v: Any) -> str:
    return f"{100 * float(v):.2f}" if v is not None and math.isfinite(float(v)) else "-"


def _pm(mean: float, low: float, high: float) -> str:
    if not math.isfinite(mean):
        return "-"
    if not math.isfinite(low):
        return f"{100 * mean:.2f} (no CI)"
    return f"{100 * mean:.2f} +- {100 * (high - low) / 2:.2f}"


def _confirm_of(record: dict, condition: str) -> dict | None:
    """The confirm stage that ran `condition`: the record's own, else one of `extra_confirms`
    (a separate confirm run of that condition against independent on the same seeds)."""
    for conf in [record["confirm"], *record.get("extra_confirms", [])]:
        if any(a["config"]["condition"] == condition for a in conf["arms"]):
            return conf
    return None


def _arm(conf: dict, condition: str) -> dict | None:
    """The confirm stage's config row of `condition` (labels start with the condition)."""
    for row in conf["answer"]["configs"]:
        if row["label"].split()[0] == condition:
            return row
    return None


def _per_seed(conf: dict, condition: str) -> list[float]:
    """Test accuracy per confirm seed of `condition` (NaN where a seed is missing)."""
    arm = next((i for i, a in enumerate(conf["arms"]) if a["config"]["condition"] == condition))
    got = {t["seed"]: t for t in conf["trials"] if t["arm"] == arm and t["done"]}
    return [float(got[s]["test"].get("test_accuracy", math.nan)) if s in got else math.nan
            for s in conf["seeds"]]  # fmt: skip


def student_cells(record: dict, condition: str) -> tuple[str, str, str]:
    """(mean +- CI, gain vs independent [CI] verdict, retention) of one condition."""
    conf = _confirm_of(record, condition)
    arm = _arm(conf, condition) if conf else None
    if arm is None:
        return "-", "-", "-"
    acc = _pm(arm["test_mean"], arm["test_low"], arm["test_high"])
    gain = "(baseline)"
    for c in conf["answer"]["comparisons"]:
        if c["label"] == arm["label"]:
            base = conf["answer"]["baseline"]
            verdict = c["verdict"].replace(f"not distinguishable from {base}", "tie")
            ci = f"[{100 * c['low']:+.2f}, {100 * c['high']:+.2f}]"
            gain = f"{100 * c['mean_diff']:+.2f} {ci} {verdict}"
    teacher = float(record["teacher"].get("test_accuracy", math.nan))
    ratios = [v / teacher for v in _per_seed(conf, condition)]
    retention = _pm(*mean_ci(ratios)) + "%"
    return acc, gain, retention


def render(records: dict[str, dict], published: dict[str, dict[str, float]]) -> str:
    """The markdown table (datasets as columns) and a line per dataset on scale and time."""
    names = list(records)
    head = "| test accuracy (%) | " + " | ".join(names) + " |"
    lines = [head, "|---" * (len(names) + 1) + "|"]
    for label, row in published.items():
        lines.append(f"| {label} | " + " | ".join(f"{row.get(n, '-')}" for n in names) + " |")

    def add(label: str, cells: list[str]) -> None:
        lines.append(f"| {label} | " + " | ".join(cells) + " |")

    for i, what in enumerate(("defaults", "C on dev")):
        if all("baselines_full" in records[n] for n in names):
            cells = []
            for n in names:
                b = records[n]["baselines_full"][i]
                cells.append(f"{_pct(b['test_accuracy'])} (C={b['C']:g})")
            add(f"ours: TF-IDF + LR, {what}, published split", cells)
    for i, what in enumerate(("defaults", "C on dev")):
        rows = [records[n]["baselines"][i] for n in names]
        cells = [f"{_pct(b['test_accuracy'])} (C={b['C']:g})" for b in rows]
        add(f"ours: TF-IDF + LR, {what}, this scale's split", cells)
    teachers = [_pct(records[n]["teacher"].get("test_accuracy")) for n in names]
    add("ours: teacher MiniLM-L6 (1 fine-tune)", teachers)
    for cond in CONDITIONS:
        cells = [student_cells(records[n], cond) for n in names]
        add(f"ours: L4-H312 {cond} (mean +- 95% CI)", [c[0] for c in cells])
        if cond != "independent":
            add(f"ours: {cond} - independent, paired [95% CI], Holm", [c[1] for c in cells])
        add(f"ours: retention {cond} / teacher", [c[2] for c in cells])
    lines.append("")
    for n in names:
        r = records[n]
        sz, rec = r["teacher"]["sizes"], r["recipe"]
        seeds = r["confirm"]["seeds"]
        lines.append(
            f"- {n} at scale `{r['scale']}`: train/dev/test {sz[0]}/{sz[1]}/{sz[2]}, max_len "
            f"{rec['max_len']}; teacher {rec['teacher_epochs']} epoch(s) lr {rec['teacher_lr']:g} "
            f"batch {rec['teacher_batch_size']} ({r['teacher'].get('train_seconds', 0):.0f} s); "
            f"students {rec['epochs']} epoch(s) lr {rec['lr']:g} batch {rec['batch_size']}, "
            f"confirm seeds {seeds}; sweep wall time {r.get('wall_s', math.nan) / 60:.1f} min"
        )
    return "\n".join(lines)
