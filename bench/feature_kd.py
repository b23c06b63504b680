"""Do hidden, cosine and attention KD learn the task with their default weights?

    python bench/feature_kd.py [key=value ...] [--conds independent,hidden,cosine,attention]
                               [--seeds 2] [--out feature_kd.json]

Each condition x seed is one trial run in-process (`local_session`), the trainables called with
a config exactly as a sweep would; printed per run: dev accuracy and the mean training CE of
every epoch, and the feature term. Defaults: the strategy sweep's student (L2-H128, random
init), lr 1e-3, 5 epochs, 6 fortunes topics at 149 records each (714/89/89, the issue's case).
Any config field can be overridden, e.g. `dataset=my_r8.jsonl` or `student=L4-H312`.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # runnable without installing

from trainables.text.trainable import TEXT_TRAINABLES  # noqa: E402
from trainables.tune_io import local_session  # noqa: E402

BASE = {"dataset": "fortunes", "per_class": 149, "student": "L2-H128", "lr": 1e-3,
        "epochs": 5, "attribution_examples": 0, "threads": 1}  # fmt: skip


def run(cond: str, cfg: dict) -> dict:
    """One trial: per-epoch dev accuracy, training CE and feature-term values."""
    t0 = time.perf_counter()
    with (
        tempfile.TemporaryDirectory(prefix="feature_kd-") as tmp,
        local_session(Path(tmp)) as s,
    ):
        TEXT_TRAINABLES[cond](cfg)
    out = {"cond": cond, "seed": cfg["seed"], "seconds": time.perf_counter() - t0}
    for key in s.results[0]:
        if key == "dev_accuracy" or key.startswith("loss_"):
            out[key] = [r[key] for r in s.results]
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("overrides", nargs="*", help="config key=value")
    p.add_argument("--conds", default="independent,hidden,cosine,attention")
    p.add_argument("--seeds", type=int, default=2)
    p.add_argument("--out", default="feature_kd.json")
    a = p.parse_args()
    cfg = dict(BASE)
    for kv in a.overrides:
        key, value = kv.split("=", 1)
        cfg[key] = value
    rows = []
    for cond in a.conds.split(","):
        for seed in range(a.seeds):
            r = run(cond, {**cfg, "seed": seed})
            rows.append(r)
            feat = {k: v for k, v in r.items() if k.startswith("loss_") and k != "loss_ce"}
            print(f"{cond:12s} seed {seed}  dev " + " ".join(f"{v:.3f}" for v in r["dev_accuracy"])
                  + "  | ce " + " ".join(f"{v:.2f}" for v in r["loss_ce"])
                  + "".join(f"  | {k} {v[-1]:.3f}" for k, v in feat.items())
                  + f"  ({r['seconds']:.0f} s)", flush=True)  # fmt: skip
            Path(a.out).write_text(json.dumps(rows, indent=1))
    print(f"ln K for reference: ln 6 = {math.log(6):.3f}; results in {a.out}")


if __name__ == "__main__":
    main()
