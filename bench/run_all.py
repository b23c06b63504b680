"""Run every benchmark and print one table: benchmark, ratio, goal, pass/fail.

    python bench/run_all.py [--quick] [--only kd_overhead,memory]     (= make bench)

Each benchmark runs as its own process (`python bench/<name>.py`, runnable alone too) so Ray,
torch threads and peak memory never leak from one into the next. All of them share one cache
($KDSWEEP_HOME, default /tmp/kdsweep-bench/cache): the teacher is fine-tuned once, on the first
run (a few minutes on 2 cores), and reused afterwards.

Only ratios measured side by side in one run (interleaved variants, medians) are reported:
absolute times on a shared machine are noise. Exit status: 0 when every benchmark ran (whether
or not it met its goal), 1 when one crashed.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from dataclasses import fields
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

BENCHES = ["kd_overhead", "memory", "scale", "orchestration", "asha_vs_grid", "peer_hf_trainer"]
BENCHES += ["gpu"]


def main(argv: list[str] | None = None) -> int:
    common.setup_env()
    p = common.parser(__doc__)
    p.add_argument("--only", help="comma-separated subset of: " + ", ".join(BENCHES))
    args = p.parse_args(argv)
    names = args.only.split(",") if args.only else BENCHES
    unknown = set(names) - set(BENCHES)
    if unknown:
        p.error(f"unknown benchmark(s): {', '.join(sorted(unknown))}")

    t_all = time.perf_counter()
    print(f"[bench] cache {common.cache_home()}; preparing data + teacher")
    common.ensure_teacher(args.quick)
    results: list[common.Result] = []
    crashed = False
    keys = {f.name for f in fields(common.Result)}
    for name in names:
        out = Path(common.BENCH_HOME) / f"result_{name}.json"
        out.unlink(missing_ok=True)
        cmd = [sys.executable, str(Path(__file__).resolve().parent / f"{name}.py")]
        cmd += ["--json", str(out)] + (["--quick"] if args.quick else [])
        print(f"\n[bench] ==== {name} ====", flush=True)
        t0 = time.perf_counter()
        rc = subprocess.run(cmd, env=common.child_env(), cwd=common.ROOT).returncode
        took = time.perf_counter() - t0
        print(f"[bench] {name}: {took:.0f} s", flush=True)
        if rc != 0 or not out.is_file():
            crashed = True
            results.append(
                common.Result(name, "crashed", None, "", False, f"exit {rc}; see output above")
            )
            continue
        results += [
            common.Result(**{k: v for k, v in r.items() if k in keys})
            for r in json.loads(out.read_text())
        ]

    total = time.perf_counter() - t_all
    print(f"\n[bench] all done in {total / 60:.1f} min ({'quick' if args.quick else 'full'})\n")
    print(common.format_table(results))
    if args.json:
        Path(args.json).write_text(json.dumps([r.__dict__ for r in results], indent=1))
    return 1 if crashed else 0


if __name__ == "__main__":
    sys.exit(main())
