"""End-of-epoch analysis of a text student: efficiency and attribution similarity to the teacher."""

from __future__ import annotations

import hashlib
import os
import time
from typing import Any

import torch
from torch import nn

from kdsweep.filelock import locked
from kdsweep.text.teacher_store import StoredTeacher
from kdsweep.train_utils import first_rows
from trainables.text.config import TextConfig

ATTRIBUTION_STEPS = 16  # Integrated Gradients steps (per example: 16 forward+backward passes)


def analysis_due(cfg: TextConfig, epoch: int) -> bool:
    """Efficiency (+ attributions, when asked) at the final epoch, and every
    `attribution_every` epochs."""
    every = cfg.attribution_every
    return epoch == cfg.epochs or (every > 0 and epoch % every == 0)


def analysis_metrics(
    cfg: TextConfig,
    student: nn.Module,
    dev: dict[str, torch.Tensor],
    teacher: StoredTeacher,
    cache: dict[str, Any],
    cross: tuple[list[str], str] | None = None,
) -> dict[str, float]:
    """Efficiency (params, size on disk, throughput, latency) and, with `cfg.attributions`, IG
    attribution similarity to the teacher on the first `attribution_examples` dev examples.
    Bounded: the probe is fixed and the teacher's attributions are computed once per teacher
    (see below). `analysis_seconds`: the time it all took (the live ETA counts it).

    `cross` = (dev texts, the student's tokenizer dir) when the student's tokenizer differs
    from the teacher's: attributions are then summed per whitespace word and compared per word
    (`kdsweep.text.attribution.word_level_similarity`); `dev` holds the student's tokens."""
    from kdsweep.analysis.efficiency import efficiency_metrics

    t0 = time.perf_counter()
    out = efficiency_metrics(student, first_rows(dev, 32))
    if cfg.attributions:
        out.update(teacher_similarity(cfg, student, dev, teacher, cache, cross))
    out["analysis_seconds"] = time.perf_counter() - t0
    return out


def teacher_similarity(
    cfg: TextConfig,
    student: nn.Module,
    dev: dict[str, torch.Tensor],
    teacher: StoredTeacher,
    cache: dict[str, Any],
    cross: tuple[list[str], str] | None = None,
) -> dict[str, float]:
    """{"attr_cosine", "attr_spearman"} of the student vs `teacher` on the fixed dev probe
    ({} when `attribution_examples` is 0); `cross` as in `analysis_metrics`."""
    from kdsweep.text.attribution import attribution_similarity

    if cfg.attribution_examples <= 0:
        return {}
    if cross is not None:
        return _cross_similarity(cfg, student, dev, teacher, cache, cross)
    probe = first_rows(dev, cfg.attribution_examples)
    if "teacher_attr" not in cache:
        cache["teacher_attr"] = _teacher_attributions(teacher, probe, student)
    return attribution_similarity(
        None, student, probe, len(probe["labels"]), ATTRIBUTION_STEPS,
        teacher_attr=cache["teacher_attr"],
    )  # fmt: skip


def origin_similarity(
    cfg: TextConfig,
    student: nn.Module,
    dev: dict[str, torch.Tensor],
    origin: StoredTeacher,
    cache: dict[str, Any],
    texts: list[str],
    cross_dir: str | None,
) -> dict[str, float]:
    """attr_cosine_origin / attr_spearman_origin: a cascade stage's student vs the cascade's
    original teacher (per word, from `texts`, when the student's tokenizer `cross_dir` is
    not the original teacher's)."""
    cross = (texts, cross_dir) if cross_dir else None
    sims = teacher_similarity(cfg, student, dev, origin, cache.setdefault("origin", {}), cross)
    return {f"{k}_origin": v for k, v in sims.items()}


def _cross_similarity(
    cfg: TextConfig,
    student: nn.Module,
    dev: dict[str, torch.Tensor],
    teacher: StoredTeacher,
    cache: dict[str, Any],
    cross: tuple[list[str], str],
) -> dict[str, float]:
    """Word-level attribution similarity for a student with its own tokenizer."""
    from transformers import AutoTokenizer

    from kdsweep.text.attribution import attribution_similarity, tokenize_with_words

    texts, student_dir = cross
    n = min(cfg.attribution_examples, len(texts))
    if "cross_probe" not in cache:
        labels = dev["labels"][:n]
        t_tok = tokenize_with_words(AutoTokenizer.from_pretrained(teacher.model_dir), texts[:n],
                                    cfg.max_len)  # fmt: skip
        s_tok = tokenize_with_words(AutoTokenizer.from_pretrained(student_dir), texts[:n],
                                    cfg.max_len)  # fmt: skip
        t_tok["labels"], s_tok["labels"] = labels, labels
        cache["cross_probe"] = (t_tok, s_tok, _teacher_attributions(teacher, t_tok, student))
    t_tok, s_tok, t_attr = cache["cross_probe"]
    return attribution_similarity(
        None, student, t_tok, n, ATTRIBUTION_STEPS, teacher_attr=t_attr, student_tokens=s_tok
    )


def _teacher_attributions(
    teacher: StoredTeacher, probe: dict[str, torch.Tensor], student: nn.Module
) -> torch.Tensor:
    """The teacher's IG attributions on the probe, cached beside it in the teacher store: the
    teacher is fixed, so only the first trial (under a lock) loads and runs it."""
    from kdsweep.text.attribution import token_attributions

    key = hashlib.sha256(
        probe["input_ids"].numpy().tobytes() + probe["labels"].numpy().tobytes()
    ).hexdigest()[:12]
    path = teacher.path / f"attr_dev_n{len(probe['labels'])}_s{ATTRIBUTION_STEPS}_{key}.pt"
    with locked(path.with_suffix(".lock")):
        if not path.is_file():
            model = teacher.load_model().to(next(student.parameters()).device)
            attr = token_attributions(model, probe, len(probe["labels"]), ATTRIBUTION_STEPS)
            del model
            tmp = path.with_suffix(".tmp")
            torch.save(attr, tmp)
            os.replace(tmp, path)
    return torch.load(path, weights_only=True)
