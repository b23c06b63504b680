"""Reading a sweep back from MLflow: its parent run, the child trials, grouped into configs."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from driver.labels import label
from driver.reporting.stats import mean_ci

BASELINE = "independent"
# Keys that never define a config: the seed is what we aggregate over; the rest is bookkeeping.
NOT_CONFIG = {"seed", "student", "condition", "task", "cache_dir", "threads", "device"}
# (metric key, column title, higher is better)
PRIMARY = {
    "text": [("dev_accuracy", "accuracy", True), ("dev_f1", "F1", True)],
    "asr": [("dev_wer", "WER", False), ("dev_cer", "CER", False)],
    "lm": [("dev_perplexity", "perplexity", False), ("dev_kl", "KL(teacher||student)", False)],
}
INCL_TEACHER = "train_seconds_incl_teacher"  # derived by budget.add_teacher_cost
EXTRA = [
    ("attr_cosine", "attr cos"),
    ("attr_spearman", "attr rho"),
    ("train_seconds", "train s"),
    (INCL_TEACHER, "train s (incl. teacher)"),
    ("throughput", "ex/s"),
    ("latency_ms", "ms/batch"),
    ("size_mb", "MB"),
    ("params", "params (M)"),
]


def primary(task: str) -> list[tuple[str, str, bool]]:
    """(metric, title, higher is better) of the task's main dev metrics, the first one first."""
    return PRIMARY.get(task, PRIMARY["text"])


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
    tags: dict[str, str] = field(default_factory=dict)


@dataclass
class Group:
    """One config: the trials that differ only by seed."""

    condition: str
    student: str
    key: tuple[tuple[str, str], ...]  # the varied params (not seed/student/condition)
    trials: list[Trial] = field(default_factory=list)

    @property
    def label(self) -> str:
        return self.label_without()

    def label_without(self, param: str = "") -> str:
        """The label, leaving out `param` (and params this config did not log)."""
        return label(
            self.condition, [(k, v) for k, v in self.key if v != "" and k != param], self.student
        )

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
    parent_tags: dict[str, str] = field(default_factory=dict)  # teacher metrics, seconds
    pruned: list[Trial] = field(default_factory=list)  # pruned by ASHA and not counted


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
    """The MLflow experiment of sweep `name` (`kdsweep/<name>`, or `name` itself)."""
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


def as_float(v: str) -> float | None:
    """The number a logged param holds, or None."""
    try:
        return float(v)
    except (TypeError, ValueError):
        return None


def _fmt_param(v: str) -> str:
    f = as_float(v)
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
    # The confirm stage's reruns (fresh seeds, full length) have their own answer: confirm.md.
    confirm = [c for c in children if c.data.tags.get("kdsweep.stage") == "confirm"]
    children = [c for c in children if c.data.tags.get("kdsweep.stage") != "confirm"]
    trials, excluded, pruned = _trials(children, task, include_pruned)
    if confirm:
        excluded["confirm-stage runs (their answer is the sweep's confirm.md)"] = len(confirm)
    keys = sorted({k for t in trials for k in t.params} - NOT_CONFIG)
    # Varied = takes two values among the trials that have it: a key only some conditions log
    # (temperature, transfer_ratio for the independent arm of a --baseline sweep) is not a
    # difference by itself.
    varied = [k for k in keys if len({t.params[k] for t in trials if k in t.params}) > 1]
    return Sweep(
        exp.name.removeprefix("kdsweep/"),
        exp.experiment_id,
        exp.name,
        parent.info.run_id,
        task,
        trials,
        excluded,
        varied,
        group_trials(trials, varied),
        dict(parent.data.tags),
        pruned,
    )


def _trials(
    children: list, task: str, include_pruned: bool
) -> tuple[list[Trial], dict, list[Trial]]:
    """The trials that count (FINISHED, with a dev metric, not pruned unless asked), how
    many of each kind were left out, and the pruned trials left out (for the budget check)."""
    trials, excluded, left_pruned = [], defaultdict(int), []
    for r in children:
        if r.info.status != "FINISHED":
            excluded[r.info.status.lower()] += 1
            continue
        trial = _trial(r)
        if trial.pruned and not include_pruned:
            excluded["pruned by ASHA"] += 1
            left_pruned.append(trial)
        elif primary(task)[0][0] not in trial.metrics:
            excluded["no dev metric"] += 1
        else:
            trials.append(trial)
    return trials, dict(excluded), left_pruned


def _trial(r) -> Trial:
    tags, params = r.data.tags, r.data.params
    return Trial(
        run_id=r.info.run_id,
        name=r.info.run_name or r.info.run_id[:8],
        condition=tags.get("condition") or params.get("condition", "?"),
        student=tags.get("student") or params.get("student", ""),
        seed=int(as_float(params.get("seed", "0")) or 0),
        params=dict(params),
        metrics=dict(r.data.metrics),
        status=r.info.status,
        pruned=tags.get("stopped_by") == "asha",
        tags=dict(tags),
    )


def group_trials(trials: list[Trial], varied: list[str]) -> list[Group]:
    """Configs: baseline first per student, then by condition and the varied values."""
    by_key: dict[tuple, Group] = {}
    for t in trials:
        key = tuple((k, _fmt_param(t.params.get(k, ""))) for k in varied)
        g = by_key.setdefault((t.condition, t.student, key), Group(t.condition, t.student, key))
        g.trials.append(t)
    return sorted(
        by_key.values(),
        key=lambda g: (
            g.student,
            g.condition != BASELINE,
            g.condition,
            [_sort(v) for _, v in g.key],
        ),
    )


def _sort(v: str) -> tuple:
    f = as_float(v)
    return (0, f, "") if f is not None else (1, 0.0, v)
