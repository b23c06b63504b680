"""The report's PNG charts (matplotlib, Agg backend): metric by method, size vs metric,
learning curves, and metric vs a varied temperature/alpha."""

from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path
from typing import Any

from driver.reporting.load import BASELINE, Group, Sweep, as_float, primary
from driver.reporting.stats import mean_ci


def _colors(groups: list[Group]) -> dict[str, Any]:
    import matplotlib.pyplot as plt

    conds = sorted({g.condition for g in groups}, key=lambda c: (c != BASELINE, c))
    cmap = plt.get_cmap("tab10")
    return {c: cmap(i % 10) for i, c in enumerate(conds)}


def _err(stat: tuple[float, float, float]) -> float:
    m, lo, hi = stat
    return (hi - lo) / 2 if math.isfinite(lo) else 0.0


def plot_by_method(sweep: Sweep, metric: str, title: str, path: Path) -> Path:
    import matplotlib.pyplot as plt

    groups = [g for g in sweep.groups if math.isfinite(g.stat(metric)[0])]
    colors = _colors(groups)
    fig, ax = plt.subplots(figsize=(max(5.0, 0.7 * len(groups) + 2), 4.2))
    xs = range(len(groups))
    ax.bar(
        xs,
        [g.stat(metric)[0] for g in groups],
        yerr=[_err(g.stat(metric)) for g in groups],
        color=[colors[g.condition] for g in groups],
        capsize=4,
    )
    ax.set_xticks(list(xs), [g.label for g in groups], rotation=35, ha="right", fontsize=8)
    ax.set_ylabel(f"dev {title} (mean, 95% CI)")
    ax.set_title(f"{sweep.name}: dev {title} by method")
    lo = min(g.stat(metric)[0] - _err(g.stat(metric)) for g in groups)
    hi = max(g.stat(metric)[0] + _err(g.stat(metric)) for g in groups)
    pad = max((hi - lo) * 0.3, 0.01)
    ax.set_ylim(max(0.0, lo - pad), hi + pad)
    handles = [plt.Rectangle((0, 0), 1, 1, color=c) for c in colors.values()]
    ax.legend(handles, list(colors), fontsize=8, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_size_vs_metric(sweep: Sweep, metric: str, title: str, path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4.2))
    for kind, pick in (("independent", True), ("distilled", False)):
        gs = [
            g
            for g in sweep.groups
            if (g.condition == BASELINE) == pick
            and math.isfinite(g.stat(metric)[0])
            and math.isfinite(g.stat("params")[0])
        ]
        if not gs:
            continue
        ax.errorbar(
            [g.stat("params")[0] / 1e6 for g in gs],
            [g.stat(metric)[0] for g in gs],
            yerr=[_err(g.stat(metric)) for g in gs],
            fmt="o" if pick else "s",
            capsize=4,
            label=kind,
        )
        for g in gs:  # independent labels left of their points, distilled ones right
            ax.annotate(
                g.label,
                (g.stat("params")[0] / 1e6, g.stat(metric)[0]),
                fontsize=7,
                xytext=(-5, -10) if pick else (5, 4),
                textcoords="offset points",
                ha="right" if pick else "left",
            )
    ax.set_xlabel("student parameters (M)")
    ax.set_ylabel(f"dev {title} (mean, 95% CI)")
    ax.set_title(f"{sweep.name}: size vs {title}")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# Fewer seeds than this at an epoch: no band (a t-band from 2 seeds has one degree of freedom
# and spanned -1.4 to 2.0 accuracy); the seeds' own curves are drawn instead.
BAND_MIN_SEEDS = 3


def metric_range(metric: str) -> tuple[float, float]:
    """The values a metric can take: accuracy/F1 in [0, 1]; error rates (WER can exceed 1
    with insertions) and losses in [0, inf)."""
    if metric.endswith(("accuracy", "_f1", "_acc")):
        return 0.0, 1.0
    return 0.0, math.inf


def curve_band(
    per_epoch: dict[int, list[float]], bounds: tuple[float, float]
) -> list[tuple[int, float, float, float]] | None:
    """(epoch, mean, low, high) of a t-band clipped to `bounds`, or None where any epoch has
    fewer than BAND_MIN_SEEDS values (then the seeds themselves are the honest picture)."""
    if min(len(v) for v in per_epoch.values()) < BAND_MIN_SEEDS:
        return None
    out = []
    for e in sorted(per_epoch):
        m, lo, hi = mean_ci(per_epoch[e])
        lo, hi = (lo, hi) if math.isfinite(lo) else (m, m)
        out.append((e, m, max(lo, bounds[0]), min(hi, bounds[1])))
    return out


def _curves(client, group: Group, metric: str) -> dict[str, dict[int, float]]:
    """Per trial (seed) of a group: {epoch: value} of the metric's history."""
    out: dict[str, dict[int, float]] = {}
    for t in group.trials:
        hist = {m.step: m.value for m in client.get_metric_history(t.run_id, metric)}
        hist = {k: v for k, v in hist.items() if math.isfinite(v)}
        if hist:
            out[t.run_id] = hist
    return out


def plot_learning_curves(sweep: Sweep, client, metric: str, title: str, path: Path) -> Path | None:
    """Mean dev curve per config with a 95% t-band (clipped to the metric's range) from
    BAND_MIN_SEEDS seeds on; with fewer seeds, each seed's own curve, no band."""
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, ax = plt.subplots(figsize=(7, 4.5))
    cmap = plt.get_cmap("tab20")
    drawn, seeds_only = 0, False
    for i, g in enumerate(sweep.groups):
        curves = _curves(client, g, metric)
        per_epoch: dict[int, list[float]] = defaultdict(list)
        for hist in curves.values():
            for step, v in hist.items():
                per_epoch[step].append(v)
        if not per_epoch:
            continue
        color, band = cmap(i % 20), curve_band(per_epoch, metric_range(metric))
        if band is None:  # too few seeds for a band: draw the seeds
            seeds_only = True
            for j, hist in enumerate(curves.values()):
                steps = sorted(hist)
                ax.plot(steps, [hist[s] for s in steps], marker=".", lw=1, color=color,
                        label=g.label if j == 0 else None)  # fmt: skip
        else:
            ax.plot([b[0] for b in band], [b[1] for b in band], marker="o", color=color,
                    label=g.label)  # fmt: skip
            ax.fill_between([b[0] for b in band], [b[2] for b in band], [b[3] for b in band],
                            color=color, alpha=0.15)  # fmt: skip
        drawn += 1
    if not drawn:
        plt.close(fig)
        return None
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    what = f"mean over seeds, 95% CI band from {BAND_MIN_SEEDS} seeds"
    ax.set_ylabel(f"dev {title} ({what}" + ("; fewer: each seed)" if seeds_only else ")"))
    ax.set_title(f"{sweep.name}: learning curves")
    ax.legend(fontsize=7, ncol=2 if drawn > 8 else 1)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_param_curve(sweep: Sweep, param: str, metric: str, title: str, path: Path) -> Path | None:
    """Metric vs a varied numeric param (temperature, alpha), one line per other setting."""
    import matplotlib.pyplot as plt

    lines: dict[str, list[tuple[float, Group]]] = defaultdict(list)
    for g in sweep.groups:
        key = dict(g.key)
        x = as_float(key.get(param, ""))
        if x is None:
            continue
        lines[g.label_without(param)].append((x, g))
    if not any(len(v) > 1 for v in lines.values()):
        return None
    fig, ax = plt.subplots(figsize=(6, 4.2))
    for label, pts in sorted(lines.items()):
        pts.sort(key=lambda p: p[0])
        ax.errorbar(
            [x for x, _ in pts],
            [g.stat(metric)[0] for _, g in pts],
            yerr=[_err(g.stat(metric)) for _, g in pts],
            marker="o",
            capsize=4,
            label=label,
        )
    ax.set_xlabel(param)
    if param == "temperature":
        ax.set_xscale("log", base=2)
    ax.set_ylabel(f"dev {title} (mean, 95% CI)")
    ax.set_title(f"{sweep.name}: {title} vs {param}")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def make_plots(sweep: Sweep, client, out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    metric, title, _ = primary(sweep.task)[0]
    plots = [
        plot_by_method(sweep, metric, title, out / "metric_by_method.png"),
        plot_size_vs_metric(sweep, metric, title, out / "size_vs_metric.png"),
        plot_learning_curves(sweep, client, metric, title, out / "learning_curves.png"),
    ]
    for param in ("temperature", "alpha"):
        if param in sweep.varied:
            plots.append(plot_param_curve(sweep, param, metric, title, out / f"{param}_curve.png"))
    return [p for p in plots if p is not None]
