"""GPU: fractional-GPU packing, autocast precision and VRAM per trial (needs CUDA).

    python bench/gpu.py [--quick]

Without CUDA it prints "no GPU here: skipped" and exits 0. With CUDA:

- packing: the same 4 soft-KD trials (T in {1, 2, 4, 8}) as `sweeps/temperature.py --no-asha
  --no-test` with `--gpus-per-trial 0.25` (4 at a time on one card) vs `--gpus-per-trial 1`
  (one at a time), 2 CPUs per trial; ratio = one-at-a-time wall / packed wall (throughput gain);
- precision: one trial with `precision=bf16` and one with `precision=fp16` (autocast; fp16 with
  a grad scaler) vs `fp32`, interleaved; ratio = mean epoch_seconds of fp32 / of bf16|fp16;
- VRAM: `torch.cuda.max_memory_allocated()` of one trial per precision (and of the naive trial
  that holds and runs the teacher), reported in MB.

No goals are set for this machine-dependent benchmark: its rows are informational.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

SKIP = "no GPU here: skipped"


def cuda_available() -> bool:
    import torch

    return torch.cuda.is_available() and torch.cuda.device_count() > 0


def trial_on_gpu(variant: str, cfg: dict) -> dict:
    """One trial in this process on the GPU; epoch time and peak VRAM (MB)."""
    import kd_overhead
    import torch

    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    res = kd_overhead.run_variant(variant, cfg, cpus=2)
    torch.cuda.synchronize()
    res["vram_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return res


def run(quick: bool = False, rounds: int | None = None) -> list[common.Result]:
    if not cuda_available():
        print(SKIP)
        return [common.Result("gpu", "fractional GPUs, bf16/fp16, VRAM", None, "", None, SKIP)]
    rounds = rounds or (1 if quick else 3)
    cfg = common.base_config(quick, device="cuda")
    common.ensure_teacher(quick)
    work = common.bench_dir("gpu")
    import torch

    print(f"gpu: {torch.cuda.get_device_name(0)}, {cfg['student']}, {rounds} round(s)")

    # ---- precision + VRAM (in process, interleaved)
    precs = ["fp32", "bf16", "fp16"]
    speed = {p: [] for p in precs if p != "fp32"}
    vram: dict[str, list[float]] = {p: [] for p in [*precs, "naive fp32"]}
    for i in range(rounds):
        order = precs if i % 2 == 0 else precs[::-1]
        got = {p: trial_on_gpu("soft", {**cfg, "precision": p}) for p in order}
        for p in precs:
            vram[p].append(got[p]["vram_mb"])
        for p in speed:
            speed[p].append(got["fp32"]["epoch_seconds"] / got[p]["epoch_seconds"])
        vram["naive fp32"].append(trial_on_gpu("naive", cfg)["vram_mb"])
    rows = [
        common.Result(
            "gpu",
            f"{p} autocast speed-up vs fp32 (epoch time)",
            common.median(speed[p]),
            "",
            None,
        )
        for p in speed
    ]
    rows.append(
        common.Result(
            "gpu",
            "VRAM per trial (max_memory_allocated)",
            None,
            "",
            None,
            ", ".join(f"{p} {common.median(v):.0f} MB" for p, v in vram.items()),
            shown=f"{common.median(vram['fp32']):.0f} MB",
        )
    )

    # ---- packing: 4 trials x 0.25 GPU vs 1 trial at a time (sweeps, as a user runs them)
    walls: dict[float, list[float]] = {0.25: [], 1.0: []}
    for i in range(1 if quick else 2):
        for share in (0.25, 1.0) if i % 2 == 0 else (1.0, 0.25):
            name = f"gpu-{share:g}-{i}"
            flags = ["--no-asha", "--no-test", "--gpus-per-trial", f"{share:g}"]
            flags += ["--cpus-per-trial", "2"]
            cmd = common.sweep_command("temperature", cfg, work, name, *flags)
            walls[share].append(common.run_logged(cmd, work / f"{name}.log", work))
    gain = common.median(walls[1.0]) / common.median(walls[0.25])
    rows.append(
        common.Result(
            "gpu",
            "4 trials x 0.25 GPU vs 1 at a time, throughput",
            gain,
            "",
            None,
            f"walls (s): packed {common.median(walls[0.25]):.0f}, "
            f"one at a time {common.median(walls[1.0]):.0f}",
        )
    )
    return rows


def main(argv: list[str] | None = None) -> list[common.Result]:
    common.setup_env()
    p = common.parser(__doc__)
    p.add_argument("--rounds", type=int, help="interleaved repeats (default 3, quick 1)")
    args = p.parse_args(argv)
    results = run(args.quick, args.rounds)
    common.finish(results, args.json)
    return results


if __name__ == "__main__":
    main()
