"""The in-process parts of bench/gpu_check.py (each run as its own process by it):

    python bench/gpu_check_trials.py conditions OUT [--device cuda] [--precisions fp32,bf16,fp16]
    python bench/gpu_check_trials.py oom OUT [--device cuda]

`conditions`: every text and speech condition, tiny, at each precision: epoch 1, a simulated
kill, then a resume from epoch 1's checkpoint for epoch 2; every loss finite, the resumed
epoch numbered 2. `oom`: a text trial whose training step asks the allocator for memory in
proportion to its batch (16 rows do not fit the card, 8 do) recovers through Tune-style retries
at batch 8 x 2; a dev evaluation that does not fit at batch 128 backs off on its own without
touching the training batch. Both write `<part>.json` (one row per run) into OUT and print one
line per run. `--device cpu` is a dry run of the logic (OOMs raised by a simulated card).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

TEXT = {"task": "text", "per_class": 20, "max_len": 32, "teacher_epochs": 1, "student": "L2-H128",
        "lr": 1e-3, "batch_size": 16, "epochs": 2, "attribution_examples": 4}  # fmt: skip
ASR = {"task": "asr", "n_utterances": 40, "layers": 1, "hidden": 32, "teacher_layers": 2,
       "teacher_hidden": 32, "teacher_epochs": 2, "epochs": 2, "batch_size": 8,
       "beam_width": 8, "threads": 1}  # fmt: skip


class Killed(Exception):
    """Stands for a kill after epoch 1's checkpoint was reported."""


def _finite(results: list[dict[str, Any]]) -> bool:
    losses = [v for r in results for k, v in r.items() if "loss" in k and isinstance(v, float)]
    return bool(losses) and all(math.isfinite(v) for v in losses)


def one_run(config: dict[str, Any], root: Path) -> dict[str, Any]:
    """Epoch 1, a kill, then a resume from its checkpoint: what happened, as a row."""
    import torch

    from trainables import tune_io
    from trainables.registry import run_trial

    report = tune_io.report

    def report_then_die(metrics, checkpoint_dir=None):
        report(metrics, checkpoint_dir)
        raise Killed

    t0 = time.perf_counter()
    row: dict[str, Any] = {k: config[k] for k in ("task", "condition", "precision")}
    try:
        tune_io.report = report_then_die
        with tune_io.local_session(root / "first") as first, contextlib.suppress(Killed):
            run_trial(config)
        tune_io.report = report
        with tune_io.local_session(root / "resumed", restore_from=first.last_checkpoint) as again:
            run_trial(config)
        results = first.results + again.results
        row.update(epochs=[r["epoch"] for r in results], finite=_finite(results))
        row["ok"] = row["epochs"] == [1, 2] and row["finite"]
        if torch.cuda.is_available():
            row["peak_mib"] = round(torch.cuda.max_memory_reserved() / 2**20)
            torch.cuda.reset_peak_memory_stats()
    except Exception as e:  # noqa: BLE001 - one failing run is a row, the others still run
        row.update(ok=False, error=f"{type(e).__name__}: {e}"[:400])
    finally:
        tune_io.report = report
    row["seconds"] = round(time.perf_counter() - t0, 1)
    return row


def conditions(out: Path, precisions: list[str], device: str) -> list[dict]:
    from trainables.registry import CONDITIONS

    cache = out / "cache"
    rows = []
    for task, base in (("text", TEXT), ("asr", ASR)):
        if task == "asr" and not (shutil.which("espeak-ng") and shutil.which("flite")):
            rows.append({"task": "asr", "ok": False, "error": "espeak-ng/flite not installed"})
            continue
        for cond in CONDITIONS[task]:
            for prec in precisions:
                config = {**base, "condition": cond, "precision": prec, "device": device,
                          "cache_dir": str(cache)}  # fmt: skip
                row = one_run(config, out / "runs" / f"{task}-{cond}-{prec}")
                print(f"gpu_check: {task} {cond} {prec}: {'ok' if row['ok'] else 'FAILED'} "
                      f"{json.dumps({k: v for k, v in row.items() if k not in config})}",
                      flush=True)  # fmt: skip
                rows.append(row)
    return rows


def _demand(nbytes: int, device: str, total: int) -> None:
    """Ask the allocator for `nbytes` (a real CUDA OOM when they do not fit); on the CPU a
    simulated card of `total` bytes raises the same error."""
    import torch

    if torch.device(device).type == "cuda":
        block = torch.empty(nbytes, dtype=torch.uint8, device="cuda")
        del block
    elif nbytes > total:
        raise torch.cuda.OutOfMemoryError(f"CUDA out of memory. Tried to allocate {nbytes} B")


def oom(out: Path, device: str) -> list[dict]:
    import torch

    import trainables.text.loop as loop
    import trainables.text.trainable as text_mod
    from kdsweep.oom import load_oom_state, release_gpu_memory
    from trainables.tune_io import local_session

    total = torch.cuda.get_device_properties(0).total_memory if device == "cuda" else 2**30
    config = {**TEXT, "condition": "soft", "device": device, "cache_dir": str(out / "cache"),
              "attribution_examples": 0}  # fmt: skip
    objective, rows = text_mod.soft_kd_objective, []

    def hungry_objective(logits, *a, **k):  # 16 rows: 4/3 of the card; 8 rows: 2/3
        _demand(int(total * len(logits) / 12), device, total)
        return objective(logits, *a, **k)

    text_mod.soft_kd_objective = hungry_objective
    trial, last, attempts = out / "oom" / "train", None, []
    for attempt in range(5):  # Tune's FailureConfig retries, from the last checkpoint
        try:
            with local_session(out / "oom" / f"a{attempt}", restore_from=last,
                               trial_dir=trial) as s:  # fmt: skip
                attempts.append(attempt)
                text_mod.TEXT_TRAINABLES["soft"](config)
            break
        except Exception as e:  # noqa: BLE001
            if "out of memory" not in str(e).lower():
                raise
            last = s.last_checkpoint or last
        release_gpu_memory()
    text_mod.soft_kd_objective = objective
    state = load_oom_state(trial)
    got = (state.batch_size, state.grad_accum) if state else None
    rows.append({"part": "training", "attempts": len(attempts), "batch_after": got,
                 "ok": got == (8, 2) and s.results[-1]["epoch"] == TEXT["epochs"]})  # fmt: skip
    release_gpu_memory()

    predict, sizes = loop.predict_logits, []

    def hungry_eval(model, tokens, batch_size, device):  # 128 rows: 4/3 of the card; 64: 2/3
        sizes.append(batch_size)
        _demand(int(total * batch_size / 96), device, total)
        return predict(model, tokens, batch_size, device)

    loop.predict_logits = hungry_eval
    try:
        with local_session(out / "oom" / "eval", trial_dir=out / "oom" / "eval-trial") as s:
            text_mod.TEXT_TRAINABLES["soft"]({**config, "epochs": 1})
        ok = sizes[:2] == [128, 64] and load_oom_state(out / "oom" / "eval-trial") is None
        rows.append({"part": "eval", "batch_sizes": sizes, "ok": ok})
    except Exception as e:  # noqa: BLE001
        rows.append({"part": "eval", "ok": False, "error": f"{type(e).__name__}: {e}"[:400]})
    finally:
        loop.predict_logits = predict
    for row in rows:
        print(f"gpu_check: induced OOM in {row['part']}: {'recovered' if row['ok'] else 'FAILED'}"
              f" {json.dumps(row)}", flush=True)  # fmt: skip
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("part", choices=["conditions", "oom"])
    p.add_argument("out", type=Path)
    p.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    p.add_argument("--precisions", default="fp32,bf16,fp16")
    args = p.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    args.out.mkdir(parents=True, exist_ok=True)
    if args.part == "conditions":
        rows = conditions(args.out, args.precisions.split(","), args.device)
    else:
        rows = oom(args.out, args.device)
    (args.out / f"{args.part}.json").write_text(json.dumps(rows, indent=1))
    return 0 if all(r.get("ok") for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
