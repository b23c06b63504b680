"""Comparison report of a sweep, read back from MLflow: is distillation better, and by how much?

    python sweeps/report.py temperature-text-fortunes            # experiment kdsweep/<name>
    python sweeps/report.py kdsweep/strategy-text-fortunes --mlflow-uri sqlite:///mlruns.db
    python sweeps/report.py compression-text-fortunes --out /tmp/compression-report
    python sweeps/report.py transfer-text-fortunes --baseline transfer_independent-text-fortunes

Per config (condition, student, varied params), aggregated over seeds (`--seeds N`): the mean
and the 95% t-interval of the dev metric (accuracy and F1, or WER and CER for `task: asr`),
attribution similarity to the teacher, training time, inference speed and size. Each distilled
config is compared with the `independent` baseline of the same student, paired by seed (mean
difference, 95% CI, paired t-test). Writes report.md, report.csv and PNG plots to --out
(default runs/<sweep>/report) and logs them under `report/` on the sweep's parent run.

Only trials that ran to the end count (FINISHED, not stopped by ASHA), because a pruned trial's
last metric is from an earlier epoch; `--include-pruned` counts them too. For a clean comparison
run the sweep with `--seeds 5 --no-asha`.
"""

from __future__ import annotations

import argparse
import csv
import math
import os
import statistics
import sys
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PROJECT_DIR = Path(__file__).resolve().parents[1]
BASELINE = "independent"
LEVEL = 0.95
# Keys that never define a config: the seed is what we aggregate over; the rest is bookkeeping.
NOT_CONFIG = {"seed", "student", "condition", "task", "cache_dir", "threads", "device"}
# (metric key, column title, higher is better)
PRIMARY = {
    "text": [("dev_accuracy", "accuracy", True), ("dev_f1", "F1", True)],
    "asr": [("dev_wer", "WER", False), ("dev_cer", "CER", False)],
}
EXTRA = [
    ("attr_cosine", "attr cos"),
    ("attr_spearman", "attr rho"),
    ("train_seconds", "train s"),
    ("throughput", "ex/s"),
    ("latency_ms", "ms/batch"),
    ("size_mb", "MB"),
    ("params", "params (M)"),
]


# ---------------------------------------------------------------- statistics (no scipy needed)
def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction of the incomplete beta function (modified Lentz)."""
    tiny, qab, qap, qam = 1e-300, a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 500):
        m2 = 2 * m
        for aa in (
            m * (b - m) * x / ((qam + m2) * (a + m2)),
            -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2)),
        ):
            d = 1.0 + aa * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + aa / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1.0) < 1e-15:
            break
    return h


def betainc(a: float, b: float, x: float) -> float:
    """Regularized incomplete beta I_x(a, b)."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    log_front = (
        math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    )
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(log_front) * _betacf(a, b, x) / a
    return 1.0 - math.exp(log_front) * _betacf(b, a, 1.0 - x) / b


def t_cdf(t: float, df: float) -> float:
    """P(T <= t) for Student's t with `df` degrees of freedom."""
    tail = 0.5 * betainc(df / 2.0, 0.5, df / (df + t * t))
    return 1.0 - tail if t > 0 else tail


def t_quantile(p: float, df: float) -> float:
    """The t value with P(T <= t) = p (bisection on the CDF; 2.262 for p=0.975, df=9)."""
    if not 0.0 < p < 1.0:
        raise ValueError(f"p must be in (0, 1), got {p}")
    if p < 0.5:
        return -t_quantile(1.0 - p, df)
    lo, hi = 0.0, 1.0
    while t_cdf(hi, df) < p:
        lo, hi = hi, hi * 2.0
    for _ in range(200):
        mid = (lo + hi) / 2.0
        if t_cdf(mid, df) < p:
            lo = mid
        else:
            hi = mid
        if hi - lo < 1e-12:
            break
    return (lo + hi) / 2.0


def mean_ci(values: list[float], level: float = LEVEL) -> tuple[float, float, float]:
    """(mean, low, high) of the t-interval; low/high are NaN for fewer than 2 values."""
    vals = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    if not vals:
        return math.nan, math.nan, math.nan
    m = statistics.fmean(vals)
    if len(vals) < 2:
        return m, math.nan, math.nan
    half = (
        t_quantile(0.5 + level / 2, len(vals) - 1) * statistics.stdev(vals) / math.sqrt(len(vals))
    )
    return m, m - half, m + half


def paired_comparison(
    treated: list[float], baseline: list[float], level: float = LEVEL
) -> dict[str, float | bool | int]:
    """Paired t-test of treated - baseline (same seeds, same order).

    Returns n, mean_diff, low, high (the CI of the mean difference), t, p (two-sided) and
    significant (CI excludes 0, i.e. p < 1 - level). Identical samples: diff 0, p = 1.
    """
    if len(treated) != len(baseline):
        raise ValueError("paired samples need equal lengths")
    diffs = [a - b for a, b in zip(treated, baseline) if math.isfinite(a) and math.isfinite(b)]
    n = len(diffs)
    out: dict[str, Any] = {"n": n, "mean_diff": statistics.fmean(diffs) if diffs else math.nan}
    out.update(low=math.nan, high=math.nan, t=math.nan, p=math.nan, significant=False)
    if n < 2:
        return out
    sd = statistics.stdev(diffs)
    m = out["mean_diff"]
    if sd == 0.0:
        out.update(low=m, high=m, t=0.0 if m == 0 else math.copysign(math.inf, m))
        out.update(p=1.0 if m == 0 else 0.0, significant=m != 0)
        return out
    se = sd / math.sqrt(n)
    t = m / se
    half = t_quantile(0.5 + level / 2, n - 1) * se
    p = 2.0 * (1.0 - t_cdf(abs(t), n - 1))
    out.update(low=m - half, high=m + half, t=t, p=p, significant=p < 1 - level)
    return out


# ---------------------------------------------------------------- reading the sweep from MLflow
@dataclass
class Trial:
    run_id: str
    name: str
    condition: str
    student: str
    seed: int
    params: dict[str, str]
    metrics: dict[str, float]
    status: str
    pruned: bool


@dataclass
class Group:
    """One config: the trials that differ only by seed."""

    condition: str
    student: str
    key: tuple[tuple[str, str], ...]  # the varied params (not seed/student/condition)
    trials: list[Trial] = field(default_factory=list)

    @property
    def label(self) -> str:
        params = [f"{_short(k)}={v}" for k, v in self.key if v != ""]  # "": not logged here
        parts = [self.condition, *params, self.student]
        return " ".join(p for p in parts if p)

    def values(self, metric: str) -> dict[int, float]:
        return {t.seed: t.metrics[metric] for t in self.trials if metric in t.metrics}

    def stat(self, metric: str) -> tuple[float, float, float]:
        return mean_ci(list(self.values(metric).values()))


@dataclass
class Sweep:
    name: str
    experiment_id: str
    experiment_name: str
    parent_id: str
    task: str
    trials: list[Trial]
    excluded: dict[str, int]
    varied: list[str]
    groups: list[Group]


def _short(k: str) -> str:
    return {"temperature": "T", "alpha": "a", "lr": "lr", "data_subset": "n"}.get(k, k)


def _search_all(client, exp_id: str, filter_string: str = "") -> list:
    runs, token = [], None
    while True:
        page = client.search_runs(
            [exp_id], filter_string, max_results=1000, page_token=token, order_by=["start_time ASC"]
        )
        runs += list(page)
        token = page.token
        if not token:
            return runs


def find_experiment(client, name: str):
    candidates = [name] if name.startswith("kdsweep/") else [f"kdsweep/{name}", name]
    for c in candidates:
        exp = client.get_experiment_by_name(c)
        if exp is not None:
            return exp
    known = sorted(e.name for e in client.search_experiments() if e.name.startswith("kdsweep/"))
    raise SystemExit(
        f"error: no MLflow experiment {' or '.join(repr(c) for c in candidates)}; "
        f"known sweeps: {', '.join(known) or '(none)'}"
    )


def _float(v: str) -> float | None:
    try:
        return float(v)
    except (TypeError, ValueError):
        return None


def _fmt_param(v: str) -> str:
    f = _float(v)
    return f"{f:g}" if f is not None and v.lower() not in ("nan", "inf") else v


def _latest_sweep_runs(client, name: str) -> tuple[Any, Any, list]:
    """(experiment, latest parent run, its child runs) of sweep `name`."""
    exp = find_experiment(client, name)
    runs = _search_all(client, exp.experiment_id)
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    if not parents:
        raise SystemExit(f"error: experiment {exp.name} has no parent (sweep) run")
    parent = max(parents, key=lambda r: r.info.start_time or 0)  # the latest if several
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    return exp, parent, children


def load_sweep(
    client, name: str, include_pruned: bool = False, baselines: tuple[str, ...] = ()
) -> Sweep:
    """The sweep's parent run, its child trials (plus those of `baselines`, other sweeps with
    the `independent` arm run separately), and the trials grouped into configs."""
    exp, parent, children = _latest_sweep_runs(client, name)
    for other in baselines:
        children += _latest_sweep_runs(client, other)[2]
    task = parent.data.tags.get("task") or next(
        (c.data.tags.get("task") for c in children if c.data.tags.get("task")), "text"
    )
    trials, excluded = [], defaultdict(int)
    for r in children:
        tags, params = r.data.tags, r.data.params
        pruned = tags.get("stopped_by") == "asha"
        if r.info.status != "FINISHED":
            excluded[r.info.status.lower()] += 1
            continue
        if pruned and not include_pruned:
            excluded["pruned by ASHA"] += 1
            continue
        if PRIMARY.get(task, PRIMARY["text"])[0][0] not in r.data.metrics:
            excluded["no dev metric"] += 1
            continue
        trials.append(
            Trial(
                run_id=r.info.run_id,
                name=r.info.run_name or r.info.run_id[:8],
                condition=tags.get("condition") or params.get("condition", "?"),
                student=tags.get("student") or params.get("student", ""),
                seed=int(_float(params.get("seed", "0")) or 0),
                params=dict(params),
                metrics=dict(r.data.metrics),
                status=r.info.status,
                pruned=pruned,
            )
        )
    keys = sorted({k for t in trials for k in t.params} - NOT_CONFIG)
    # Varied = takes two values among the trials that have it: a key only some conditions log
    # (temperature, transfer_ratio for the independent arm of a --baseline sweep) is not a
    # difference by itself.
    varied = [k for k in keys if len({t.params[k] for t in trials if k in t.params}) > 1]
    by_key: dict[tuple, Group] = {}
    for t in trials:
        key = tuple((k, _fmt_param(t.params.get(k, ""))) for k in varied)
        g = by_key.setdefault((t.condition, t.student, key), Group(t.condition, t.student, key))
        g.trials.append(t)
    groups = sorted(
        by_key.values(),
        key=lambda g: (
            g.student,
            g.condition != BASELINE,
            g.condition,
            [_sort(v) for _, v in g.key],
        ),
    )
    sweep_name = exp.name.removeprefix("kdsweep/")
    return Sweep(
        sweep_name,
        exp.experiment_id,
        exp.name,
        parent.info.run_id,
        task,
        trials,
        dict(excluded),
        varied,
        groups,
    )


def _sort(v: str) -> tuple:
    f = _float(v)
    return (0, f, "") if f is not None else (1, 0.0, v)


# ---------------------------------------------------------------- comparisons
def baseline_for(group: Group, groups: list[Group]) -> Group | None:
    """The independent config of the same student (the closest one if there are several)."""
    cands = [g for g in groups if g.condition == BASELINE and g.student == group.student]
    if not cands:
        return None
    mine = dict(group.key)
    return max(cands, key=lambda g: sum(mine.get(k) == v for k, v in g.key))


def comparisons(sweep: Sweep) -> list[dict[str, Any]]:
    out = []
    for g in sweep.groups:
        if g.condition == BASELINE:
            continue
        base = baseline_for(g, sweep.groups)
        for metric, title, higher in PRIMARY.get(sweep.task, PRIMARY["text"]):
            row = {"config": g.label, "metric": title, "higher_is_better": higher}
            if base is None:
                row.update(baseline="", n=0, verdict=f"no `{BASELINE}` {g.student} in this sweep")
                out.append(row)
                continue
            a, b = g.values(metric), base.values(metric)
            seeds = sorted(set(a) & set(b))
            res = paired_comparison([a[s] for s in seeds], [b[s] for s in seeds])
            row.update(baseline=base.label, seeds=seeds, **res)
            row["verdict"] = verdict(res, higher)
            out.append(row)
    return out


def verdict(res: dict[str, Any], higher_is_better: bool) -> str:
    if res["n"] < 2:
        return f"not testable ({res['n']} paired seed{'s' if res['n'] != 1 else ''}; need >= 2)"
    if not res["significant"]:
        return "not significant (95% CI includes 0)"
    better = (res["mean_diff"] > 0) == higher_is_better
    return f"significant: {'better' if better else 'worse'} than {BASELINE}"


# ---------------------------------------------------------------- output
def _cell(stat: tuple[float, float, float], scale: float = 1.0, digits: int = 3) -> str:
    m, lo, hi = (x / scale for x in stat)
    if not math.isfinite(m):
        return "–"
    s = f"{m:.{digits}f}"
    return s + (f" ± {(hi - lo) / 2:.{digits}f}" if math.isfinite(lo) else "")


def _metric_columns(task: str) -> list[tuple[str, str, float, int]]:
    """(metric, title, scale, digits) of the main table."""
    cols = [(m, t, 1.0, 3) for m, t, _ in PRIMARY.get(task, PRIMARY["text"])]
    digits = {"train_seconds": 1, "throughput": 0, "latency_ms": 1, "size_mb": 1, "params": 2}
    for m, t in EXTRA:
        cols.append((m, t, 1e6 if m == "params" else 1.0, digits.get(m, 3)))
    return cols


def table_rows(sweep: Sweep) -> list[dict[str, Any]]:
    rows = []
    for g in sweep.groups:
        row: dict[str, Any] = {"student": g.student, "condition": g.condition}
        row.update({k: v for k, v in g.key})
        row["n"] = len(g.trials)
        row["seeds"] = " ".join(str(s) for s in sorted({t.seed for t in g.trials}))
        for m, *_ in _metric_columns(sweep.task):
            mean, lo, hi = g.stat(m)
            row.update({m: mean, f"{m}_low": lo, f"{m}_high": hi})
        rows.append(row)
    return rows


def markdown(sweep: Sweep, comps: list[dict], plots: list[Path], uri: str) -> str:
    cols = _metric_columns(sweep.task)
    metric_name = PRIMARY.get(sweep.task, PRIMARY["text"])[0][1]
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
    lines.append("| " + " | ".join(head) + " |")
    lines.append("|" + "|".join("---" for _ in head) + "|")
    for g in sweep.groups:
        cells = [g.student, g.condition, *[v for _, v in g.key], str(len(g.trials))]
        cells += [_cell(g.stat(m), scale, d) for m, _, scale, d in cols]
        lines.append("| " + " | ".join(cells) + " |")
    lines += [
        "",
        "± is the half-width of the 95% t-interval of the mean over seeds (n = seeds); "
        "no ± with a single seed. attr cos / attr rho: cosine and Spearman similarity of the "
        "student's Integrated Gradients token attributions to the teacher's on a fixed dev probe. "
        "ex/s and ms/batch: inference on one fixed batch of 32 on the trial's device (trials "
        "sharing CPU cores make these noisy).",
        "",
        f"## Against the `{BASELINE}` baseline (paired by seed)",
        "",
    ]
    if not any(c["baseline"] for c in comps):
        lines.append(
            f"No paired comparison: this sweep has no `{BASELINE}` config of the same student "
            f"next to a distilled one (sweeps/strategy.py and sweeps/compression.py have both; "
            f"add a separately run baseline sweep with `--baseline <sweep>`)."
        )
    else:
        missing = sorted({c["config"] for c in comps if not c["baseline"]})
        if missing:
            lines += [f"No `{BASELINE}` config of the same student for: {', '.join(missing)}.", ""]
        comps = [c for c in comps if c["baseline"]]
        head = ["config", "baseline", "metric", "n", "mean diff", "95% CI", "p", "verdict"]
        lines.append("| " + " | ".join(head) + " |")
        lines.append("|" + "|".join("---" for _ in head) + "|")
        for c in comps:
            ci = (
                f"[{c['low']:+.4f}, {c['high']:+.4f}]"
                if c.get("n", 0) >= 2 and math.isfinite(c["low"])
                else "–"
            )
            md = c.get("mean_diff", math.nan)
            p = c.get("p", math.nan)
            cells = [
                c["config"],
                c["baseline"] or "–",
                c["metric"],
                str(c.get("n", 0)),
                f"{md:+.4f}" if isinstance(md, float) and math.isfinite(md) else "–",
                ci,
                f"{p:.3g}" if isinstance(p, float) and math.isfinite(p) else "–",
                c["verdict"],
            ]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
        for c in comps:
            if c["metric"] != metric_name:
                continue
            if c["n"] < 2:
                lines.append(f"- {c['config']} vs {c['baseline']}: {c['verdict']}.")
                continue
            lines.append(
                f"- {c['config']} vs {c['baseline']}: {metric_name} {c['mean_diff']:+.4f} "
                f"(95% CI {c['low']:+.4f} to {c['high']:+.4f}, p = {c['p']:.3g}, "
                f"n = {c['n']} seeds): {c['verdict']}."
            )
    if plots:
        lines += ["", "## Plots", ""]
        lines += [f"![{p.stem.replace('_', ' ')}]({p.name})" for p in plots]
    return "\n".join(lines) + "\n"


def write_csv(sweep: Sweep, path: Path) -> None:
    rows = table_rows(sweep)
    cols = list(dict.fromkeys(k for r in rows for k in r))
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=cols)
        w.writeheader()
        w.writerows(rows)


# ---------------------------------------------------------------- plots
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


def plot_learning_curves(sweep: Sweep, client, metric: str, title: str, path: Path) -> Path | None:
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, ax = plt.subplots(figsize=(7, 4.5))
    cmap = plt.get_cmap("tab20")
    drawn = 0
    for i, g in enumerate(sweep.groups):
        per_epoch: dict[int, list[float]] = defaultdict(list)
        for t in g.trials:
            for m in client.get_metric_history(t.run_id, metric):
                if math.isfinite(m.value):
                    per_epoch[m.step].append(m.value)
        if not per_epoch:
            continue
        epochs = sorted(per_epoch)
        stats = [mean_ci(per_epoch[e]) for e in epochs]
        color = cmap(i % 20)
        ax.plot(epochs, [s[0] for s in stats], marker="o", color=color, label=g.label)
        lows = [s[1] if math.isfinite(s[1]) else s[0] for s in stats]
        highs = [s[2] if math.isfinite(s[2]) else s[0] for s in stats]
        ax.fill_between(epochs, lows, highs, color=color, alpha=0.15)
        drawn += 1
    if not drawn:
        plt.close(fig)
        return None
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel(f"dev {title} (mean over seeds, 95% CI band)")
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
        x = _float(key.get(param, ""))
        if x is None:
            continue
        rest = " ".join(
            [g.condition] + [f"{_short(k)}={v}" for k, v in g.key if k != param] + [g.student]
        )
        lines[rest].append((x, g))
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
    metric, title, _ = PRIMARY.get(sweep.task, PRIMARY["text"])[0]
    plots = [
        plot_by_method(sweep, metric, title, out / "metric_by_method.png"),
        plot_size_vs_metric(sweep, metric, title, out / "size_vs_metric.png"),
        plot_learning_curves(sweep, client, metric, title, out / "learning_curves.png"),
    ]
    for param in ("temperature", "alpha"):
        if param in sweep.varied:
            plots.append(plot_param_curve(sweep, param, metric, title, out / f"{param}_curve.png"))
    return [p for p in plots if p is not None]


# ---------------------------------------------------------------- entry point
def default_tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{PROJECT_DIR / 'mlruns.db'}"


def build_report(
    name: str,
    tracking_uri: str | None = None,
    out: Path | None = None,
    include_pruned: bool = False,
    log_artifacts: bool = True,
    baselines: tuple[str, ...] = (),
) -> Path:
    """Write report.md (+ report.csv, PNGs) for a sweep; returns the report.md path."""
    from mlflow.tracking import MlflowClient

    uri = tracking_uri or default_tracking_uri()
    client = MlflowClient(uri)
    sweep = load_sweep(client, name, include_pruned, baselines)
    out = Path(out) if out else PROJECT_DIR / "runs" / sweep.name / "report"
    out.mkdir(parents=True, exist_ok=True)
    if not sweep.trials:
        excl = ", ".join(f"{v} {k}" for k, v in sweep.excluded.items()) or "no child runs"
        text = f"# Sweep report: {sweep.name}\n\nNo finished trials to report ({excl}).\n"
        plots, comps = [], []
    else:
        plots = make_plots(sweep, client, out)
        comps = comparisons(sweep)
        text = markdown(sweep, comps, plots, uri)
        write_csv(sweep, out / "report.csv")
    md = out / "report.md"
    md.write_text(text)
    if log_artifacts:
        for p in [md, out / "report.csv", *plots]:
            if p.is_file():
                client.log_artifact(sweep.parent_id, str(p), artifact_path="report")
    return md


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="sweeps/report.py",
        description=__doc__.strip().splitlines()[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("sweep", help="sweep name (experiment kdsweep/<sweep>) or experiment name")
    p.add_argument("--mlflow-uri", help="tracking URI (default $MLFLOW_TRACKING_URI or sqlite)")
    p.add_argument("--out", type=Path, help="output dir (default runs/<sweep>/report)")
    p.add_argument("--include-pruned", action="store_true", help="count ASHA-pruned trials")
    p.add_argument("--no-log", action="store_true", help="do not log on the parent run")
    p.add_argument(
        "--baseline",
        action="append",
        default=[],
        help="another sweep whose trials join this one (e.g. its `independent` arm): repeatable",
    )
    args = p.parse_args(argv)
    md = build_report(
        args.sweep,
        args.mlflow_uri,
        args.out,
        args.include_pruned,
        not args.no_log,
        tuple(args.baseline),
    )
    print(md.read_text())
    print(f"[kdsweep] report: {md}" + ("" if args.no_log else " (logged on the parent run)"))
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(PROJECT_DIR))  # runnable without installing
    sys.exit(main())
