"""Memory: peak RSS of a soft-KD trial with cached teacher logits vs one that runs the teacher.

    python bench/memory.py [--quick]

Each trial runs alone in a fresh child process (`local_session`, 1 thread); the child reports
its own peak resident set size (`resource.getrusage(RUSAGE_SELF).ru_maxrss`) at exit:

- cached: kdsweep's soft trial (reads the teacher store's logits; the teacher is never loaded);
- naive: the same loss with the teacher model held in the trial and run every step
  (bench/kd_overhead.py's `naive_soft`);
- independent: the same student on labels only (the floor: Python + torch + transformers + data).

Goal: cached / naive < 1.00x (the cache must not cost memory; it should save the teacher).
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

GOAL = ("<=", 0.99)
VARIANTS = ("independent", "soft", "naive")


def child(variant: str, cfg: dict) -> None:
    import kd_overhead

    kd_overhead.run_variant(variant, cfg)
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    print("PEAK_RSS_MB", json.dumps(peak_kb / 1024))


def measure(variant: str, cfg: dict) -> float:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", variant, json.dumps(cfg)]
    res = subprocess.run(
        cmd, capture_output=True, text=True, env=common.child_env(1), cwd=common.BENCH_HOME
    )
    line = next((ln for ln in res.stdout.splitlines() if ln.startswith("PEAK_RSS_MB")), None)
    if res.returncode != 0 or line is None:
        raise RuntimeError(
            f"memory child {variant} failed:\n{res.stdout[-2000:]}{res.stderr[-3000:]}"
        )
    return float(line.split()[1])


def run(quick: bool = False) -> list[common.Result]:
    cfg = common.base_config(quick, epochs=1)
    common.ensure_teacher(quick)
    print(f"memory: peak RSS of one 1-epoch trial per child process, {cfg['student']}")
    mb = {v: measure(v, cfg) for v in VARIANTS}
    print("  peak RSS MB: " + ", ".join(f"{v} {mb[v]:.0f}" for v in VARIANTS))
    r = mb["soft"] / mb["naive"]
    return [
        common.Result(
            "memory",
            "peak RSS: soft KD cached / naive (holds teacher)",
            r,
            "< 1.00x",
            common.check(r, *GOAL),
            f"peak RSS MB: independent {mb['independent']:.0f}, cached {mb['soft']:.0f}, "
            f"naive {mb['naive']:.0f} (teacher costs +{mb['naive'] - mb['soft']:.0f} MB)",
        )
    ]


def main(argv: list[str] | None = None) -> list[common.Result] | None:
    common.setup_env()
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--child"]:
        child(argv[1], json.loads(argv[2]))
        return None
    args = common.parser(__doc__).parse_args(argv)
    results = run(args.quick)
    common.finish(results, args.json)
    return results


if __name__ == "__main__":
    main()
