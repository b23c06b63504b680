"""KD overhead: a soft-KD trial vs an independent trial of the same student, same epochs.

    python bench/kd_overhead.py [--quick] [--rounds N]

Three trials of the same student on the same data, run in this process with `local_session`
(no Ray), interleaved round by round; the ratio of mean `epoch_seconds` is taken per round and
the median over rounds is reported:

- independent: CE on gold labels only;
- soft (kdsweep): soft KD from the teacher store's cached logits; the teacher never runs;
- naive: the same soft-KD loss, but the teacher model is loaded in the trial and run forward
  (no_grad) on every training batch, as a Trainer subclass would do. Defined here with
  `run_text_trial` and a loss_fn that calls the teacher.

Goal: soft / independent <= 1.10x. naive / soft shows what the cache saves.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

GOAL = ("<=", 1.10)


def naive_soft(config: dict[str, Any]) -> None:
    """Soft KD with the teacher forward inside the training step (no logits cache)."""
    import torch

    from kdsweep.losses import soft_kd_objective
    from trainables.text.config import SoftConfig
    from trainables.text.loop import prepare_text, run_text_trial

    cfg = SoftConfig.from_dict(config)
    teacher = prepare_text(cfg, log=lambda m: None).teacher.load_model()

    def loss_fn(out, batch, aux):
        device = out.logits.device
        teacher.to(device)
        with torch.no_grad():
            t_logits = teacher(
                input_ids=batch.input_ids, attention_mask=batch.attention_mask
            ).logits
        total, ce, kd = soft_kd_objective(
            out.logits, t_logits, batch.labels, cfg.alpha, cfg.temperature
        )
        return total, {"loss_ce": ce, "loss_kd": kd}

    run_text_trial(cfg, loss_fn)  # Needs(): no cached teacher outputs


def trainable(variant: str):
    from trainables.text.trainable import CONDITIONS

    return {**CONDITIONS, "naive": naive_soft}[variant]


def run_variant(variant: str, cfg: dict[str, Any], cpus: float = 1.0) -> dict[str, Any]:
    """One trial in this process; returns its per-epoch metrics and its wall time."""
    from trainables.tune_io import local_session

    condition = "independent" if variant == "independent" else "soft"
    conf = common.config_fields(cfg, condition)
    with (
        tempfile.TemporaryDirectory(prefix="kdsweep-bench-") as tmp,
        local_session(Path(tmp), cpus=cpus) as s,
    ):
        t0 = time.perf_counter()
        trainable(variant)(conf)
        wall = time.perf_counter() - t0
    epochs = [r["epoch_seconds"] for r in s.results]
    return {
        "epoch_seconds": sum(epochs) / len(epochs),
        "wall": wall,
        "dev_accuracy": max(r.get("dev_accuracy", 0.0) for r in s.results),
    }


def run(quick: bool = False, rounds: int | None = None) -> list[common.Result]:
    rounds = rounds or 2
    cfg = common.base_config(quick, epochs=2)  # the naive trial is ~5x slower: keep it short
    common.ensure_teacher(quick)
    variants = ["independent", "soft", "naive"]
    per: dict[str, list[dict]] = {v: [] for v in variants}
    soft_ind, naive_soft_r = [], []
    print(
        f"kd_overhead: {cfg['student']}, {cfg['epochs']} epochs, "
        f"{cfg.get('data_subset') or 'all'} train examples, 1 thread, {rounds} round(s)"
    )
    for i in range(rounds):
        order = variants if i % 2 == 0 else variants[::-1]  # alternate: no position bias
        got = {v: run_variant(v, cfg) for v in order}
        for v in variants:
            per[v].append(got[v])
        soft_ind.append(got["soft"]["epoch_seconds"] / got["independent"]["epoch_seconds"])
        naive_soft_r.append(got["naive"]["epoch_seconds"] / got["soft"]["epoch_seconds"])
        print(
            f"  round {i + 1}: epoch s "
            + ", ".join(f"{v} {got[v]['epoch_seconds']:.2f}" for v in variants)
            + f" -> soft/independent {soft_ind[-1]:.3f}, naive/soft {naive_soft_r[-1]:.2f}"
        )
    r1 = common.median(soft_ind)
    r2 = common.median(naive_soft_r)
    acc = {v: common.median([x["dev_accuracy"] for x in per[v]]) for v in variants}
    return [
        common.Result(
            "kd_overhead",
            "soft KD (cached logits) / independent, epoch time",
            r1,
            f"{GOAL[0]} {GOAL[1]:.2f}x",
            common.check(r1, *GOAL),
            f"median of {rounds} interleaved rounds; dev acc independent {acc['independent']:.3f}, "
            f"soft {acc['soft']:.3f}",
        ),
        common.Result(
            "kd_overhead",
            "naive (teacher forward each step) / soft KD cached",
            r2,
            "",
            None,
            f"what the logits cache saves per epoch; naive dev acc {acc['naive']:.3f}",
        ),
    ]


def main(argv: list[str] | None = None) -> list[common.Result]:
    common.setup_env()
    p = common.parser(__doc__)
    p.add_argument("--rounds", type=int, help="interleaved repeats (default 2)")
    args = p.parse_args(argv)
    results = run(args.quick, args.rounds)
    common.finish(results, args.json)
    return results


if __name__ == "__main__":
    main()
