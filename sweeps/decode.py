"""Decode-only sweep (speech): LM weight x word bonus x beam width on one trained checkpoint.

python sweeps/decode.py runs/<sweep>/<trial>/checkpoint_000012
python sweeps/decode.py <checkpoint or trial dir> --lm-weights 0.3,0.5,0.9 --word-bonus 0,1,2 \
    --beam-widths 8,32 [--split dev]

The acoustic model runs once; every (alpha, beta, width) re-decodes its cached posteriors with
the trial's KenLM trigram (NeMo-style alpha/beta grid, a plain loop: no Tune). MLflow gets one
parent run with one child run per combination (dev WER/CER); the best combination is printed.
Tune on dev; set the winner as lm_weight= word_bonus= beam_width= on later sweeps.

python sweeps/decode.py <trial dir> --average 70,75,80   (or --average last:3)

Checkpoint ensembling: decodes each chosen epoch's checkpoint and their weight average on dev
and test (or --split), greedy and beam with the trial's lm_weight/word_bonus/beam_width (or one
value each of --lm-weights/--word-bonus/--beam-widths), and prints one row per checkpoint.
Train with keep_every=k to keep every k-th epoch's checkpoint.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # runnable without installing

# The decoding: driver/decode.py; its MLflow runs: driver/decode_log.py
from driver.decode import GRID, DecodeJob, run_decode  # noqa: E402
from kdsweep.errors import KDSweepError  # noqa: E402


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="sweeps/decode.py",
        description=(__doc__ or "").strip().splitlines()[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("checkpoint", help="a trial checkpoint dir (or a trial dir: its latest)")
    p.add_argument("--lm-weights", help=f"alpha: LM weight values (grid: {GRID['lm_weights']})")
    p.add_argument("--word-bonus", help=f"beta: per-word bonus values (grid: {GRID['word_bonus']})")
    p.add_argument("--beam-widths", help=f"beam widths (grid: {GRID['beam_widths']})")
    p.add_argument(
        "--split", choices=["dev", "test"], help="tune on dev (default; --average: dev and test)"
    )
    p.add_argument(
        "--average",
        metavar="SPEC",
        help="decode these epochs' checkpoints and their weight average: 70,75,80 or last:3",
    )
    p.add_argument("--mlflow-uri", help="tracking URI (default $MLFLOW_TRACKING_URI or sqlite)")
    p.add_argument("--experiment", default="kdsweep/decode", help="MLflow experiment")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> dict | None:
    try:
        return run_decode(DecodeJob(**vars(parse_args(argv))))
    except KDSweepError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
