"""Driver-side preparation before any trial: data and teacher (trained once), checks, and the
log line + MLflow tags that describe them (trainables return data only; this formats it)."""

from __future__ import annotations

import math
from typing import Any

from driver.lm_preparation import prepare_lm_sweep
from driver.space import SweepSpace
from kdsweep.gpu import run_isolated
from kdsweep.text.data import describe
from trainables.speech.loop import prepare_asr
from trainables.text.loop import prepare_text


def _prepare_text(cfg: Any, log: Any) -> dict[str, Any]:
    data = prepare_text(cfg, log)
    t = data.teacher
    how = "reused from" if data.teacher_hit else "stored in"
    source = t.meta.get("source") or cfg.teacher
    dev, test = t.metrics.get("dev_accuracy", math.nan), t.metrics.get("test_accuracy", math.nan)
    split = data.splits
    log(
        f"[kdsweep] teacher {t.id} ({source}) {how} the teacher store: dev accuracy {dev:.3f}, "
        f"test {test:.3f}; data {split.name}: {len(split.train)}/{len(split.dev)}/"
        f"{len(split.test)}, {split.num_labels} labels"
    )
    log("[kdsweep] " + describe(split))  # class counts and text lengths per split
    tags = {"teacher_id": t.id, "teacher": cfg.teacher, "dev_examples": str(len(split.dev))}
    tags.update({f"teacher_{k}": f"{v:.4f}" for k, v in t.metrics.items()})
    # its fine-tune's seconds (0: used as it is), amortised over its trials by the report
    tags["teacher_train_seconds"] = f"{float(t.meta.get('train_seconds', 0.0)):.1f}"
    for key, warning in text_warnings(cfg, data).items():  # printed and tagged, never silent
        log(f"[kdsweep] warning: {warning}")
        tags[f"warning.{key}"] = warning
    return {"tags": tags, "teacher_hit": data.teacher_hit}


def text_warnings(cfg: Any, data: Any) -> dict[str, str]:
    """Sanity checks on the prepared data and teacher: a teacher no better than always
    predicting the majority class, and the share of train/dev texts cut at `max_len` tokens."""
    from transformers import AutoTokenizer

    from kdsweep.analysis.sanity import length_warning, teacher_warning
    from trainables.text.loop import majority_rate

    out: dict[str, str] = {}
    labels = data.tokens["dev"]["labels"]
    acc = data.teacher.metrics.get("dev_accuracy", math.nan)
    rate = majority_rate(data.tokens["train"]["labels"], labels)
    if math.isfinite(acc) and (w := teacher_warning(acc, len(labels), rate)):
        out["teacher"] = w
    tokenizer = AutoTokenizer.from_pretrained(data.teacher.model_dir)
    for split in ("train", "dev"):
        texts = [text for text, _ in getattr(data.splits, split)]
        lengths = [len(ids) for ids in tokenizer(texts, truncation=False)["input_ids"]]
        w = length_warning(lengths, cfg.max_len, split, "max_len", unit="tokens")
        if w:
            out[f"truncated_{split}"] = w
    return out


def _prepare_asr(cfg: Any, log: Any) -> dict[str, Any]:
    data = prepare_asr(cfg, log)
    n = data.sizes
    msg = f"[kdsweep] corpus {data.name}: {n['train']}/{n['dev']}/{n['test']} utterances"
    tags = {"corpus": data.name, "corpus_fingerprint": data.fingerprint, "lm": data.arpa.name}
    t, beam = data.teacher, {}
    if t is not None:
        kind = cfg.teacher_kind  # "teacher" (the big one) or "twin" (self-distillation)
        how = "reused from" if data.teacher_hit else "stored in"
        m = t.metrics
        msg += (
            f"; {kind} {t.id} ({t.meta['arch']}) {how} the ASR teacher store: dev WER "
            f"{m['dev_wer']:.3f}, test WER {m['test_wer']:.3f}"
        )
        if "dev_wer_beam" in m:  # an imported model is also scored with beam search + the LM
            msg += f" (beam + LM: dev {m['dev_wer_beam']:.3f}, test {m['test_wer_beam']:.3f})"
        tags.update({f"{kind}_id": t.id, f"{kind}_arch": t.meta["arch"]})
        tags.update({f"{kind}_{k}": f"{v:.4f}" for k, v in m.items()})
        if "dev_wer_beam" not in m:  # trained here: stored with greedy numbers only
            beam = teacher_beam(cfg, data)
            tags.update({f"{kind}_{k}": f"{v:.4f}" for k, v in beam.items()})
        tags[f"{kind}_train_seconds"] = f"{float(t.meta.get('train_seconds', 0.0)):.1f}"
    if data.transfer is not None:  # labeled by the teacher here, once, before any trial
        tr = data.transfer
        msg += f"; transfer set {cfg.transfer_set}: {len(tr.feats)} utterances ({tr.key})"
        tags.update({"transfer_key": tr.key, "transfer_utterances": str(len(tr.feats))})
    log(msg)
    for key, warning in asr_warnings(cfg, data, beam).items():  # printed and tagged, never silent
        log(f"[kdsweep] warning: {warning}")
        tags[f"warning.{key}"] = warning
    return {"tags": tags, "teacher_hit": data.teacher_hit}


def teacher_beam(cfg: Any, data: Any) -> dict[str, float]:
    """The stored teacher's (or twin's) dev beam + LM WER/CER from its cached posteriors, with
    the sweep's decoding settings: the report puts it next to the students' (a teacher trained
    here is stored with greedy numbers only)."""
    from trainables.speech.eval import Decoders, beam_scores

    fs = data.feats["dev"]
    if not len(fs):
        return {}
    decoder = Decoders(data.arpa).get(cfg.lm_weight, cfg.word_bonus)
    b = beam_scores(decoder, data.teacher.logits("dev", fs.ids), fs.transcripts, cfg.beam_width)
    return {"dev_wer_beam": b["wer"], "dev_cer_beam": b["cer"]}


def asr_warnings(cfg: Any, data: Any, beam: dict[str, float] | None = None) -> dict[str, str]:
    """A teacher no better than an empty transcript; utterances of train/dev that CTC cannot
    align at the student's frame stacking. `beam`: the teacher's beam + LM dev scores."""
    from kdsweep.analysis.sanity import asr_teacher_warning, ctc_dropped_warning
    from kdsweep.speech.teacher import frames_needed

    out: dict[str, str] = {}
    if data.teacher is not None:
        m = {**data.teacher.metrics, **(beam or {})}
        wer, wer_beam = m.get("dev_wer", math.nan), m.get("dev_wer_beam", math.nan)
        if w := asr_teacher_warning(wer, wer_beam, cfg.teacher_kind):
            out["teacher"] = w
    for split in ("train", "dev"):
        fs = data.feats[split]
        frames = frames_needed(fs.lengths, cfg.stack)
        targets = [t.tolist() for t in fs.targets]
        if w := ctc_dropped_warning(frames, targets, split, cfg.stack):
            out[f"ctc_dropped_{split}"] = w
    return out


# Driver-side preparation per task (data + teacher, before any trial starts).
PREPARERS: dict[str, Any] = {"text": _prepare_text, "asr": _prepare_asr, "lm": prepare_lm_sweep}


def prepare(space: SweepSpace, log=print) -> dict[str, Any]:
    """Driver-side preparation before any trial: data, teacher (trained once), checks.

    When it will use a GPU (one is visible and `device` is not cpu) it runs in a child process:
    the teacher's fine-tune and passes leave no CUDA context and no cached memory in the
    driver, which holds neither for the rest of the sweep (the memory probe and the trials
    find the card as free as it was)."""
    if _on_gpu(space):
        return run_isolated(prepare_here, space, timeout=PREPARE_TIMEOUT)
    return prepare_here(space, log)


PREPARE_TIMEOUT = 7 * 24 * 3600.0  # a teacher fine-tune may take long; Ctrl-C still stops it


def _on_gpu(space: SweepSpace) -> bool:
    if space.fixed.get("device", "auto") == "cpu":
        return False
    import torch

    return torch.cuda.device_count() > 0  # counts without creating a CUDA context


def prepare_here(space: SweepSpace, log=print) -> dict[str, Any]:
    """`prepare` in this process."""
    first = {k: (args[0]) for k, (kind, args) in space.dists.items()}
    out: dict[str, Any] = {}
    # asr: conditions learn from different stored models (big teacher, the student's twin);
    # lm: seqkd reads the teacher's continuations, generated here too
    for cond in space.conditions if space.task in ("asr", "lm") else space.conditions[:1]:
        cfg_dict = {**space.fixed, **first, "task": space.task, "condition": cond}
        if cond in space.own:  # a condition's own params (`conditions:` in the YAML) win
            own = space.own[cond]
            cfg_dict |= own.fixed | {k: args[0] for k, (_, args) in own.dists.items()}
        cls = space.config_class(cond)
        cfg = cls.from_dict({k: v for k, v in cfg_dict.items() if k in cls.field_names()})
        prep = PREPARERS[space.task](cfg, log)
        out = {**out, **prep, "tags": {**out.get("tags", {}), **prep.get("tags", {})}}
    return out
