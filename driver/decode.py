"""Decode-only sweep (speech) on one trained checkpoint: an LM weight x word bonus x beam width
grid over the cached posteriors, or checkpoint ensembling (`--average`). The CLI is
sweeps/decode.py; MLflow logging is driver/decode_log.py.

    result = run_decode(DecodeJob(checkpoint="runs/<sweep>/<trial>", split="dev"))
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kdsweep.errors import KDSweepError

GRID = {"lm_weights": "0.3,0.5,0.9", "word_bonus": "0,1,2", "beam_widths": "8,32"}


@dataclass(frozen=True)
class DecodeJob:
    """What sweeps/decode.py was asked: a checkpoint, the grid (comma lists; None: GRID's), the
    split, `--average SPEC`, and where to log."""

    checkpoint: str
    lm_weights: str | None = None
    word_bonus: str | None = None
    beam_widths: str | None = None
    split: str | None = None
    average: str | None = None
    mlflow_uri: str | None = None
    experiment: str = "kdsweep/decode"

    @property
    def tracking(self) -> tuple[str | None, str]:
        """(tracking URI or None for the default, experiment name)."""
        return self.mlflow_uri, self.experiment

    def given(self) -> dict[str, str]:
        """The grid flags the user gave."""
        return {k: getattr(self, k) for k in GRID if getattr(self, k)}


def floats(text: str, name: str) -> list[float]:
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


def grid(job: DecodeJob) -> tuple[list[float], list[float], list[int]]:
    """(alphas, betas, widths) from the job, the grid's defaults where a flag is not given."""
    alphas = floats(job.lm_weights or GRID["lm_weights"], "--lm-weights")
    betas = floats(job.word_bonus or GRID["word_bonus"], "--word-bonus")
    widths = [int(w) for w in floats(job.beam_widths or GRID["beam_widths"], "--beam-widths")]
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


def run_decode(job: DecodeJob) -> dict:
    """The grid on one checkpoint (or `--average`): rows, the best combination, MLflow runs."""
    if job.average is not None:
        return run_average(job)
    from driver.decode_log import log_grid

    alphas, betas, widths = grid(job)
    ckpt = find_checkpoint(Path(job.checkpoint))  # bad input fails before the heavy imports
    split = job.split or "dev"
    model, cfg, data = load_trial(ckpt)
    greedy, rows = decode_grid(model, data, split, alphas, betas, widths, ckpt)
    key = f"{split}_wer"
    best = min(rows, key=lambda r: (r[key], r[f"{split}_cer"], r["beam_width"]))
    result = {"checkpoint": str(ckpt), "greedy": greedy, "best": best, "rows": rows}
    params = {
        "checkpoint": str(ckpt),
        "split": split,
        **{k: getattr(job, k) or GRID[k] for k in GRID},
        "student": f"L{cfg.layers}-H{cfg.hidden}",
        "corpus": cfg.corpus,
    }
    result["parent_run_id"] = log_grid(job.tracking, ckpt, params, greedy, rows, best)
    print(
        f"best: lm_weight={best['lm_weight']:g} word_bonus={best['word_bonus']:g} "
        f"beam_width={best['beam_width']}  {key}={best[key]:.4f} "
        f"(greedy {greedy['wer']:.4f}, trial's lm_weight={cfg.lm_weight:g} "
        f"word_bonus={cfg.word_bonus:g} beam_width={cfg.beam_width})"
    )
    return result


def decode_grid(model, data, split: str, alphas, betas, widths, ckpt: Path):
    """(greedy scores, one row per (alpha, beta, width)): the acoustic model runs once."""
    import torch

    from kdsweep.speech.teacher import greedy_scores, predict
    from trainables.speech.loop import Decoders, beam_scores

    fs = data.feats[split]
    logits, _ = predict(model, fs, torch.device("cpu"))
    greedy = greedy_scores(logits, fs.transcripts)
    print(
        f"[kdsweep] {ckpt}: {len(fs)} {split} utterances, greedy WER {greedy['wer']:.4f} "
        f"CER {greedy['cer']:.4f}; LM {data.arpa.name}"
    )
    decoders, rows = Decoders(data.arpa), []
    for a in alphas:
        for b in betas:
            for w in widths:
                t0 = time.perf_counter()
                s = beam_scores(decoders.get(a, b), logits, fs.transcripts, w)
                seconds = time.perf_counter() - t0
                rows.append({"lm_weight": a, "word_bonus": b, "beam_width": w,
                             f"{split}_wer": s["wer"], f"{split}_cer": s["cer"],
                             "seconds": seconds})  # fmt: skip
                print(
                    f"  alpha={a:g} beta={b:g} width={w}: WER {s['wer']:.4f} CER {s['cer']:.4f} "
                    f"({seconds:.1f} s)",
                    flush=True,
                )
    return greedy, rows


def run_average(job: DecodeJob) -> dict:
    """--average SPEC: each chosen checkpoint and their weight average, greedy and beam WER."""
    from driver.decode_average import score_rows, select_members
    from driver.decode_log import log_average

    given = job.given()
    alphas, betas, widths = grid(job)
    if any(len(floats(v, k)) != 1 for k, v in given.items()):
        raise KDSweepError(
            "--average: give at most one value each of --lm-weights, --word-bonus, "
            "--beam-widths (the grid is for a single checkpoint)"
        )
    members = select_members(Path(job.checkpoint), job.average)  # headers only: fails early

    from trainables.speech.loop import Decoders, beam_scores

    _, cfg, data = load_trial(members[-1].path)
    alpha = alphas[0] if "lm_weights" in given else cfg.lm_weight
    beta = betas[0] if "word_bonus" in given else cfg.word_bonus
    width = widths[0] if "beam_widths" in given else cfg.beam_width
    decoder = Decoders(data.arpa).get(alpha, beta)
    splits = [job.split] if job.split else ["dev", "test"]
    epochs = ", ".join(str(m.epoch) for m in members)
    print(
        f"[kdsweep] {members[0].path.parent}: epochs {epochs}; "
        + ", ".join(f"{len(data.feats[s])} {s}" for s in splits)
        + f" utterances; beam: lm_weight={alpha:g} word_bonus={beta:g} beam_width={width}, "
        f"LM {data.arpa.name}"
    )
    rows = score_rows(
        members, data.feats, splits, lambda lg, refs: beam_scores(decoder, lg, refs, width)
    )
    params: dict[str, Any] = {
        "trial": str(members[0].path.parent),
        "average": job.average,
        "epochs": ",".join(str(m.epoch) for m in members),
        "splits": ",".join(splits),
        "lm_weight": alpha,
        "word_bonus": beta,
        "beam_width": width,
        "student": f"L{cfg.layers}-H{cfg.hidden}",
        "corpus": cfg.corpus,
    }
    parent = log_average(job.tracking, params, rows)
    result = {"checkpoints": [str(m.path) for m in members], "splits": splits, "rows": rows}
    return {**result, "parent_run_id": parent}
