"""The epoch loop every speech condition shares: corpus, features, LM, teacher, resume, eval.

A condition supplies only its loss (`LossFn`); which cached teacher outputs it reads is its
config's `needs` (a `trainables.conditions.Needs`). Teacher posteriors and hidden states come
from the ASR teacher store's cache: KD trials never run the teacher. Dev WER/CER (greedy) every
epoch; beam search with the KenLM trigram at the final epoch (and every `beam_every`), plus the
real CMU clips with `eval_cmu` (`trainables.speech.eval`).
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from kdsweep.errors import KDSweepError, NonFiniteLossError
from kdsweep.filelock import locked
from kdsweep.paths import cache_root
from kdsweep.speech.data import (
    MANIFEST_COLUMNS,
    CharVocab,
    FeatureSet,
    SpecAugment,
    Utterance,
    build_synthetic_corpus,
    featurize,
    load_cmu_clips,
    load_librispeech_dir,
    load_manifest,
    load_user_manifest,
)
from kdsweep.speech.decoding import build_lm_corpus, write_arpa
from kdsweep.speech.models import count_parameters
from kdsweep.speech.ngram import resolve_lm
from kdsweep.speech.store import ASRTeacherStore, StoredASRTeacher
from kdsweep.speech.teacher import (
    LossFn,
    SpeechBatch,
    build_model,
    pad_frames,
    steps_per_epoch,
    train_epoch,
)
from kdsweep.speech.transfer import (
    build_synthetic_transfer,
    concat_features,
    features_key,
    file_digests,
    load_audio_source,
    take_rows,
)
from kdsweep.text.models import pick_device
from kdsweep.train_utils import make_optimizer, mixed_epoch_index, transfer_count
from kdsweep.training import Precision, set_threads, torch_threads
from trainables import tune_io
from trainables.checkpointing import resume_state, save_state
from trainables.conditions import Aux, Needs
from trainables.oom_guard import oom_metrics, recover_oom
from trainables.speech.config import ASRConfig
from trainables.speech.eval import (
    OOD_SUMMARY,
    Decoders,
    evaluate,
    evaluate_ood,
    import_teacher,
    load_student,
)
from trainables.speech.eval import beam_scores as beam_scores  # re-exported (sweeps/decode.py)

__all__ = ["LossFn", "NonFiniteLossError", "SpeechBatch", "prepare_asr", "run_asr_trial"]
SPLITS = ("train", "dev", "test")
LM_VERSION = 1


@dataclass
class ASRTransfer:
    """A transfer set: unlabeled features and the teacher's cached outputs on them."""

    feats: FeatureSet  # transcripts "" (no gold labels), split "transfer"
    key: str  # content key of the features (names the teacher's cache files)
    logits: list[Tensor]  # teacher [T'_i, V] per utterance
    hidden: list[Tensor] | None = None  # teacher [T'_i, L, 2H] (self-distillation's MSE)


@dataclass
class ASRData:
    """Everything a speech trial reads: features per split, the LM, the stored teacher."""

    name: str
    feats: dict[str, FeatureSet]
    fingerprint: str
    arpa: Path
    teacher: StoredASRTeacher | None = None
    teacher_hit: bool = True
    ood: FeatureSet | None = None
    sizes: dict[str, int] = field(default_factory=dict)
    transfer: ASRTransfer | None = None


# ------------------------------------------------------------------------------------ data
def load_corpus(cfg: ASRConfig, cache: Path) -> tuple[str, list[Utterance]]:
    """(corpus name, utterances with train/dev/test splits) for `cfg.corpus`."""
    if cfg.domain:
        out_dir = cache / "speech" / "corpora"
        with locked(out_dir / f"{cfg.domain}-{cfg.n_utterances}-{cfg.corpus_seed}.lock"):
            manifest = build_synthetic_corpus(
                out_dir, cfg.n_utterances, cfg.corpus_seed, cfg.domain
            )
        return f"{cfg.domain}{cfg.n_utterances}", load_manifest(manifest)
    path = Path(cfg.corpus).expanduser().resolve()
    if path.is_dir():
        utts = _librispeech(path)
    elif _has_manifest_columns(path):
        utts = load_manifest(path)
    else:
        utts = load_user_manifest(path, cfg.audio_column, cfg.text_column, split="")
    utts = _ensure_splits(utts, str(path))
    return path.stem, utts


def _has_manifest_columns(path: Path) -> bool:
    try:
        header = path.open(encoding="utf-8").readline()
    except OSError as e:
        raise KDSweepError(f"field 'corpus': cannot read {path}: {e}") from None
    cols = [c.strip() for c in header.replace("\t", ",").split(",")]
    return all(c in cols for c in MANIFEST_COLUMNS)


def _librispeech(root: Path) -> list[Utterance]:
    """A LibriSpeech-style folder; sub-folders named *train*/*dev*/*test* give the splits."""
    subs = {s: sorted(p for p in root.iterdir() if p.is_dir() and s in p.name) for s in SPLITS}
    if all(subs.values()):
        return [u for s, dirs in subs.items() for d in dirs for u in load_librispeech_dir(d, s)]
    return load_librispeech_dir(root, split="")


def _ensure_splits(utts: list[Utterance], where: str) -> list[Utterance]:
    """Rows without a train/dev/test split get one from a hash of their id (80/10/10)."""
    out = []
    for u in utts:
        split = u.split
        if split not in SPLITS:
            h = int(hashlib.sha1(u.id.encode()).hexdigest()[:8], 16) % 10
            split = "dev" if h == 0 else "test" if h == 1 else "train"
        out.append(Utterance(u.id, u.path, u.seconds, u.transcript, u.voice, split))
    have = {s: sum(u.split == s for u in out) for s in SPLITS}
    if not all(have.values()):
        raise KDSweepError(f"field 'corpus': {where} needs train, dev and test rows, got {have}")
    return out


def fingerprint(feats: dict[str, FeatureSet]) -> str:
    """Content hash of the features, transcripts and splits (the teacher store's data key)."""
    h = hashlib.sha1()
    for split in SPLITS:
        fs = feats[split]
        h.update(json.dumps([split, fs.ids, fs.transcripts]).encode())
        for f in fs.feats:
            h.update(f.to(torch.float16).numpy().tobytes())
    return h.hexdigest()[:16]


def build_lm(name: str, feats: dict[str, FeatureSet], domain: str | None, cache: Path) -> Path:
    """A trigram ARPA from offline text (the domain's sentences + the training transcripts),
    never containing a dev or test transcript as a sentence. Built once, cached."""
    sources = ("commands",) if domain == "commands" else ("fortunes",)
    held_out = sorted(set(feats["dev"].transcripts) | set(feats["test"].transcripts))
    train = sorted(set(feats["train"].transcripts))
    key = json.dumps({"v": LM_VERSION, "sources": sources, "train": train, "held_out": held_out})
    digest = hashlib.sha1(key.encode()).hexdigest()[:12]
    lm_dir = cache / "speech" / "lm"
    arpa = lm_dir / f"{name}-{'+'.join(sources)}-3gram-{digest}.arpa"
    if arpa.is_file():
        return arpa
    with locked(lm_dir / f"{arpa.name}.lock"):
        if not arpa.is_file():
            train_txt = lm_dir / f"{arpa.stem}.train.txt"
            train_txt.write_text("\n".join(train) + "\n", encoding="utf-8")
            sentences = build_lm_corpus(exclude=held_out, sources=sources, extra_files=[train_txt])
            tmp = arpa.with_name(f".{arpa.name}.tmp")
            write_arpa(sentences, tmp, order=3)
            tmp.replace(arpa)
    return arpa


def prepare_asr(
    cfg: ASRConfig,
    log: Callable[[str], None] = print,
    with_teacher: bool = True,
    threads: int = 0,
) -> ASRData:
    """Corpus (synthesized once), features, LM and the stored teacher this condition learns
    from (trained once). Idempotent and cached: sweep drivers call it before any trial, so bad
    input fails early and the teacher is trained once, not by trials racing each other."""
    cache = cache_root(cfg.cache_dir)
    with torch_threads(threads or cfg.threads or 1):
        name, utts = load_corpus(cfg, cache)
        all_feats = featurize(utts, cache / "speech" / "feats")
        feats = {s: all_feats.select(s) for s in SPLITS}
        arpa = (
            resolve_lm(cfg.lm, cfg.lm_order, cache)
            if cfg.lm
            else build_lm(name, feats, cfg.domain, cache)
        )
        data = ASRData(name, feats, fingerprint(feats), arpa)
        data.sizes = {s: len(feats[s]) for s in SPLITS}
        if cfg.eval_cmu:
            data.ood = featurize(load_cmu_clips(), cache / "speech" / "feats")
        recipe = cfg.stored_teacher_recipe() if with_teacher else None
        if recipe is not None and cfg.teacher_checkpoint:  # a model trained elsewhere
            store = ASRTeacherStore(cache / "asr_teachers")
            data.teacher, data.teacher_hit = import_teacher(
                cfg, store, data.fingerprint, feats, arpa, log, pick_device(cfg.device)
            )
            data.transfer = prepare_transfer(cfg, data, utts, cache, pick_device(cfg.device))
        elif recipe is not None:
            store = ASRTeacherStore(cache / "asr_teachers")
            data.teacher, data.teacher_hit = store.get_or_train(
                recipe,
                data.fingerprint,
                feats,
                log=log,
                device=pick_device(cfg.device),
                threads=threads or cfg.threads or 1,
                name=cfg.teacher_kind,
            )
            data.transfer = prepare_transfer(cfg, data, utts, cache, pick_device(cfg.device))
    return data


def load_transfer_utterances(cfg: ASRConfig, utts: list[Utterance], cache: Path) -> list[Utterance]:
    """The unlabeled utterances of `cfg.transfer_set` (synthesized once for 'synthetic')."""
    if cfg.transfer_set == "synthetic":
        out_dir = cache / "speech" / "transfer"
        n = cfg.transfer_size or cfg.n_utterances  # default: as many as the labeled corpus
        sentences = [u.transcript for u in utts]  # train, dev and test: all excluded
        return build_synthetic_transfer(out_dir, cfg.domain or "", n, sentences, cfg.corpus_seed)
    held_out = file_digests([u for u in utts if u.split in ("dev", "test")])
    return load_audio_source(
        cfg.transfer_set, cfg.audio_column, held_out, cfg.transfer_size, cfg.corpus_seed
    )


def prepare_transfer(
    cfg: ASRConfig, data: ASRData, utts: list[Utterance], cache: Path, device: torch.device
) -> ASRTransfer | None:
    """Features of the transfer set and the stored teacher's outputs on them, both cached by
    content: the teacher labels a transfer set once (under a lock), in the sweep driver's
    prepare step, never inside later trials, which read the cache. Prepared even at
    transfer_ratio 0, so the driver labels it before any trial starts."""
    if not cfg.transfer_set or data.teacher is None:
        return None
    feats = featurize(load_transfer_utterances(cfg, utts, cache), cache / "speech" / "feats")
    key = features_key(feats)
    logits = data.teacher.transfer_logits(key, feats, device)
    layers = cfg.transfer_hidden_layers()
    hidden = None
    if layers:  # self-distillation's MSE: the twin's hidden states, of the labeled rows too
        hidden = data.teacher.hidden(f"transfer_{key}", layers, feats, device)
        data.teacher.hidden("train", layers, data.feats["train"], device)
    return ASRTransfer(feats, key, logits, hidden)


# ------------------------------------------------------------------------------------ trial
@recover_oom
def run_asr_trial(
    cfg: ASRConfig, loss_fn: LossFn, temperature: Callable[[int], float] | None = None
) -> None:
    """Train the student for `cfg.epochs`, reporting dev WER/CER + a checkpoint every epoch.

    The cached teacher outputs the loss reads are the config's `needs`; the optimizer steps
    every `cfg.grad_accum` batches. `temperature(epoch)` (0-based) is the KD temperature of
    that epoch; reported per epoch.
    """
    threads = set_threads(cfg.threads or int(tune_io.cpu_share()))
    device = pick_device(cfg.device)
    data = prepare_asr(cfg, log=lambda m: None, threads=threads)
    torch.manual_seed(cfg.seed)
    student, model = _build_student(cfg, data.teacher, device)
    rows = _train_rows(cfg, data, device)
    opt, sched = make_optimizer(model, cfg.lr, cfg.weight_decay, cfg.warmup_ratio, rows.total)
    amp = Precision.of(cfg.precision, device)
    specaug = SpecAugment().to(device) if cfg.specaugment else None

    # ---- resume: model, optimizer, scheduler, scaler, RNG and the epoch counter
    with tune_io.restored_checkpoints() as ckpts:
        start_epoch, train_seconds = resume_state(ckpts, model, opt, sched, amp.scaler)

    static: dict[str, Any] = {
        "params": count_parameters(student),
        "threads": threads,
        "effective_batch_size": cfg.effective_batch_size,
        "steps_per_epoch": rows.total // cfg.epochs,  # the report's equal-budget check
        **oom_metrics(),  # batch size / accumulation after out-of-memory retries
    }
    if data.teacher is not None:
        static.update({f"teacher_{k}": v for k, v in data.teacher.metrics.items()})
    decoder = Decoders(data.arpa)
    last_dev: dict[str, float] = {}
    for epoch in range(start_epoch, cfg.epochs):
        t0 = time.perf_counter()
        epoch_fs, epoch_extras = rows.epoch(cfg, epoch)
        metrics: dict[str, Any] = train_epoch(
            model, epoch_fs, opt, sched, epoch=epoch, seed=cfg.seed, batch_size=cfg.batch_size,
            grad_clip=cfg.grad_clip, loss_fn=loss_fn, specaug=specaug, device=device,
            extras=epoch_extras, need_hidden=bool(cfg.needs.hidden_layers), precision=amp,
            grad_accum=cfg.grad_accum,
        )  # fmt: skip
        epoch_seconds = time.perf_counter() - t0
        train_seconds += epoch_seconds
        final = epoch + 1 == cfg.epochs
        t1 = time.perf_counter()
        beam = final or (cfg.beam_every > 0 and (epoch + 1) % cfg.beam_every == 0)
        if beam or (epoch + 1) % cfg.eval_every == 0 or not last_dev:
            scores = evaluate(student, data.feats["dev"], "dev", cfg, decoder if beam else None,
                              device)  # fmt: skip
            metrics.update(scores)
            last_dev = {k: scores[k] for k in ("dev_wer", "dev_cer")}
        metrics.update(last_dev)  # repeated between evaluations: ASHA needs it every epoch
        if final and cfg.eval_cmu and data.ood is not None:
            metrics.update(evaluate_ood(student, data.ood, cfg, decoder, device))
        if temperature is not None:
            metrics["temperature"] = temperature(epoch)
        metrics.update(
            static,
            epoch=epoch + 1,
            epoch_seconds=epoch_seconds,
            eval_seconds=time.perf_counter() - t1,
            train_seconds=train_seconds,
            lr=sched.get_last_lr()[0],
        )
        ckpt_dir = tune_io.new_checkpoint_dir()
        save_state(ckpt_dir, model, opt, sched, amp.scaler, epoch + 1, train_seconds, cfg, metrics)
        tune_io.report(metrics, ckpt_dir)


def _build_student(
    cfg: ASRConfig, teacher: StoredASRTeacher | None, device: torch.device
) -> tuple[nn.Module, nn.ModuleDict]:
    """The student (+ projections for hidden-state KD) as {"student", "aux"} on the device."""
    needs = cfg.needs
    student = build_model(cfg.layers, cfg.hidden, cfg.stack, cfg.dropout)
    aux = Aux()
    if needs.hidden_layers and needs.project:
        width = 2 * teacher.recipe.hidden
        aux.proj = nn.ModuleList(nn.Linear(student.hidden_dim, width) for _ in needs.hidden_layers)
    return student, nn.ModuleDict({"student": student, "aux": aux}).to(device)


@dataclass
class TrainRows:
    """The training features (labeled, then a transfer set's) and their cached teacher outputs."""

    feats: FeatureSet
    extras: Any  # extras(indices, frames) -> teacher tensors of a batch, or None
    n_labeled: int
    n_transfer: int  # 0: no transfer set in use
    total: int  # optimizer steps of the whole run (the LR schedule's length)

    def epoch(self, cfg: ASRConfig, epoch: int) -> tuple[FeatureSet, Any]:
        """The rows of one epoch: all of them, or all labeled + a fresh draw of transfer rows."""
        if not self.n_transfer:
            return self.feats, self.extras
        picked = mixed_epoch_index(
            self.n_labeled, self.n_transfer, cfg.transfer_ratio, cfg.seed, epoch
        ).tolist()
        return take_rows(self.feats, picked), _remapped(self.extras, picked)


def _train_rows(cfg: ASRConfig, data: ASRData, device: torch.device) -> TrainRows:
    """Cached teacher outputs aligned utterance by utterance with the training split (then,
    with a transfer set, with its rows: appended after the labeled ones)."""
    train = data.feats["train"]
    transfer = data.transfer if cfg.transfer_ratio > 0 else None
    extras = _teacher_extras(data.teacher, train, cfg.needs, device, transfer)
    n_labeled, n_transfer, epoch_fs = len(train), 0, train
    if transfer is not None:
        n_transfer = len(transfer.feats)
        train = concat_features(train, transfer.feats)
        # every epoch has the same number of rows: labeled + ratio * labeled (capped)
        n_rows = n_labeled + transfer_count(n_labeled, n_transfer, cfg.transfer_ratio)
        epoch_fs = take_rows(train, range(n_rows))
    total = cfg.epochs * steps_per_epoch(epoch_fs, cfg.batch_size, cfg.grad_accum)
    return TrainRows(train, extras, n_labeled, n_transfer, total)


def _teacher_extras(
    teacher, train: FeatureSet, needs: Needs, device: torch.device, transfer: ASRTransfer | None
):
    """extras(indices, frames) -> padded teacher tensors of a batch (None without a teacher).

    With a transfer set, indices >= len(train) are its rows (teacher outputs from its cache),
    and every batch carries `labeled` (bool [B]): CTC on gold transcripts skips the rest.
    """
    if teacher is None or not (
        needs.logits or needs.transcripts or needs.hidden_layers or transfer is not None
    ):
        return None
    logits = teacher.logits("train", train.ids) if needs.logits or needs.transcripts else None
    n_labeled = len(train)
    if transfer is not None and logits is not None:
        logits = logits + transfer.logits
    targets = None
    if needs.transcripts:  # hard KD: greedy teacher transcripts, for transfer rows too
        from kdsweep.speech.teacher import greedy_texts

        vocab = CharVocab()
        targets = [torch.tensor(vocab.encode(t), dtype=torch.long) for t in greedy_texts(logits)]
    hidden = None
    if needs.hidden_layers:
        hidden = teacher.hidden("train", needs.hidden_layers, train, device)
        if transfer is not None:
            if transfer.hidden is None:
                raise KDSweepError("transfer set: teacher hidden states were not prepared")
            hidden = hidden + transfer.hidden

    def extras(idx: list[int], frames: int) -> dict[str, Tensor]:
        """The teacher fields of a `SpeechBatch` (by name)."""
        out: dict[str, Tensor] = {}
        if transfer is not None:
            out["labeled"] = torch.tensor([i < n_labeled for i in idx], dtype=torch.bool)
        if needs.logits:
            out["teacher_logits"] = pad_frames([logits[i] for i in idx], frames)
        if targets is not None:
            rows = [targets[i] for i in idx]
            out["teacher_targets"] = torch.cat(rows)
            out["teacher_target_lens"] = torch.tensor([len(r) for r in rows], dtype=torch.long)
        if hidden is not None:  # [B, T', L, 2H]
            out["teacher_hidden"] = pad_frames([hidden[i] for i in idx], frames)
        return out

    return extras


def _remapped(extras, picked: list[int]):
    """extras of an epoch's row subset: batch indices into the subset -> combined rows."""
    if extras is None:
        return None
    return lambda idx, frames: extras([picked[i] for i in idx], frames)


def evaluate_asr_checkpoint(cfg: ASRConfig, ckpt: Path, split: str = "test") -> dict[str, float]:
    """WER/CER (greedy and beam + LM) of a trial checkpoint on a split (+ the CMU clips with
    eval_cmu); the sweep's final answer uses 'test'."""
    with torch_threads(cfg.threads or 1):
        data = prepare_asr(cfg, log=lambda m: None, with_teacher=False)
        model, _ = load_student(Path(ckpt))
        device = torch.device("cpu")
        decoders = Decoders(data.arpa)
        out = evaluate(model, data.feats[split], split, cfg, decoders, device)
        if cfg.eval_cmu and data.ood is not None:
            ood = evaluate_ood(model, data.ood, cfg, decoders, device)
            out.update({k: v for k, v in ood.items() if k in OOD_SUMMARY})
    return {k: v for k, v in out.items() if math.isfinite(v)}
