"""Scale: a trial's peak private memory and time per example at 1x, 4x and 16x data.

    python bench/scale.py [--quick] [--tasks text,asr]

Memory that does not grow with the data (issue 17): features and teacher outputs live on disk
as fp16 memory maps read per batch, so a trial's *private* memory (the model, the optimizer, a
few batches) should stay flat as the corpus grows, and so should its time per example.

Each trial runs alone in a fresh child process (`local_session`, 1 torch thread, no Ray) that
only trains: the data, features and teachers of every scale are prepared here, in the parent,
before anything is measured (the driver-side preparation a sweep does). While the child runs,
the parent samples `/proc/<pid>/status` every ~50 ms and keeps the peak of

- RssAnon: anonymous resident memory, i.e. private to the trial (the goal is on this one);
- VmRSS: plain resident set size, which also counts the memory maps' file pages (shared between
  trials and reclaimable), shown beside it for contrast.

Time per example = the trial's own reported `epoch_seconds` (training time only: no start-up,
no evaluation) summed over its epochs after the first (which pays one-off warm-up; with one
epoch, that one) / (training examples x those epochs). 3 epochs per trial (`--quick`: 1).

- speech: synthetic `commands` corpora of 100 / 400 / 1600 utterances (80% train), a 1-layer
  BiLSTM student, conditions independent, soft (a stored teacher), self (its stored twin);
- text: fortunes (200 per topic, the other benchmarks' data and teacher), `data_subset` 60 / 240
  / 960 training examples, L2-H128 student, conditions independent, soft, hidden.

Goals (the worst condition's 16x / 1x): private memory <= 1.5x, time per example <= 1.2x.
`--quick`: 1x and 4x only, smaller corpora and fewer epochs (a smoke run; ratios are 4x / 1x).
The last line is `scale: rss_ratio=<x> time_ratio=<y>`.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

MEM_GOAL = ("<=", 1.5)
TIME_GOAL = ("<=", 1.2)
SCALES = (1, 4, 16)
QUICK_SCALES = (1, 4)
CONDITIONS = {"asr": ("independent", "soft", "self"), "text": ("independent", "soft", "hidden")}

SPEECH = {
    "task": "asr",
    "corpus": "commands",
    "layers": 1,
    "hidden": 64,
    "teacher_layers": 2,
    "teacher_hidden": 64,
    "teacher_epochs": 2,
    "epochs": 3,
    "batch_size": 16,
    "beam_width": 4,
    "eval_cmu": False,
    "threads": 1,
}
SPEECH_BASE = {"full": 100, "quick": 30}  # utterances at 1x
TEXT_BASE = {"full": 60, "quick": 32}  # training examples (data_subset) at 1x
POLL_S = 0.05


# ---------------------------------------------------------------- configs
def trial_configs(task: str, quick: bool, text_data: dict[str, Any] | None = None) -> list[dict]:
    """One config dict per (condition, scale): what the children train."""
    mode = "quick" if quick else "full"
    scales = QUICK_SCALES if quick else SCALES
    rows = []
    for scale in scales:
        for cond in CONDITIONS[task]:
            if task == "asr":
                cfg = {**SPEECH, "n_utterances": SPEECH_BASE[mode] * scale}
                cfg.update(cache_dir=common.cache_home(), epochs=1 if quick else 3)
            else:
                cfg = common.base_config(quick, **(text_data or {}))
                cfg.update(data_subset=TEXT_BASE[mode] * scale, epochs=1 if quick else 3)
                cfg.update(threads=1)
            rows.append({"scale": scale, "cfg": common.config_fields(cfg, cond)})
    return rows


def prepare(task: str, cfg: dict[str, Any]) -> int:
    """Driver-side preparation of one trial config (data, features, teacher); returns the
    number of training examples an epoch sees."""
    from trainables.registry import config_for

    conf = config_for(cfg)
    if task == "asr":
        from trainables.speech.loop import prepare_asr

        return prepare_asr(conf, log=lambda m: print(f"    {m}", flush=True)).sizes["train"]
    from trainables.text.loop import prepare_text

    data = prepare_text(conf, log=lambda m: print(f"    {m}", flush=True))
    n = len(data.tokens["train"]["input_ids"])
    return min(n, conf.data_subset) if conf.data_subset else n


# ---------------------------------------------------------------- the child: train only
def child(cfg: dict[str, Any]) -> None:
    """Run one trial in this process; print its train_seconds and epochs as one JSON line."""
    from trainables.registry import run_trial
    from trainables.tune_io import local_session

    with (
        tempfile.TemporaryDirectory(prefix="kdsweep-scale-") as tmp,
        local_session(Path(tmp), cpus=1) as s,
    ):
        run_trial(cfg)
    epochs = [r["epoch_seconds"] for r in s.results]
    warm = epochs[1:] or epochs  # the first epoch pays one-off warm-up (allocator, page cache)
    out = {"train_seconds": s.results[-1]["train_seconds"], "epochs": len(warm)}
    out["timed_seconds"] = sum(warm)
    print("SCALE_RESULT", json.dumps(out), flush=True)


def read_status(pid: int) -> dict[str, int]:
    """RssAnon and VmRSS of a live process in KiB ({} once it has gone)."""
    got = {}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, rest = line.partition(":")
            if key in ("RssAnon", "VmRSS"):
                got[key] = int(rest.split()[0])
    except (FileNotFoundError, ProcessLookupError, ValueError):
        return {}
    return got


def measure(cfg: dict[str, Any]) -> dict[str, float]:
    """Train `cfg` in a child process while sampling its memory; peak MB and train seconds."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", json.dumps(cfg)]
    peak = {"RssAnon": 0, "VmRSS": 0}
    with tempfile.TemporaryFile("w+") as out:
        proc = subprocess.Popen(
            cmd, stdout=out, stderr=subprocess.STDOUT, text=True,
            env=common.child_env(1), cwd=common.BENCH_HOME,
        )  # fmt: skip
        done = threading.Event()

        def sample() -> None:
            while not done.is_set():
                for k, v in read_status(proc.pid).items():
                    peak[k] = max(peak[k], v)
                done.wait(POLL_S)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        rc = proc.wait()
        done.set()
        sampler.join()
        out.seek(0)
        text = out.read()
    line = next((ln for ln in text.splitlines() if ln.startswith("SCALE_RESULT")), None)
    if rc != 0 or line is None:
        raise RuntimeError(f"scale child failed (exit {rc}):\n{text[-4000:]}")
    res = json.loads(line.split(maxsplit=1)[1])
    return {"rss_anon": peak["RssAnon"] / 1024, "rss": peak["VmRSS"] / 1024, **res}


# ---------------------------------------------------------------- one task
def run_task(task: str, quick: bool, text_data: dict[str, Any] | None = None) -> list[dict]:
    """Prepare every scale first, then measure each (condition, scale) in its own child."""
    rows = trial_configs(task, quick, text_data)
    print(
        f"scale/{task}: preparing data + teachers for scales {sorted({r['scale'] for r in rows})}"
    )
    t0 = time.perf_counter()
    for r in rows:
        r["examples"] = prepare(task, r["cfg"])
    print(f"scale/{task}: prepared in {time.perf_counter() - t0:.0f} s; measuring", flush=True)
    for r in rows:
        m = measure(r["cfg"])
        r.update(m, s_per_example=m["timed_seconds"] / (r["examples"] * m["epochs"]))
        print(
            f"  {r['cfg']['condition']:<11} {r['scale']:>2}x: {r['examples']} train examples, "
            f"rss_anon {m['rss_anon']:.0f} MB, rss {m['rss']:.0f} MB, "
            f"{r['s_per_example'] * 1e3:.2f} ms/example",
            flush=True,
        )
    return rows


def format_rows(task: str, rows: list[dict]) -> str:
    head = ("condition", "scale", "examples", "rss_anon MB", "rss MB", "s/example")
    body = [
        (
            r["cfg"]["condition"], f"{r['scale']}x", str(r["examples"]), f"{r['rss_anon']:.0f}",
            f"{r['rss']:.0f}", f"{r['s_per_example']:.5f}",
        )
        for r in rows
    ]  # fmt: skip
    w = [max(len(x[i]) for x in [head, *body]) for i in range(len(head))]
    lines = ["  ".join(c.ljust(w[i]) for i, c in enumerate(x)).rstrip() for x in [head, *body]]
    lines.insert(1, "  ".join("-" * x for x in w))
    return f"[{task}]\n" + "\n".join(lines)


def ratios(rows: list[dict]) -> dict[str, dict[str, float]]:
    """Per condition: top scale / 1x of private memory, plain RSS and time per example."""
    out = {}
    top = max(r["scale"] for r in rows)
    for cond in dict.fromkeys(r["cfg"]["condition"] for r in rows):
        lo = next(r for r in rows if r["cfg"]["condition"] == cond and r["scale"] == 1)
        hi = next(r for r in rows if r["cfg"]["condition"] == cond and r["scale"] == top)
        out[cond] = {
            k: hi[k] / lo[k] if lo[k] > 0 else float("nan")
            for k in ("rss_anon", "rss", "s_per_example")
        }
    return out


def run(quick: bool = False, tasks: tuple[str, ...] = ("asr", "text"), text_data=None):
    """Measure every task; print tables and ratios; returns (results, rss_ratio, time_ratio)."""
    top = f"{(QUICK_SCALES if quick else SCALES)[-1]}x/1x"
    worst: dict[str, tuple[float, str]] = {"rss_anon": (0.0, ""), "s_per_example": (0.0, "")}
    results = []
    for task in tasks:
        if task == "text" and text_data is None:
            common.ensure_teacher(quick)  # the other benchmarks' teacher (cached)
        rows = run_task(task, quick, text_data)
        print(format_rows(task, rows))
        for cond, r in ratios(rows).items():
            print(
                f"  {task}/{cond} {top}: rss_anon {r['rss_anon']:.2f}x, rss {r['rss']:.2f}x, "
                f"s/example {r['s_per_example']:.2f}x"
            )
            for k in worst:
                if r[k] > worst[k][0]:
                    worst[k] = (r[k], f"{task}/{cond}")
    rss_ratio, time_ratio = worst["rss_anon"][0], worst["s_per_example"][0]
    for name, (val, where), goal in (
        ("private memory (RssAnon)", worst["rss_anon"], MEM_GOAL),
        ("time per example", worst["s_per_example"], TIME_GOAL),
    ):
        ok = common.check(val, *goal)
        verdict = "PASS" if ok else "FAIL"
        print(f"goal {name} {top} {goal[0]} {goal[1]}: {val:.2f}x ({where}) {verdict}")
        results.append(
            common.Result(
                "scale", f"{name} {top}, worst condition", val, f"{goal[0]} {goal[1]:.2f}x", ok,
                f"worst: {where}",
            )
        )  # fmt: skip
    return results, rss_ratio, time_ratio


def main(argv: list[str] | None = None) -> list[common.Result] | None:
    common.setup_env()
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--child"]:
        child(json.loads(argv[1]))
        return None
    p = common.parser(__doc__)
    p.add_argument("--tasks", default="asr,text", help="comma-separated: asr, text")
    args = p.parse_args(argv)
    tasks = tuple(t for t in args.tasks.split(",") if t)
    bad = set(tasks) - set(CONDITIONS)
    if bad:
        p.error(f"--tasks: unknown task(s) {', '.join(sorted(bad))}; choose from asr, text")
    results, rss_ratio, time_ratio = run(args.quick, tasks)
    common.finish(results, args.json)
    print(f"scale: rss_ratio={rss_ratio:.2f} time_ratio={time_ratio:.2f}")
    return results


if __name__ == "__main__":
    main()
