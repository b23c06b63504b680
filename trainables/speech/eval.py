"""Evaluation of a speech student: greedy and beam + KenLM WER/CER, the CMU clips, checkpoints."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file
from torch import Tensor, nn

from kdsweep.errors import KDSweepError
from kdsweep.speech.data import CharVocab, FeatureSet
from kdsweep.speech.decoding import BeamDecoder, cer, wer
from kdsweep.speech.teacher import build_model, greedy_scores, predict
from trainables.speech.config import ASRConfig


class Decoders:
    """One BeamDecoder per (alpha, beta), built on first use (loading the LM takes a second)."""

    def __init__(self, arpa: Path):
        self.arpa = arpa
        self._cache: dict[tuple[float, float], BeamDecoder] = {}

    def get(self, alpha: float, beta: float) -> BeamDecoder:
        key = (float(alpha), float(beta))
        if key not in self._cache:
            self._cache[key] = BeamDecoder(CharVocab(), self.arpa, alpha=alpha, beta=beta)
        return self._cache[key]


def beam_texts(decoder: BeamDecoder, logits: Sequence[Tensor], width: int) -> list[str]:
    lps = [torch.log_softmax(lg.float(), -1).numpy().astype(np.float32) for lg in logits]
    return decoder.decode_batch(lps, beam_width=width)


def beam_scores(
    decoder: BeamDecoder, logits: Sequence[Tensor], refs: Sequence[str], width: int
) -> dict[str, float]:
    hyps = beam_texts(decoder, logits, width)
    return {"wer": wer(refs, hyps), "cer": cer(refs, hyps)}


def evaluate(
    model: nn.Module,
    fs: FeatureSet,
    split: str,
    cfg: ASRConfig,
    decoders: Decoders | None,
    device: torch.device,
) -> dict[str, float]:
    """Greedy `<split>_wer/_cer`, and with `decoders` the beam + LM `<split>_wer_beam/_cer_beam`."""
    logits, _ = predict(model, fs, device)
    g = greedy_scores(logits, fs.transcripts)
    out = {f"{split}_wer": g["wer"], f"{split}_cer": g["cer"]}
    if decoders is not None:
        b = beam_scores(
            decoders.get(cfg.lm_weight, cfg.word_bonus), logits, fs.transcripts, cfg.beam_width
        )
        out.update({f"{split}_wer_beam": b["wer"], f"{split}_cer_beam": b["cer"]})
    return out


def evaluate_ood(
    model: nn.Module, ood: FeatureSet, cfg: ASRConfig, decoders: Decoders, device: torch.device
) -> dict[str, float]:
    """WER/CER on the real CMU clips (all 10; beam also per set: cards, librivox)."""
    out = evaluate(model, ood, "ood", cfg, decoders, device)
    for split, name in (("ood-cards", "ood_cards"), ("ood", "ood_librivox")):
        part = ood.select(split)
        if len(part):
            out.update(evaluate(model, part, name, cfg, decoders, device))
    return out


def load_student(ckpt: Path) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild a student from a trial checkpoint (config.json + model.safetensors)."""
    ckpt = Path(ckpt)
    if not (ckpt / "model.safetensors").is_file() or not (ckpt / "config.json").is_file():
        raise KDSweepError(f"checkpoint {ckpt}: needs model.safetensors and config.json")
    trial_cfg = json.loads((ckpt / "config.json").read_text())
    model = build_model(
        int(trial_cfg.get("layers", 2)),
        int(trial_cfg.get("hidden", 128)),
        int(trial_cfg.get("stack", 3)),
        0.0,
    )
    state = load_file(str(ckpt / "model.safetensors"))
    try:
        model.load_state_dict(
            {k[len("student.") :]: v for k, v in state.items() if k.startswith("student.")}
        )
    except RuntimeError as e:
        raise KDSweepError(f"checkpoint {ckpt}: not an ASR student checkpoint ({e})") from None
    return model.eval(), trial_cfg


def import_teacher(
    cfg: ASRConfig,
    store: Any,
    fingerprint: str,
    feats: dict[str, FeatureSet],
    arpa: Path,
    log: Any = print,
    device: torch.device | str = "cpu",
) -> tuple[Any, bool]:
    """`cfg.teacher_checkpoint` as a stored teacher (an `ASRTeacherStore` entry): imported,
    evaluated once on dev/test (greedy, and beam with the trial's LM and decoding settings)."""
    decoder = Decoders(arpa)

    def beam(logits: Sequence[Tensor], refs: Sequence[str]) -> dict[str, float]:
        return beam_scores(decoder.get(cfg.lm_weight, cfg.word_bonus), logits, refs, cfg.beam_width)

    return store.get_or_import(
        cfg.teacher_checkpoint, fingerprint, feats, log=log, device=device,
        name=cfg.teacher_kind, beam=beam,
    )  # fmt: skip


# The out-of-domain numbers a sweep's test evaluation reports (trials report every subset).
OOD_SUMMARY = ("ood_wer", "ood_cer", "ood_wer_beam", "ood_cer_beam", "ood_cards_wer_beam")
