"""Shared settings and helpers of the benchmarks in bench/.

Every benchmark compares variants measured side by side in one run (interleaved, repeated,
medians), because absolute times on a shared 2-core machine are noise; only ratios are reported.

The data/teacher settings below are the same for every benchmark, so the teacher is fine-tuned
once into a separate cache ($KDSWEEP_HOME, default /tmp/kdsweep-bench) and reused by all of them.
`--quick` trains on fewer examples (`data_subset`) for fewer epochs: same data and teacher.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # runnable as `python bench/<name>.py` without installing

BENCH_HOME = os.environ.get("KDSWEEP_BENCH_HOME", "/tmp/kdsweep-bench")
ENV_DEFAULTS = {
    "KDSWEEP_HOME": str(Path(BENCH_HOME) / "cache"),  # a cache of its own, not ./.kdsweep
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "PYTHONUNBUFFERED": "1",
}


def setup_env() -> None:
    """Environment defaults of a benchmark process (its main() calls this; importing doesn't)."""
    for k, v in ENV_DEFAULTS.items():
        os.environ.setdefault(k, v)
    from driver import ray_auth

    ray_auth.configure(None)  # token auth on (0600 token file) for any Ray a benchmark starts
    Path(BENCH_HOME).mkdir(parents=True, exist_ok=True)


def cache_home() -> str:
    return os.environ.get("KDSWEEP_HOME") or ENV_DEFAULTS["KDSWEEP_HOME"]


# Data + teacher: identical in every benchmark (one teacher in the store for all of them).
DATA = {
    "task": "text",
    "dataset": "fortunes",
    "per_class": 200,  # 6 topics -> 960 train / 120 dev / 120 test
    "max_len": 64,
    "teacher": "minilm",
    "teacher_epochs": 3,
    "teacher_lr": 1e-4,
}
# Student + training recipe (the temperature sweep's, with the per-trial analysis probe off:
# it is identical for every variant and not what these benchmarks measure).
STUDENT = {
    "student": "L2-H128",
    "student_init": "random",
    "lr": 1e-3,
    "batch_size": 32,
    "epochs": 3,
    "alpha": 0.9,
    "temperature": 4.0,
    "attribution_examples": 0,
}
QUICK = {"data_subset": 256, "epochs": 2}


def base_config(quick: bool = False, **overrides: Any) -> dict[str, Any]:
    """A soft-KD trial config dict (task/condition included) with the bench settings."""
    cfg = {**DATA, **STUDENT, "condition": "soft", "cache_dir": cache_home()}
    if quick:
        cfg.update(QUICK)
    cfg.update(overrides)
    return cfg


def config_fields(cfg: dict[str, Any], condition: str) -> dict[str, Any]:
    """Only the keys the condition's typed config accepts (e.g. no alpha for independent)."""
    from trainables.registry import config_class

    cls = config_class(cfg.get("task", "text"), condition)
    keep = cls.field_names() | {"task", "condition"}
    return {k: v for k, v in cfg.items() if k in keep} | {"condition": condition}


def ensure_teacher(quick: bool = False, log: Callable[[str], None] = print) -> Any:
    """Tokenize the data and fine-tune the teacher once (cached); returns the TextData."""
    from trainables.text.config import TextConfig
    from trainables.text.loop import prepare_text

    cfg = config_fields(base_config(quick), "independent")
    t0 = time.perf_counter()
    data = prepare_text(TextConfig.from_dict(cfg), log=lambda m: log(f"  {m}"))
    if not data.teacher_hit:
        log(f"  teacher fine-tuned once in {time.perf_counter() - t0:.0f} s (cached from now on)")
    return data


# ---------------------------------------------------------------- results
@dataclass
class Result:
    """One row of the final table: a ratio, its goal and whether it was met."""

    bench: str
    name: str
    ratio: float | None  # None = informational / skipped
    goal: str  # e.g. "<= 1.10x"; "" = informational
    passed: bool | None  # None = no goal (informational) or skipped
    detail: str = ""
    shown: str = ""  # what the ratio column shows instead of the ratio (e.g. "+0.83 pt")


def check(value: float, op: str, bound: float) -> bool:
    return value <= bound if op == "<=" else value >= bound


def median(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def parser(doc: str | None) -> argparse.ArgumentParser:
    """The CLI every benchmark shares (and the place its process environment is set up)."""
    setup_env()
    p = argparse.ArgumentParser(
        description=(doc or "").strip().splitlines()[0] if doc else None,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--quick", action="store_true", help="fewer examples/epochs/repeats")
    p.add_argument("--json", help="also write the results as JSON here (used by run_all.py)")
    return p


def finish(results: list[Result], json_path: str | None) -> None:
    """Print this benchmark's rows and (for run_all.py) write them as JSON."""
    print(format_table(results))
    if json_path:
        Path(json_path).write_text(json.dumps([asdict(r) for r in results], indent=1))


def format_table(results: list[Result]) -> str:
    rows = [("benchmark", "ratio", "goal", "result")]
    for r in results:
        ratio = r.shown or ("-" if r.ratio is None else f"{r.ratio:.2f}x")
        verdict = {True: "PASS", False: "FAIL", None: "info"}[r.passed]
        if r.ratio is None and not r.goal:
            verdict = "skip" if "skip" in r.detail else "info"
        rows.append((f"{r.bench}: {r.name}", ratio, r.goal or "-", verdict))
    w = [max(len(row[i]) for row in rows) for i in range(4)]
    lines = ["  ".join(c.ljust(w[i]) for i, c in enumerate(row)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * x for x in w))
    notes = [f"  {r.bench}: {r.name}: {r.detail}" for r in results if r.detail]
    return "\n".join(lines + (["notes:"] + notes if notes else []))


@contextmanager
def timed(store: list[float]) -> Iterator[None]:
    t0 = time.perf_counter()
    try:
        yield
    finally:
        store.append(time.perf_counter() - t0)


def bench_dir(name: str) -> Path:
    """A fresh scratch directory for one benchmark run (under BENCH_HOME)."""
    import shutil

    path = Path(BENCH_HOME) / "work" / name
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    return path


def child_env(threads: int | None = None) -> dict[str, str]:
    """Environment for subprocesses (sweeps, plain loops): same cache, quiet, offline."""
    setup_env()
    env = dict(os.environ)
    env.pop("RAY_ADDRESS", None)
    env.pop("MLFLOW_TRACKING_URI", None)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH", "")]))
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    return env


# ---------------------------------------------------------------- sweeps as a user runs them
SWEEP_KEYS = ("per_class", "max_len", "teacher", "teacher_epochs", "teacher_lr", "student")
SWEEP_KEYS += ("student_init", "lr", "batch_size", "epochs", "alpha", "attribution_examples")
SWEEP_KEYS += ("data_subset", "dataset")


def sweep_overrides(cfg: dict[str, Any], skip: tuple[str, ...] = ()) -> list[str]:
    """`key=value` overrides that make a sweep script train exactly `cfg`'s trials."""
    return [f"{k}={cfg[k]}" for k in SWEEP_KEYS if k in cfg and k not in skip]


def sweep_command(
    script: str, cfg: dict[str, Any], work: Path, name: str, *flags: str, skip=()
) -> list[str]:
    """`python sweeps/<script>.py ...` writing its results and MLflow db under `work`."""
    return [
        sys.executable,
        str(ROOT / "sweeps" / f"{script}.py"),
        *sweep_overrides(cfg, skip),
        "--name",
        name,
        "--storage",
        str(work / "runs"),
        "--mlflow-uri",
        f"sqlite:///{work / 'mlruns.db'}",
        *flags,
    ]


def run_logged(cmd: list[str], log: Path, cwd: Path, timeout: float = 1800) -> float:
    """Run a command (output to `log`), fail loudly on error; returns its wall seconds."""
    import subprocess

    t0 = time.perf_counter()
    with log.open("w") as f:
        proc = subprocess.run(
            cmd, stdout=f, stderr=subprocess.STDOUT, env=child_env(), cwd=cwd, timeout=timeout
        )
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        tail = "".join(log.read_text().splitlines(keepends=True)[-40:])
        raise RuntimeError(f"{' '.join(cmd[:3])} ... exited {proc.returncode}:\n{tail}")
    return wall


def read_trials(sweep_dir: Path) -> list[dict[str, str]]:
    """A finished sweep's trials.csv (one row per trial: metric, epochs, status)."""
    import csv

    with (sweep_dir / "trials.csv").open() as f:
        return list(csv.DictReader(f))
