"""GPU packing by memory, driver side: after preparation, before Ray starts.

    res = fit_gpu_share(plan, res)   # res["gpu"]: "auto" -> a share; a share: checked

On a local Ray with a visible GPU, one trial's peak GPU memory is measured by a short probe
(`trainables.probe`, in a child process so the driver holds no CUDA context), then the free and
total memory of the card; `auto` runs as many trials at a time as fit (`kdsweep.gpu.plan_packing`),
an explicit share that cannot fit is a KDSweepError before any trial (`check_share`). The
probed trial is the heaviest the space holds: the largest batch_size, max_len, student and the
condition that reads the most teacher outputs.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

from driver.plan import SweepPlan
from driver.space import SweepSpace, representative_values
from kdsweep.gpu import check_share, device_memory, gib, plan_packing, run_isolated

# Dimensions whose largest value is the most memory a trial needs.
LARGEST = ("batch_size", "max_len", "hidden", "layers", "n_utterances")


def fit_gpu_share(plan: SweepPlan, res: dict[str, Any]) -> dict[str, float]:
    """`res` with the GPU share measured (`auto`) or checked (an explicit share)."""
    gpu = res["gpu"]
    if gpu == 0 or plan.address:
        return {**res, "gpu": float(gpu)}
    peak, free, total = measure(probe_config(plan.space))
    if gpu == "auto":
        cap = max_trials(plan, res["cpu"])
        plan = plan_packing(peak, free, total, max_trials=cap)
        print(f"[kdsweep] {plan.message}: --gpus-per-trial {plan.share:g}")
        return {**res, "gpu": plan.share}
    n = check_share(float(gpu), peak, total, free)
    print(f"[kdsweep] {n} trial(s) x {gib(peak)} fit the card at --gpus-per-trial {gpu:g}")
    return {**res, "gpu": float(gpu)}


def measure(config: dict[str, Any]) -> tuple[int, int, int]:
    """(peak bytes of one trial, free bytes, total bytes) of GPU 0, each in a child process:
    the free memory is read after the probe's process (and its memory) is gone."""
    from trainables.probe import probe_peak

    peak = run_isolated(probe_peak, config)
    free, total = run_isolated(device_memory, "cuda:0")
    return int(peak), int(free), int(total)


def probe_config(space: SweepSpace) -> dict[str, Any]:
    """The trial config of the space that needs the most memory (see the module doc)."""
    from kdsweep.text.models import parse_size

    cfg: dict[str, Any] = dict(space.fixed)
    for key, (kind, args) in space.dists.items():
        values = representative_values(kind, args)
        if key in LARGEST:
            cfg[key] = max(values)
        elif key == "student":
            cfg[key] = max(values, key=lambda s: parse_size(s)[0] * parse_size(s)[1])
        else:
            cfg[key] = values[0]
    if space.dists.get("batch_size", ("", []))[0] == "randint":
        cfg["batch_size"] = int(cfg["batch_size"])
    best, score = space.conditions[0], -1
    for cond in space.conditions:
        cls = space.config_class(cond)
        needs = cls.from_dict({k: v for k, v in cfg.items() if k in cls.field_names()}).needs
        n = sum(bool(getattr(needs, f.name)) for f in dataclasses.fields(needs))
        if n > score:
            best, score = cond, n
    cls = space.config_class(best)
    out = {k: v for k, v in cfg.items() if k in cls.field_names()}
    return {**out, "task": space.task, "condition": best}


def max_trials(plan: SweepPlan, cpu: float) -> int:
    """At most as many trials at a time as the sweep has (`plan.n_trials`), and the CPUs allow."""
    return max(1, min(plan.n_trials, int((os.cpu_count() or 1) // cpu)))
