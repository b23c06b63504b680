"""The report's comparison charts (matplotlib, Agg): the gain of each config over its paired
baseline with its 95% CI, and the attribution similarity to the teacher per config."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from driver.reporting.load import BASELINE, Sweep, primary

# (metric, legend title) of the attribution-similarity chart, in drawing order
SIMILARITY = [("attr_cosine", "cosine"), ("attr_spearman", "Spearman rho")]


def gain_points(comps: list[dict[str, Any]], metric_title: str) -> list[dict[str, Any]]:
    """The gain of each compared config on `metric_title` (the comparisons' rows), signed so
    that > 0 is better: treated - baseline where higher is better, baseline - treated (a WER
    reduction) where lower is. Rows without a paired seed are left out; low/high are NaN
    for a single pair."""
    out = []
    for c in comps:
        if c["metric"] != metric_title or not c.get("baseline") or not c.get("n"):
            continue
        sign = 1.0 if c["higher_is_better"] else -1.0
        low, high = sorted((sign * c["low"], sign * c["high"]))
        if not (math.isfinite(c["low"]) and math.isfinite(c["high"])):
            low = high = math.nan
        out.append(
            {
                "label": c["config"],
                "baseline": c["baseline"],
                "gain": sign * c["mean_diff"],
                "low": low,
                "high": high,
                "significant": bool(c.get("significant")),
                "n": c["n"],
            }
        )
    return out


def gain_axis_label(metric_title: str, higher_is_better: bool) -> str:
    if higher_is_better:
        return f"{metric_title} gain over {BASELINE} (config - baseline; > 0 is better)"
    return f"{metric_title} reduction vs {BASELINE} (baseline - config; > 0 is better)"


def _horizontal(n_rows: int):
    import matplotlib.pyplot as plt

    return plt.subplots(figsize=(7.5, max(2.4, 0.45 * n_rows + 1.4)))


def plot_gain(
    comps: list[dict[str, Any]], metric_title: str, higher: bool, name: str, path: Path
) -> Path | None:
    """gain_vs_baseline.png: one point per config with its 95% t-interval whiskers and a zero
    line; filled = significant after Holm. None if nothing was compared."""
    import matplotlib.pyplot as plt

    pts = gain_points(comps, metric_title)
    if not pts:
        return None
    fig, ax = _horizontal(len(pts))
    ys = list(range(len(pts)))[::-1]  # the first config on top
    for y, p in zip(ys, pts):
        err = None
        if math.isfinite(p["low"]):
            err = [[p["gain"] - p["low"]], [p["high"] - p["gain"]]]
        ax.errorbar(
            [p["gain"]],
            [y],
            xerr=err,
            fmt="o",
            capsize=4,
            color="tab:blue",
            markerfacecolor="tab:blue" if p["significant"] else "white",
        )
    ax.axvline(0.0, color="black", linewidth=1)
    ax.set_yticks(ys, [f"{p['label']} (n={p['n']})" for p in pts], fontsize=8)
    ax.set_xlabel(gain_axis_label(metric_title, higher), fontsize=9)
    ax.set_ylim(-0.6, len(pts) - 0.4)
    ax.set_title(
        f"{name}: dev {metric_title} vs the paired baseline (mean, 95% CI)\n"
        "filled: significant after Holm (p < 0.05); hollow: not distinguishable",
        fontsize=9,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_similarity(sweep: Sweep, path: Path) -> Path | None:
    """attribution_similarity.png: attribution cosine and Spearman to the teacher per config
    (mean over seeds, 95% CI); None when no trial reported them."""
    import matplotlib.pyplot as plt

    groups = [g for g in sweep.groups if math.isfinite(g.stat(SIMILARITY[0][0])[0])]
    if not groups:
        return None
    fig, ax = _horizontal(len(groups))
    ys = list(range(len(groups)))[::-1]
    for i, (metric, title) in enumerate(SIMILARITY):
        stats = [g.stat(metric) for g in groups]
        off = (i - (len(SIMILARITY) - 1) / 2) * 0.25
        keep = [(y + off, s) for y, s in zip(ys, stats) if math.isfinite(s[0])]
        if not keep:
            continue
        err = [[s[0] - s[1] if math.isfinite(s[1]) else 0.0 for _, s in keep],
               [s[2] - s[0] if math.isfinite(s[2]) else 0.0 for _, s in keep]]  # fmt: skip
        ax.errorbar(
            [s[0] for _, s in keep], [y for y, _ in keep], xerr=err, fmt="os"[i], capsize=3,
            label=title,
        )  # fmt: skip
    ax.set_yticks(ys, [g.label for g in groups], fontsize=8)
    ax.set_ylim(-0.6, len(groups) - 0.4)
    ax.set_xlabel("attribution similarity to the teacher (IG, dev probe; 1 = identical)")
    ax.set_title(f"{sweep.name}: attribution similarity (mean, 95% CI)", fontsize=10)
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def comparison_charts(sweep: Sweep, comps: list[dict[str, Any]], out: Path) -> list[Path]:
    """gain_vs_baseline.png (the first dev metric) and attribution_similarity.png, those that
    have something to show."""
    import matplotlib

    matplotlib.use("Agg")
    _, title, higher = primary(sweep.task)[0]
    charts = [
        plot_gain(comps, title, higher, sweep.name, out / "gain_vs_baseline.png"),
        plot_similarity(sweep, out / "attribution_similarity.png"),
    ]
    return [p for p in charts if p is not None]
