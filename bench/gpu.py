"""GPU: memory probe, `auto` packing vs what fits, packing throughput, precision, OOM recovery.

    python bench/gpu.py [--quick] [--no-sweeps]

Without CUDA it prints one line, "no GPU here: skipped", and exits 0. With CUDA, in this order
(each measurement printed as it is made; a failing part prints FAILED and the rest still runs;
meant to finish in under 5 minutes):

1. probe: peak GPU memory of one default-student trial step (L2-H128, batch 32 x 64 tokens,
   AdamW) per precision (fp32 / bf16 / fp16) with `kdsweep.gpu.probe_peak_memory`, and the
   measured per-process overhead (CUDA context) beside the estimate the probe adds;
2. precision: step time fp32 / bf16 and fp32 / fp16 (autocast, fp16 with a grad scaler),
   interleaved rounds, same synthetic batches;
3. auto packing: `plan_packing` on the probed fp32 peak and the card's free memory, against
   what fits: k worker processes (k = min(plan, 4)) train at once while the card's used memory
   is polled; measured bytes per process vs the planned per-trial bytes (<= 1: the plan is safe);
4. packing throughput (processes): the same 4 workers one after another vs all at once, steady
   training only (a barrier excludes start-up): sum of the sequential walls / the packed wall;
5. induced OOM: the card is filled until a batch of 256 x 256 tokens no longer fits; the
   `kdsweep.oom` path (is_cuda_oom, record_oom, release_gpu_memory, resume_batch) halves the
   batch and doubles the accumulation until a step succeeds;
6. packing throughput (sweeps, unless --no-sweeps): `sweeps/temperature.py --no-asha --no-test`
   (4 soft-KD trials) at `--gpus-per-trial 0.25` vs `1`, as a user runs it (teacher fine-tuned
   once first); goal >= 2.5x.

The last line is a summary: `gpu: packing_ratio=... sweep_ratio=... auto=... fits=... ...`.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import sys
import tempfile
import threading
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

SKIP = "no GPU here: skipped"
# Where the student trains: "cuda" (a dry run of the logic on "cpu" is for developing this file).
DEVICE = os.environ.get("KDSWEEP_GPU_BENCH_DEVICE", "cuda")
GOAL = (">=", 2.5)
MiB = 2**20
BATCH, SEQ, LABELS = 32, 64, 6


def cuda_available() -> bool:
    import torch

    return torch.cuda.is_available() and torch.cuda.device_count() > 0


def say(msg: str) -> None:
    print(f"gpu: {msg}", flush=True)


# ---------------------------------------------------------------- the default student, one step
def student_step(precision: str = "fp32", batch: int = BATCH, seq: int = SEQ):
    """(model, step(bs, accum)) of the default student on synthetic batches, on cuda:0."""
    import torch
    import torch.nn.functional as F
    from transformers import AutoConfig

    from kdsweep.text.models import build_student, resolve_backbone

    tcfg = AutoConfig.from_pretrained(resolve_backbone(common.DATA["teacher"]))
    model = build_student(common.STUDENT["student"], tcfg, num_labels=LABELS).to(DEVICE)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1000, tcfg.vocab_size, (batch, seq), generator=g).to(DEVICE)
    labels = torch.randint(0, LABELS, (batch,), generator=g).to(DEVICE)
    mask = torch.ones_like(ids)
    amp = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    scaler = torch.amp.GradScaler(DEVICE, enabled=precision == "fp16" and DEVICE == "cuda")

    def step(bs: int = batch, accum: int = 1) -> float:
        opt.zero_grad(set_to_none=True)
        total = 0.0
        for i in range(accum):  # micro-batches of bs rows: the same effective batch
            rows = slice((i * bs) % batch, (i * bs) % batch + bs)
            with torch.autocast(DEVICE, dtype=amp or torch.float32, enabled=amp is not None):
                out = model(input_ids=ids[rows], attention_mask=mask[rows])
                loss = F.cross_entropy(out.logits.float(), labels[rows]) / accum
            scaler.scale(loss).backward()
            total += float(loss.detach())
        scaler.step(opt)
        scaler.update()
        return total

    return model, step


def _sync() -> None:
    import torch

    if DEVICE == "cuda":
        torch.cuda.synchronize()


def probe(precisions: list[str]) -> dict[str, int]:
    from kdsweep.gpu import probe_peak_memory
    from kdsweep.oom import release_gpu_memory

    peaks = {}
    for p in precisions:
        model, step = student_step(p)
        peaks[p] = probe_peak_memory(step, DEVICE)
        say(f"probe {p}: peak {peaks[p] / MiB:.0f} MiB per trial (CUDA context estimate included)")
        del model, step
        release_gpu_memory()
    return peaks


def precision_speed(rounds: int, steps: int) -> dict[str, float]:

    from kdsweep.oom import release_gpu_memory

    times: dict[str, list[float]] = {p: [] for p in ("fp32", "bf16", "fp16")}
    for r in range(rounds):
        for p in list(times) if r % 2 == 0 else list(times)[::-1]:
            model, step = student_step(p)
            for _ in range(10):
                step()
            _sync()
            t0 = time.perf_counter()
            for _ in range(steps):
                step()
            _sync()
            times[p].append((time.perf_counter() - t0) / steps)
            del model, step
            release_gpu_memory()
    ms = {p: common.median(v) * 1e3 for p, v in times.items()}
    say("step ms: " + ", ".join(f"{p} {v:.2f}" for p, v in ms.items()))
    return {p: ms["fp32"] / ms[p] for p in ("bf16", "fp16")}


# ---------------------------------------------------------------- worker processes
def worker(go, out, steps: int) -> None:  # pragma: no cover - runs in a child process
    """Train the default student for `steps` steps once `go` is set; report wall and memory."""
    import torch

    model, step = student_step("fp32")
    for _ in range(5):
        step()
    _sync()
    out.put({"ready": True})
    go.wait(timeout=600)
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    _sync()
    reserved = torch.cuda.max_memory_reserved() if DEVICE == "cuda" else 0
    out.put({"wall": time.perf_counter() - t0, "reserved": reserved})


def _collect(out, procs: list, n: int, timeout: float = 600) -> list[dict]:
    """n messages from the workers; fails at once when a worker died without sending."""
    import queue

    got: list[dict] = []
    deadline = time.time() + timeout
    while len(got) < n:
        try:
            got.append(out.get(timeout=1.0))
        except queue.Empty:
            dead = [p.exitcode for p in procs if p.exitcode not in (None, 0)]
            if dead:
                raise RuntimeError(f"a worker process died (exit {dead[0]})") from None
            if time.time() > deadline:
                raise TimeoutError(f"workers sent {len(got)}/{n} reports in {timeout} s") from None
    return got


def run_workers(k: int, steps: int, together: bool) -> tuple[list[dict], float, int]:
    """k workers at once (or one after another); (reports, training wall, peak card bytes used).

    Each worker builds its model and warms up first; the wall counts training steps only."""
    import torch

    ctx = mp.get_context("spawn")
    out, go = ctx.Queue(), ctx.Event()
    _, total = torch.cuda.mem_get_info()
    peak_used = [0]
    stop = threading.Event()

    def poll() -> None:
        while not stop.is_set():
            free, _ = torch.cuda.mem_get_info()
            peak_used[0] = max(peak_used[0], total - free)
            time.sleep(0.05)

    poller = threading.Thread(target=poll, daemon=True)
    poller.start()
    procs: list = []
    reports: list[dict] = []
    wall = 0.0
    try:
        for _ in range(k if together else 1):
            procs.append(ctx.Process(target=worker, args=(go, out, steps), daemon=True))
        if together:
            for p in procs:
                p.start()
            _collect(out, procs, k)  # all k have built their model and warmed up
            t0 = time.perf_counter()
            go.set()
            reports = _collect(out, procs, k)
            wall = time.perf_counter() - t0
        else:
            go.set()
            for i in range(k):
                p = procs[0] if i == 0 else ctx.Process(target=worker, args=(go, out, steps))
                procs[:] = [p]
                p.start()
                _collect(out, procs, 1)
                reports += _collect(out, procs, 1)
                p.join(60)
                wall += reports[-1]["wall"]
    finally:
        stop.set()
        poller.join()
        for p in procs:
            p.join(30)
            if p.is_alive():
                p.kill()
    return reports, wall, peak_used[0]


def packing(peak: int, steps: int) -> dict[str, Any]:
    import torch

    from kdsweep.gpu import gib, plan_packing

    free, total = torch.cuda.mem_get_info()
    base_used = total - free  # this process's context and whatever else runs on the card
    plan = plan_packing(peak, free, total)
    say(f"auto: {plan.message} (share {plan.share:g}; {free / 2**30:.1f} GiB free)")
    k = min(plan.n_trials, 4)
    seq, seq_wall, _ = run_workers(k, steps, together=False)
    par, par_wall, peak_used = run_workers(k, steps, together=True)
    per_proc = (peak_used - base_used) / k
    fits = int((free - 0.10 * total) // per_proc) if per_proc > 0 else 0
    ratio_mem = per_proc / peak
    say(
        f"fits: {k} workers at once used {gib(peak_used - base_used)} on the card = "
        f"{gib(per_proc)} per process vs {gib(peak)} planned (measured/planned {ratio_mem:.2f}; "
        f"<= 1: the plan is safe) -> {fits} would fit vs {plan.n_trials} planned; allocator "
        f"peak per worker {max(r['reserved'] for r in par) / MiB:.0f} MiB"
    )
    gain = seq_wall / par_wall if par_wall else float("nan")
    say(
        f"packing (processes): {k} x {steps} steps one at a time {seq_wall:.1f} s, at once "
        f"{par_wall:.1f} s -> throughput x{gain:.2f}"
    )
    return {"plan": plan, "k": k, "fits": fits, "mem_ratio": ratio_mem, "proc_gain": gain}


# ---------------------------------------------------------------- induced OOM
def induced_oom() -> str:
    """Fill the card so a 256 x 256 batch no longer fits; recover by halving the batch."""
    import torch

    from kdsweep import oom

    big = 256
    model, step = student_step("fp32", batch=big, seq=256)
    step(1)  # optimizer state allocated; activations of one row only
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    step(big)
    act = torch.cuda.max_memory_allocated() - before  # one full step's transient memory
    oom.release_gpu_memory()
    free, _ = torch.cuda.mem_get_info()
    filler = torch.empty(max(0, int(free - 0.4 * act)), dtype=torch.uint8, device="cuda")
    trail = []
    with tempfile.TemporaryDirectory() as trial_dir:
        try:
            for _ in range(10):  # each pass stands in for one of Tune's retries
                bs, accum = oom.resume_batch(trial_dir, big, 1)
                trail.append(f"{bs}x{accum}")
                try:
                    step(bs, accum)
                    break
                except Exception as exc:
                    if not oom.is_cuda_oom(exc):
                        raise
                    oom.record_oom(trial_dir, bs, accum, exc)
                # out of the except block: the traceback no longer holds the step's tensors
                oom.release_gpu_memory()
        except oom.OutOfMemoryAtBatchOne as e:
            say(f"oom: FAILED to recover: {e}")
            return "failed"
        finally:
            del filler
            oom.release_gpu_memory()
    result = f"recovered at {trail[-1]}" if len(trail) > 1 else "no OOM was induced"
    say(f"oom: transient {act / MiB:.0f} MiB at batch {big}; batch x accum {' -> '.join(trail)}")
    say(f"oom: {result} (effective batch {big} kept)")
    del model, step
    oom.release_gpu_memory()
    return result


# ---------------------------------------------------------------- sweeps as a user runs them
def sweep_packing(quick: bool) -> float:
    cfg = common.base_config(quick, device="cuda")
    common.ensure_teacher(quick, log=lambda m: say(m.strip()))
    work = common.bench_dir("gpu")
    walls: dict[float, float] = {}
    for share in (0.25, 1.0):
        name = f"gpu-{share:g}"
        flags = ["--no-asha", "--no-test", "--gpus-per-trial", f"{share:g}"]
        flags += ["--cpus-per-trial", "2"]
        cmd = common.sweep_command("temperature", cfg, work, name, *flags)
        walls[share] = common.run_logged(cmd, work / f"{name}.log", work, timeout=600)
        say(f"sweep at --gpus-per-trial {share:g}: {walls[share]:.0f} s")
    gain = walls[1.0] / walls[0.25]
    say(f"packing (sweeps): 4 trials x 0.25 vs 1 at a time -> throughput x{gain:.2f}")
    return gain


def summary(peaks: dict, speed: dict, pack: dict | None, oom: str, gain, wall: float) -> str:
    """The last line: every headline number, '-' for what did not run."""

    def f(x: float | None) -> str:
        return "-" if x is None else f"{x:.2f}"

    vals = {
        "packing_ratio": f(pack["proc_gain"]) if pack else "-",
        "sweep_ratio": f(gain),
        "auto": pack["plan"].n_trials if pack else "-",
        "fits": pack["fits"] if pack else "-",
        "mem_ratio": f(pack["mem_ratio"]) if pack else "-",
        "bf16": f(speed.get("bf16")),
        "fp16": f(speed.get("fp16")),
        "peak_fp32_mib": f"{peaks['fp32'] / MiB:.0f}" if "fp32" in peaks else "-",
        "oom": oom.replace(" ", "_"),
        "wall_s": f"{wall:.0f}",
    }
    return " ".join(f"{k}={v}" for k, v in vals.items())


def _part(name: str, fn, *args) -> Any:
    t0 = time.perf_counter()
    try:
        return fn(*args)
    except Exception as e:  # noqa: BLE001 - one part failing must not lose the others
        say(f"{name}: FAILED after {time.perf_counter() - t0:.0f} s: {type(e).__name__}: {e}")
        return None


def run(quick: bool = False, sweeps: bool = True) -> list[common.Result]:
    if not cuda_available():
        print(SKIP)
        return [common.Result("gpu", "fractional GPUs, bf16/fp16, VRAM", None, "", None, SKIP)]
    import torch

    t_all = time.perf_counter()
    free, total = torch.cuda.mem_get_info()
    say(f"{torch.cuda.get_device_name(0)}, {total / 2**30:.0f} GiB ({free / 2**30:.1f} free)")
    peaks = _part("probe", probe, ["fp32", "bf16", "fp16"]) or {}
    speed = _part("precision", precision_speed, 1 if quick else 3, 50 if quick else 200) or {}
    pack = _part("packing", packing, peaks["fp32"], 100 if quick else 400) if peaks else None
    oom_result = _part("oom", induced_oom) or "failed"
    gain = _part("sweeps", sweep_packing, quick) if sweeps else None
    rows = [
        common.Result("gpu", f"{p} autocast speed-up vs fp32 (step time)", r, "", None)
        for p, r in speed.items()
    ]
    if peaks:
        rows.append(
            common.Result(
                "gpu",
                "peak memory per trial (probe)",
                None,
                "",
                None,
                ", ".join(f"{p} {v / MiB:.0f} MiB" for p, v in peaks.items()),
                shown=f"{peaks['fp32'] / MiB:.0f} MiB",
            )
        )
    if pack:
        rows.append(
            common.Result(
                "gpu",
                "auto packing: measured / planned bytes per trial",
                pack["mem_ratio"],
                "<= 1.00x",
                pack["mem_ratio"] <= 1.0,
                f"{pack['plan'].message}; {pack['fits']} would fit",
            )
        )
        rows.append(
            common.Result("gpu", "4 processes at once vs 1 at a time", pack["proc_gain"], "", None)
        )
    rows.append(common.Result("gpu", "induced OOM", None, "", None, oom_result, shown=oom_result))
    if gain is not None:
        rows.append(
            common.Result(
                "gpu",
                "sweep: 4 trials x 0.25 GPU vs 1 at a time, throughput",
                gain,
                f"{GOAL[0]} {GOAL[1]}x",
                common.check(gain, *GOAL),
            )
        )
    say(summary(peaks, speed, pack, oom_result, gain, time.perf_counter() - t_all))
    return rows


def main(argv: list[str] | None = None) -> list[common.Result]:
    common.setup_env()
    p = common.parser(__doc__)
    p.add_argument("--no-sweeps", action="store_true", help="skip the two Ray sweeps (part 6)")
    args = p.parse_args(argv)
    results = run(args.quick, sweeps=not args.no_sweeps)
    if results[0].detail == SKIP:  # one line only; still a result row for run_all
        if args.json:
            Path(args.json).write_text(json.dumps([asdict(r) for r in results]))
        return results
    common.finish(results, args.json)
    return results


if __name__ == "__main__":
    main()
