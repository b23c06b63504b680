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
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # runnable without installing

from kdsweep.errors import KDSweepError  # noqa: E402

PROJECT_DIR = Path(__file__).resolve().parents[1]
GRID = {"lm_weights": "0.3,0.5,0.9", "word_bonus": "0,1,2", "beam_widths": "8,32"}


def _floats(text: str, name: str) -> list[float]:
    try:
        values = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise KDSweepError(f"{name}: {text!r} is not a comma list of numbers") from None
    if not values:
        raise KDSweepError(f"{name}: empty list")
    return values


def find_checkpoint(path: Path) -> Path:
    """A checkpoint dir itself, or the latest checkpoint_* inside a trial dir."""
    path = Path(path).expanduser().resolve()
    if (path / "model.safetensors").is_file():
        return path
    found = sorted(path.rglob("checkpoint_*/model.safetensors")) if path.is_dir() else []
    if not found:
        raise KDSweepError(f"checkpoint: no model.safetensors in or under {path}")
    return found[-1].parent


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


def _grid(args: argparse.Namespace) -> tuple[list[float], list[float], list[int]]:
    """(alphas, betas, widths) from the flags, the grid's defaults where a flag is not given."""
    alphas = _floats(args.lm_weights or GRID["lm_weights"], "--lm-weights")
    betas = _floats(args.word_bonus or GRID["word_bonus"], "--word-bonus")
    widths = [int(w) for w in _floats(args.beam_widths or GRID["beam_widths"], "--beam-widths")]
    if any(w < 1 for w in widths):
        raise KDSweepError(f"--beam-widths: must be >= 1, got {widths}")
    return alphas, betas, widths


def load_trial(ckpt: Path):
    """(student, trial config, prepared data without teacher) of a trial checkpoint."""
    import torch

    from trainables.speech.config import ASRConfig
    from trainables.speech.loop import load_student, prepare_asr

    torch.set_num_threads(1)  # the LSTM runs once; under load more threads are slower
    model, trial_cfg = load_student(ckpt)
    names = ASRConfig.field_names()
    cfg = ASRConfig.from_dict(
        {k: v for k, v in trial_cfg.items() if k in names and k != "teacher_checkpoint"},
        where=f"{ckpt}/config.json",
    )
    return model, cfg, prepare_asr(cfg, log=print, with_teacher=False, threads=1)


def run(args: argparse.Namespace) -> dict:
    if args.average is not None:
        return run_average(args)
    for key, default in GRID.items():
        setattr(args, key, getattr(args, key) or default)
    alphas, betas, widths = _grid(args)
    ckpt = find_checkpoint(Path(args.checkpoint))  # bad input fails before the heavy imports
    args.split = args.split or "dev"

    import torch

    from kdsweep.speech.teacher import greedy_scores, predict
    from trainables.speech.loop import Decoders, beam_scores

    model, cfg, data = load_trial(ckpt)
    fs = data.feats[args.split]
    logits, _ = predict(model, fs, torch.device("cpu"))
    greedy = greedy_scores(logits, fs.transcripts)
    print(
        f"[kdsweep] {ckpt}: {len(fs)} {args.split} utterances, greedy WER {greedy['wer']:.4f} "
        f"CER {greedy['cer']:.4f}; LM {data.arpa.name}"
    )

    decoders = Decoders(data.arpa)
    rows = []
    for a in alphas:
        for b in betas:
            for w in widths:
                t0 = time.perf_counter()
                s = beam_scores(decoders.get(a, b), logits, fs.transcripts, w)
                rows.append(
                    {
                        "lm_weight": a,
                        "word_bonus": b,
                        "beam_width": w,
                        f"{args.split}_wer": s["wer"],
                        f"{args.split}_cer": s["cer"],
                        "seconds": time.perf_counter() - t0,
                    }
                )
                r = rows[-1]
                print(
                    f"  alpha={a:g} beta={b:g} width={w}: WER {s['wer']:.4f} CER {s['cer']:.4f} "
                    f"({r['seconds']:.1f} s)",
                    flush=True,
                )
    key = f"{args.split}_wer"
    best = min(rows, key=lambda r: (r[key], r[f"{args.split}_cer"], r["beam_width"]))
    result = {"checkpoint": str(ckpt), "greedy": greedy, "best": best, "rows": rows}
    result["parent_run_id"] = _log_mlflow(args, ckpt, cfg, greedy, rows, best)
    print(
        f"best: lm_weight={best['lm_weight']:g} word_bonus={best['word_bonus']:g} "
        f"beam_width={best['beam_width']}  {key}={best[key]:.4f} "
        f"(greedy {greedy['wer']:.4f}, trial's lm_weight={cfg.lm_weight:g} "
        f"word_bonus={cfg.word_bonus:g} beam_width={cfg.beam_width})"
    )
    return result


def run_average(args: argparse.Namespace) -> dict:
    """--average SPEC: each chosen checkpoint and their weight average, greedy and beam WER."""
    from driver.decode_average import log_average, score_rows, select_members

    given = {k: getattr(args, k) for k in GRID if getattr(args, k)}
    alphas, betas, widths = _grid(argparse.Namespace(**{**GRID, **given}))
    if any(len(_floats(v, k)) != 1 for k, v in given.items()):
        raise KDSweepError(
            "--average: give at most one value each of --lm-weights, --word-bonus, "
            "--beam-widths (the grid is for a single checkpoint)"
        )
    members = select_members(Path(args.checkpoint), args.average)  # headers only: fails early

    from trainables.speech.loop import Decoders, beam_scores

    _, cfg, data = load_trial(members[-1].path)
    alpha = alphas[0] if "lm_weights" in given else cfg.lm_weight
    beta = betas[0] if "word_bonus" in given else cfg.word_bonus
    width = widths[0] if "beam_widths" in given else cfg.beam_width
    decoder = Decoders(data.arpa).get(alpha, beta)
    splits = [args.split] if args.split else ["dev", "test"]
    print(
        f"[kdsweep] {members[0].path.parent}: epochs {', '.join(str(m.epoch) for m in members)}; "
        + ", ".join(f"{len(data.feats[s])} {s}" for s in splits)
        + f" utterances; beam: lm_weight={alpha:g} word_bonus={beta:g} beam_width={width}, "
        f"LM {data.arpa.name}"
    )
    rows = score_rows(
        members, data.feats, splits, lambda lg, refs: beam_scores(decoder, lg, refs, width)
    )
    params = {
        "trial": str(members[0].path.parent),
        "average": args.average,
        "epochs": ",".join(str(m.epoch) for m in members),
        "splits": ",".join(splits),
        "lm_weight": alpha,
        "word_bonus": beta,
        "beam_width": width,
        "student": f"L{cfg.layers}-H{cfg.hidden}",
        "corpus": cfg.corpus,
    }
    parent = log_average(*_mlflow(args), params, rows)
    result = {"checkpoints": [str(m.path) for m in members], "splits": splits, "rows": rows}
    return {**result, "parent_run_id": parent}


def _mlflow(args: argparse.Namespace):
    """(MlflowClient, experiment id) of --mlflow-uri / $MLFLOW_TRACKING_URI / the sqlite default."""
    from mlflow.tracking import MlflowClient

    uri = args.mlflow_uri or os.environ.get("MLFLOW_TRACKING_URI")
    client = MlflowClient(uri or f"sqlite:///{PROJECT_DIR / 'mlruns.db'}")
    exp = client.get_experiment_by_name(args.experiment)
    if exp:
        return client, exp.experiment_id
    location = (PROJECT_DIR / "mlartifacts").as_uri()
    return client, client.create_experiment(args.experiment, artifact_location=location)


def _log_mlflow(args, ckpt: Path, cfg, greedy: dict, rows: list[dict], best: dict) -> str:
    """One parent run (the grid, greedy and best scores) + one child run per combination."""
    from mlflow.entities import Metric, Param, RunTag

    client, exp_id = _mlflow(args)
    now = int(time.time() * 1000)
    split = args.split
    parent = client.create_run(
        exp_id,
        run_name=f"decode {ckpt.parent.name}/{ckpt.name}",
        tags={"task": "asr", "kind": "decode", "checkpoint": str(ckpt)},
    ).info.run_id
    params = {
        "checkpoint": str(ckpt),
        "split": split,
        "lm_weights": args.lm_weights,
        "word_bonus": args.word_bonus,
        "beam_widths": args.beam_widths,
        "student": f"L{cfg.layers}-H{cfg.hidden}",
        "corpus": cfg.corpus,
    }
    client.log_batch(
        parent,
        params=[Param(k, str(v)) for k, v in params.items()],
        metrics=[
            Metric(f"greedy_{split}_wer", greedy["wer"], now, 0),
            Metric(f"greedy_{split}_cer", greedy["cer"], now, 0),
            Metric(f"best_{split}_wer", best[f"{split}_wer"], now, 0),
            Metric(f"best_{split}_cer", best[f"{split}_cer"], now, 0),
        ],
        tags=[
            RunTag(
                "best", json.dumps({k: best[k] for k in ("lm_weight", "word_bonus", "beam_width")})
            )
        ],
    )
    for r in rows:
        name = f"a={r['lm_weight']:g} b={r['word_bonus']:g} w={r['beam_width']}"
        child = client.create_run(
            exp_id, run_name=name, tags={"mlflow.parentRunId": parent, "task": "asr"}
        ).info.run_id
        client.log_batch(
            child,
            params=[Param(k, str(r[k])) for k in ("lm_weight", "word_bonus", "beam_width")],
            metrics=[
                Metric(k, float(r[k]), now, 0) for k in (f"{split}_wer", f"{split}_cer", "seconds")
            ],
        )
        client.set_terminated(child, "FINISHED")
    client.set_terminated(parent, "FINISHED")
    return parent


def main(argv: list[str] | None = None) -> dict | None:
    args = parse_args(argv)
    try:
        return run(args)
    except KDSweepError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
