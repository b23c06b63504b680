"""LM distillation costs, as ratios measured in one run (absolute times on shared cores are noise).

    python bench/lm_speed.py [--teacher smollm2] [--repeats 2]

1. epoch time of `kd` (forward KL from the memory-mapped top-k cache) / `independent`
   (goal <= 1.15x), and of `on_policy` (lmbda 0.5: half the batches sampled by the student and
   scored by the live teacher) / `kd`, stated: on the teacher's real vocabulary (default: the
   SmolLM2-135M GGUF, 49,152 tokens), a 2-layer/128 student, 32 blocks of 64 tokens, 1 thread,
   variants interleaved, each in a fresh process, the median of the repeats' last epochs;
2. the cache's bytes per token against fp16 logits over the whole vocabulary;
3. peak private (anonymous) memory of a `kd` trial as the corpus grows 16x (125 -> 2,000
   fortunes; goal <= 1.5x): on the tiny test teacher (the trial's data path does not depend on
   the teacher's size, and 4,000 fortunes through the real teacher take ~15 min on 2 cores).
   Sampled from /proc/self/smaps_rollup every 50 ms: memory-mapped cache pages are file-backed
   and shared between trials, so they are not private memory.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

SPEED = {
    "task": "lm",
    "max_docs": 400,
    "block_size": 64,
    "data_subset": 32,
    "eval_subset": 4,
    "topk": 16,
    "student": "L2-H128",
    "epochs": 2,
    "batch_size": 16,
    "threads": 1,
    "continuation_tokens": 0,
    "divergence": "forward_kl",
}
ON_POLICY = {"divergence": "forward_kl", "alpha": 0.5, "lmbda": 0.5, "prompt_tokens": 16,
             "new_tokens": 48}  # fmt: skip
DOCS = (125, 2000)  # the corpus grows 16x
MEMORY = {**SPEED, "data_subset": 0, "epochs": 1, "student": "L2-H64"}


def child(condition: str, cfg: dict) -> None:
    """One trial in this process; prints its epoch times and peak anonymous memory."""
    from trainables.registry import run_trial
    from trainables.tune_io import local_session

    peak = [0]

    def sample() -> None:
        while True:
            peak[0] = max(peak[0], _anon_kb())
            time.sleep(0.05)

    threading.Thread(target=sample, daemon=True).start()
    Path(common.BENCH_HOME).mkdir(parents=True, exist_ok=True)
    with (
        tempfile.TemporaryDirectory(prefix=f"lm-{condition}-", dir=common.BENCH_HOME) as tmp,
        local_session(Path(tmp)) as s,  # per-epoch checkpoints (~150 MB each) go with it
    ):
        run_trial({**cfg, "condition": condition})  # drops the keys a condition lacks
    out = {"epoch_seconds": [r["epoch_seconds"] for r in s.results],
           "peak_anon_mb": max(peak[0], _anon_kb()) / 1024, "last": s.results[-1]}  # fmt: skip
    print("RESULT", json.dumps(out, default=float))


def _anon_kb() -> int:
    for line in Path("/proc/self/smaps_rollup").read_text().splitlines():
        if line.startswith("Anonymous:"):
            return int(line.split()[1])
    return 0


def run(condition: str, cfg: dict) -> dict:
    cmd = [sys.executable, __file__, "--child", condition, json.dumps(cfg)]
    res = subprocess.run(cmd, capture_output=True, text=True, env=common.child_env(1),
                         cwd=common.BENCH_HOME)  # fmt: skip
    line = next((ln for ln in res.stdout.splitlines() if ln.startswith("RESULT")), None)
    if res.returncode != 0 or line is None:
        raise RuntimeError(f"{condition} failed:\n{res.stdout[-2000:]}{res.stderr[-3000:]}")
    return json.loads(line.split(" ", 1)[1])


def prepare(cfg: dict, conditions: tuple[str, ...]) -> dict:
    """Teacher + cache (+ nothing else) built once, outside the timed children."""
    from trainables.lm.loop import prepare_lm
    from trainables.registry import config_for

    for cond in conditions:
        data = prepare_lm(config_for({**cfg, "condition": cond}), log=print)
    return {"bytes_per_token": data.cache.bytes_per_token,
            "full_fp16_bytes_per_token": 2 * int(data.teacher.meta["vocab"])}  # fmt: skip


def main() -> None:
    common.setup_env()
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--teacher", default="smollm2", help="speed part's teacher")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--cache-dir", default="", help="default: the benchmarks' own cache")
    p.add_argument("--no-memory", action="store_true", help="only the speed part")
    p.add_argument("--out", type=Path, default=Path(common.BENCH_HOME) / "lm_speed.json")
    args = p.parse_args()
    speed = {**SPEED, "teacher": args.teacher, "cache_dir": args.cache_dir}
    sizes = prepare(speed, ("kd", "on_policy"))
    times: dict[str, list[float]] = {"independent": [], "kd": [], "on_policy": []}
    for _ in range(args.repeats):  # interleaved: the machine's load hits every variant alike
        for cond in times:
            cfg = {**speed, **(ON_POLICY if cond == "on_policy" else {})}
            times[cond].append(run(cond, cfg)["epoch_seconds"][-1])
    med = {k: statistics.median(v) for k, v in times.items()}
    memory = {"memory_ratio": float("nan")} if args.no_memory else memory_growth(args.cache_dir)
    result = {
        "kd_over_independent": med["kd"] / med["independent"],
        "on_policy_over_kd": med["on_policy"] / med["kd"],
        "epoch_seconds": times,
        **sizes,
        "cache_saving": sizes["full_fp16_bytes_per_token"] / sizes["bytes_per_token"],
        **memory,
    }
    args.out.write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))
    print(f"kd / independent epoch: {result['kd_over_independent']:.2f}x (goal <= 1.15x); "
          f"on_policy (lmbda 0.5) / kd: {result['on_policy_over_kd']:.2f}x; cache "
          f"{sizes['bytes_per_token']:.0f} vs {sizes['full_fp16_bytes_per_token']} bytes/token "
          f"({result['cache_saving']:.0f}x smaller); peak private memory x16 corpus: "
          f"{memory['memory_ratio']:.2f}x (goal <= 1.5x)")  # fmt: skip


def memory_growth(cache_dir: str) -> dict:
    """Peak anonymous memory of a kd trial on 125 vs 2,000 documents (tiny teacher)."""
    from kdsweep.lm.tiny import build_tiny_teacher

    tiny = Path(common.BENCH_HOME) / "tiny-lm-teacher"
    if not (tiny / "config.json").is_file():
        build_tiny_teacher(tiny)
    out = {}
    for docs in DOCS:
        cfg = {**MEMORY, "teacher": str(tiny), "max_docs": docs, "cache_dir": cache_dir}
        prepare(cfg, ("kd",))
        r = run("kd", cfg)
        out[f"peak_anon_mb_{docs}_docs"] = r["peak_anon_mb"]
        out[f"train_rows_{docs}_docs"] = r["last"]["train_rows"]
    out["memory_ratio"] = out[f"peak_anon_mb_{DOCS[1]}_docs"] / out[f"peak_anon_mb_{DOCS[0]}_docs"]
    return out


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        common.setup_env()
        child(sys.argv[2], json.loads(sys.argv[3]))
    else:
        main()
