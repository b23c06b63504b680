"""The epoch loop every text condition shares: data, teacher, student, resume, eval, report.

A condition supplies only its loss (`LossFn`); what teacher outputs it reads is its config's
`needs` (a `trainables.conditions.Needs`). The training step is `kdsweep.training`.
Teacher logits/features come from the teacher store's cache: soft and hard KD trials never
run the teacher.
"""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from kdsweep.errors import KDSweepError, NonFiniteLossError
from kdsweep.oom import backoff
from kdsweep.paths import cache_root
from kdsweep.text.data import TextSplits, load_text_dataset, tokenize_splits
from kdsweep.text.feature_rows import FeatureRows, mean_hidden_state
from kdsweep.text.models import (
    build_student,
    count_parameters,
    is_shape,
    layer_map,
    model_size_mb,
    parse_size,
    pick_device,
    resolve_backbone,
    resolve_student,
    tokenizer_fingerprint,
)
from kdsweep.text.teacher_store import StoredTeacher, TeacherStore
from kdsweep.text.transfer import augment_tokens, load_transfer_texts, tokenize_texts, tokens_key
from kdsweep.train_utils import (
    batches,
    classification_metrics,
    first_rows,
    make_optimizer,
    mixed_epoch_index,
    predict_logits,
    transfer_count,
    trim_padding,
)
from kdsweep.training import Precision, Stepper, optimizer_steps, set_threads
from trainables import tune_io
from trainables.checkpointing import resume_state, save_state
from trainables.conditions import Aux
from trainables.oom_guard import oom_metrics, recover_oom
from trainables.text.analysis import (
    analysis_due,
    analysis_metrics,
    origin_similarity,
    teacher_similarity,
)
from trainables.text.checkpoints import cascade_teacher, load_student_from_checkpoint
from trainables.text.config import CascadeConfig, TextConfig

__all__ = [
    "LossFn",
    "NonFiniteLossError",
    "TextBatch",
    "attribute_text_checkpoint",
    "prepare_text",
    "run_text_trial",
]


@dataclass
class TextBatch:
    """One training batch as the loss receives it (on the device; padding trimmed to S)."""

    input_ids: torch.Tensor  # [B, S]
    attention_mask: torch.Tensor  # [B, S]
    labels: torch.Tensor  # [B] gold labels; -100 on transfer rows (never read there)
    labeled: torch.Tensor | None = None  # [B] bool, False = transfer row; None: no transfer set
    teacher_logits: torch.Tensor | None = None  # [B, C] when the config's needs.logits
    teacher_hidden: torch.Tensor | None = None  # [B, L, S, H]: mapped teacher layers (needs.hidden)
    teacher_attention: torch.Tensor | None = None  # [B, L, S, S] head-averaged (needs.attention)
    teacher_hidden_mean: torch.Tensor | None = None  # [L, H] mean teacher state (needs.hidden)


# loss_fn(student output, batch, aux) -> (total loss, {component name: value})
LossFn = Callable[[Any, TextBatch, Aux], tuple[torch.Tensor, dict[str, torch.Tensor]]]


@dataclass
class TextData:
    """Everything a text trial reads: splits, tokens, the stored teacher."""

    splits: TextSplits
    tokens: dict[str, dict[str, torch.Tensor]]
    teacher: StoredTeacher
    teacher_hit: bool
    # Transfer set: input_ids / attention_mask / teacher_logits, and for hidden/attention KD
    # teacher_hidden / teacher_attention (float16 memmaps [N, L, S, .]); None without one.
    transfer: dict[str, Any] | None = None
    # The student's tokens (== `tokens` unless a pretrained student has its own tokenizer) and
    # that student's directory / hub name ("" for a shape).
    student_tokens: dict[str, dict[str, torch.Tensor]] | None = None
    student_dir: str = ""
    # A cascade stage: the original (base) teacher, for attribution similarity to it too, and
    # the student's tokenizer when it differs from the original teacher's (None: the same).
    origin: StoredTeacher | None = None
    origin_cross_dir: str | None = None

    def __post_init__(self) -> None:
        if self.student_tokens is None:
            self.student_tokens = self.tokens

    @property
    def cross_tokenizer(self) -> bool:
        return self.student_tokens is not self.tokens


def prepare_text(cfg: TextConfig, log: Callable[[str], None] = print) -> TextData:
    """Load + tokenize the data and get (or fine-tune once) the teacher. Idempotent, cached.

    Sweep drivers call this before any trial starts, so bad input fails early and the teacher is
    trained once, not by the first trials racing each other. A pretrained student with its own
    tokenizer gets its own tokens (`student_tokens`; the same rows in the same order).
    """
    cache = cache_root(cfg.cache_dir)
    splits = load_text_dataset(cfg.data_spec())
    student_dir = resolve_student(cfg.student) if not is_shape(cfg.student) else ""
    tokenizer_dir = resolve_backbone(cfg.teacher)
    tokens = tokenize_splits(splits, tokenizer_dir, cfg.max_len, cache)
    store = TeacherStore(cache / "teachers", cfg.device)
    teacher, hit = store.get_or_train(
        cfg.teacher_recipe(), splits.fingerprint(), splits.label_names, tokens, log=log
    )
    if teacher.meta["label_names"] != splits.label_names:
        raise KDSweepError(
            f"teacher {teacher.id}: labels {teacher.meta['label_names']} do not match dataset "
            f"labels {splits.label_names}"
        )
    origin = None
    if isinstance(cfg, CascadeConfig) and cfg.teacher_checkpoint:
        origin = teacher
        teacher = cascade_teacher(cfg, teacher, splits, cache, log)
        tokenizer_dir = teacher.model_dir  # the stage's teacher reads its own tokenizer's tokens
        tokens = tokenize_splits(splits, tokenizer_dir, cfg.max_len, cache)
    student_tokens = tokens
    if student_dir and tokenizer_fingerprint(student_dir) != tokenizer_fingerprint(tokenizer_dir):
        if cfg.needs.features:
            raise KDSweepError(
                f"field 'student': {cfg.student} has another tokenizer than the teacher, and "
                f"{type(cfg).__name__} matches hidden states/attention position by position "
                "(token positions do not align across tokenizers); use soft or hard KD"
            )
        if cfg.transfer_set:
            raise KDSweepError(
                f"field 'transfer_set': not supported with a student whose tokenizer differs "
                f"from the teacher's ({cfg.student})"
            )
        student_tokens = tokenize_splits(splits, student_dir, cfg.max_len, cache)
    transfer = prepare_transfer(cfg, splits, tokens, tokenizer_dir, teacher, cache)
    origin_cross = None
    if origin is not None:
        own_tokenizer = student_dir or tokenizer_dir
        if tokenizer_fingerprint(own_tokenizer) != tokenizer_fingerprint(origin.model_dir):
            origin_cross = own_tokenizer
    return TextData(splits, tokens, teacher, hit, transfer, student_tokens, student_dir, origin,
                    origin_cross)  # fmt: skip


def prepare_transfer(
    cfg: TextConfig,
    splits: TextSplits,
    tokens: dict,
    tokenizer_dir: str,
    teacher: StoredTeacher,
    cache: Path,
) -> dict[str, Any] | None:
    """The transfer set's tokens + teacher logits (+ the hidden states / attention maps of the
    mapped layers for hidden/attention KD), all cached by content: the teacher labels a
    transfer set once (under a lock), never inside later trials, which read the cache.
    Prepared even at transfer_ratio 0, so a sweep's driver labels it before any trial starts."""
    if not cfg.transfer_set:
        return None
    if cfg.transfer_set == "augment":
        train = first_rows(tokens["train"], cfg.data_subset)
        out = augment_tokens(train, tokenizer_dir, cfg.augment_prob, cfg.transfer_size)
    else:
        held_out = {t for t, _ in splits.dev} | {t for t, _ in splits.test}
        texts = load_transfer_texts(
            cfg.transfer_set,
            splits.unlabeled,
            cfg.text_column,
            held_out,
            cfg.transfer_size,
            cfg.split_seed,
        )
        out = tokenize_texts(texts, tokenizer_dir, cfg.max_len, cache)
    key = tokens_key(out)
    result: dict[str, Any] = {**out, "teacher_logits": teacher.transfer_logits(key, out)}
    if cfg.needs.features:
        from transformers import AutoConfig

        mapped = mapped_teacher_layers(cfg, AutoConfig.from_pretrained(teacher.model_dir))
        for kind in cfg.needs.features:
            result[f"teacher_{kind}"] = teacher.transfer_features(key, kind, mapped, out)
    return result


@recover_oom
def run_text_trial(cfg: TextConfig, loss_fn: LossFn) -> None:
    """Train `cfg.student` for `cfg.epochs`, reporting dev metrics + a checkpoint every epoch.

    The teacher outputs the loss reads are the config's `needs`; each epoch steps the optimizer
    every `cfg.grad_accum` batches (effective batch: batch_size x grad_accum).
    """
    threads = set_threads(cfg.threads or int(tune_io.cpu_share()))
    device = pick_device(cfg.device)
    data = prepare_text(cfg, log=lambda m: None)
    from transformers import AutoConfig

    teacher_config = AutoConfig.from_pretrained(data.teacher.model_dir)
    torch.manual_seed(cfg.seed)
    rows = _train_rows(cfg, data, teacher_config)
    student, model = _build_student(cfg, data, teacher_config)
    steps_per_epoch = optimizer_steps(math.ceil(rows.per_epoch / cfg.batch_size), cfg.grad_accum)
    total = cfg.epochs * steps_per_epoch
    opt, sched = make_optimizer(model, cfg.lr, cfg.weight_decay, cfg.warmup_ratio, total)
    amp = Precision.of(cfg.precision, device)
    stepper = Stepper(model.parameters(), opt, sched, amp.scaler, cfg.grad_clip, cfg.grad_accum)

    # ---- resume: model, optimizer, scheduler, scaler, RNG and the epoch counter
    with tune_io.restored_checkpoints() as ckpts:
        start_epoch, train_seconds = resume_state(ckpts, model, opt, sched, amp.scaler)

    dev = first_rows(data.student_tokens["dev"], cfg.eval_subset)
    static = {
        **count_parameters(student),
        # what always predicting the most frequent training label scores on dev: the floor a
        # noise-aware scheduler never stops a config at (driver/group_asha.py)
        "dev_majority_rate": majority_rate(data.tokens["train"]["labels"], dev["labels"]),
        "size_mb": model_size_mb(student),
        "teacher_dev_accuracy": data.teacher.metrics.get("dev_accuracy", math.nan),
        "threads": threads,
        "effective_batch_size": cfg.effective_batch_size,
        "steps_per_epoch": steps_per_epoch,  # the report's equal-budget check
        **oom_metrics(),  # batch size / accumulation after out-of-memory retries
    }
    if rows.n_transfer:
        static["transfer_rows_per_epoch"] = rows.per_epoch - rows.n_labeled
    analysis_cache: dict[str, Any] = {}  # the teacher's attributions, once per trial
    last_dev: dict[str, float] = {}
    for epoch in range(start_epoch, cfg.epochs):
        t0 = time.perf_counter()
        metrics = _train_epoch(cfg, model, rows, loss_fn, stepper, amp, epoch, device)
        epoch_seconds = time.perf_counter() - t0
        train_seconds += epoch_seconds
        if (epoch + 1) % cfg.eval_every == 0 or epoch + 1 == cfg.epochs or not last_dev:
            dev_m = classification_metrics(_dev_logits(student, dev, device), dev["labels"])
            last_dev = {"dev_accuracy": dev_m["accuracy"], "dev_f1": dev_m["f1"]}
        # Between evaluations the last dev values are repeated: ASHA needs the metric every epoch.
        metrics.update(last_dev)
        metrics.update(
            static,
            epoch=epoch + 1,
            epoch_seconds=epoch_seconds,
            train_seconds=train_seconds,
            lr=sched.get_last_lr()[0],
        )
        if analysis_due(cfg, epoch + 1):
            metrics.update(_analysis(cfg, student, data, analysis_cache))
        ckpt_dir = tune_io.new_checkpoint_dir()
        save_state(ckpt_dir, model, opt, sched, amp.scaler, epoch + 1, train_seconds, cfg, metrics)
        tune_io.report(metrics, ckpt_dir)


def _dev_logits(student: nn.Module, dev: dict, device: torch.device) -> torch.Tensor:
    """The student's dev logits at batch 128, backing off on CUDA out-of-memory on its own
    (halving the training batch would not change this pass)."""
    return backoff(functools.partial(predict_logits, student, dev, device=device), 128, "dev eval")


def _analysis(cfg: TextConfig, student: nn.Module, data: TextData, cache: dict) -> dict:
    """Efficiency, and with `cfg.attributions` the attribution similarity to the teacher (and,
    in a cascade stage, to the original teacher: the *_origin metrics); `analysis_seconds`."""
    t0 = time.perf_counter()
    dev = data.student_tokens["dev"]  # type: ignore[index]
    out = analysis_metrics(cfg, student, dev, data.teacher, cache, _cross(data))
    if cfg.attributions and data.origin is not None:
        out.update(_origin(cfg, student, data, cache))
    out["analysis_seconds"] = time.perf_counter() - t0
    return out


def _origin(cfg: TextConfig, student: nn.Module, data: TextData, cache: dict) -> dict:
    texts = [t for t, _ in data.splits.dev]
    dev = data.student_tokens["dev"]  # type: ignore[index]
    return origin_similarity(cfg, student, dev, data.origin, cache, texts, data.origin_cross_dir)


def attribute_text_checkpoint(cfg: TextConfig, ckpt: Path) -> dict[str, float]:
    """The attr_* metrics of a trial checkpoint's student (as a trial with `attributions` on
    reports them at its analysis epochs): what a search skips, computed where the answer is
    made (the sweep's best trial, sweeps/report.py)."""
    data = prepare_text(cfg, log=lambda m: None)
    model, _ = load_student_from_checkpoint(Path(ckpt), data.teacher)
    dev, cache = data.student_tokens["dev"], {}  # type: ignore[index]
    out = teacher_similarity(cfg, model, dev, data.teacher, cache, _cross(data))
    if data.origin is not None:
        out.update(_origin(cfg, model, data, cache))
    return out


def _cross(data: TextData) -> tuple[list[str], str] | None:
    """(dev texts, student tokenizer) for word-level attribution, if the tokenizers differ."""
    return ([t for t, _ in data.splits.dev], data.student_dir) if data.cross_tokenizer else None


def majority_rate(train_labels: torch.Tensor, eval_labels: torch.Tensor) -> float:
    """Accuracy on `eval_labels` of always predicting the most frequent training label."""
    majority = torch.bincount(train_labels.long()).argmax()
    return float((eval_labels == majority).float().mean()) if len(eval_labels) else math.nan


@dataclass
class TrainRows:
    """A trial's training rows: the labeled prefix (+ cached teacher outputs), then transfer."""

    data: dict[str, Any]
    n_labeled: int
    n_transfer: int  # 0 = no transfer set in use
    per_epoch: int  # rows drawn each epoch: every labeled row + transfer_count transfer rows


def _train_rows(cfg: TextConfig, data: TextData, teacher_config: Any) -> TrainRows:
    """The labeled train prefix with what `cfg.needs` reads, then (if used) the transfer set."""
    needs = cfg.needs
    train = first_rows(data.student_tokens["train"], cfg.data_subset)
    if needs.logits:  # cached logits, aligned row by row with the tokenized split
        train["teacher_logits"] = data.teacher.logits("train")[: len(train["labels"])]
    n_labeled = len(train["labels"])
    mapped = mapped_teacher_layers(cfg, teacher_config)
    for kind in needs.features:
        feats = data.teacher.features("train", kind, mapped, data.tokens["train"])
        train[f"teacher_{kind}"] = FeatureRows((feats[:n_labeled],), kind == "attention")
        if kind == "hidden":  # the teacher's mean state per layer: feature KD centres on it
            mask = data.tokens["train"]["attention_mask"][:n_labeled]
            train["teacher_hidden_mean"] = mean_hidden_state(feats[:n_labeled], mask)
    n_transfer = 0
    if data.transfer is not None and cfg.transfer_ratio > 0:  # appended after the labeled rows
        train = _append_transfer(train, data.transfer)
        n_transfer = len(data.transfer["input_ids"])
    per_epoch = n_labeled + transfer_count(n_labeled, n_transfer, cfg.transfer_ratio)
    return TrainRows(train, n_labeled, n_transfer, per_epoch)


def _build_student(
    cfg: TextConfig, data: TextData, teacher_config: Any
) -> tuple[nn.Module, nn.ModuleDict]:
    """The student (+ projections for hidden-state KD) as {"student", "aux"} on the device."""
    needs = cfg.needs
    teacher_model = data.teacher.load_model() if cfg.student_init == "teacher" else None
    student = build_student(
        cfg.student,
        teacher_config,
        data.splits.num_labels,
        init=cfg.student_init,
        dropout=cfg.dropout,
        eager_attention=needs.attention,
        teacher=teacher_model,
        attention_dropout=0.0 if needs.attention else None,  # like the teacher's eval maps
    )
    del teacher_model
    aux = Aux()
    if needs.hidden:  # student width -> teacher width, one projection per mapped layer
        aux.proj = nn.ModuleList(
            nn.Linear(student.config.hidden_size, teacher_config.hidden_size)
            for _ in mapped_teacher_layers(cfg, teacher_config)
        )
    return student, nn.ModuleDict({"student": student, "aux": aux}).to(pick_device(cfg.device))


def _train_epoch(
    cfg: TextConfig,
    model: nn.ModuleDict,
    rows: TrainRows,
    loss_fn: LossFn,
    stepper: Stepper,
    amp: Precision,
    epoch: int,
    device: torch.device,
) -> dict[str, float]:
    """One epoch (0-based `epoch`); the mean of every loss component over its batches."""
    needs, student, aux = cfg.needs, model["student"], model["aux"]
    model.train()
    if rows.n_transfer:  # every labeled row + a fresh draw of transfer rows, shuffled together
        order = mixed_epoch_index(
            rows.n_labeled, rows.n_transfer, cfg.transfer_ratio, cfg.seed, epoch
        )
        epoch_batches = order.split(cfg.batch_size)
    else:
        epoch_batches = batches(rows.per_epoch, cfg.batch_size, True, cfg.seed, epoch)
    for step, idx in enumerate(epoch_batches):
        batch = _batch(rows.data, idx, device)
        with amp.autocast():
            out = student(
                input_ids=batch.input_ids,
                attention_mask=batch.attention_mask,
                output_hidden_states=needs.hidden,
                output_attentions=needs.attention,
            )
            loss, parts = loss_fn(out, batch, aux)
        stepper.micro_step(loss, parts, epoch, step)
    return stepper.end_epoch()


def evaluate_text_checkpoint(cfg: TextConfig, ckpt: Path, split: str = "test") -> dict[str, float]:
    """Accuracy/F1 of a trial checkpoint on a split (the sweep's final answer uses 'test')."""
    data = prepare_text(cfg, log=lambda m: None)
    model, _ = load_student_from_checkpoint(Path(ckpt), data.teacher)
    tokens = first_rows(data.student_tokens[split], cfg.eval_subset)
    m = classification_metrics(
        predict_logits(model, tokens, 128, torch.device("cpu")), tokens["labels"]
    )
    return {f"{split}_accuracy": m["accuracy"], f"{split}_f1": m["f1"]}


# ---------------------------------------------------------------- helpers
def parse_layers(cfg: TextConfig) -> int:
    """The student's layer count: from its shape, or a pretrained student's config."""
    if is_shape(cfg.student):
        return parse_size(cfg.student)[0]
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(resolve_student(cfg.student)).num_hidden_layers


def mapped_teacher_layers(cfg: TextConfig, teacher_config: Any) -> list[int]:
    """The teacher layer each student layer learns from (uniform, or `cfg.layer_map`): the
    layer set whose cached features a trial reads and the prepare step builds."""
    return layer_map(
        parse_layers(cfg), teacher_config.num_hidden_layers, getattr(cfg, "layer_map", "")
    )


def _append_transfer(train: dict[str, Any], transfer: dict[str, Any]) -> dict[str, Any]:
    """Labeled rows then transfer rows, with a `labeled` mask (transfer labels are -100 and
    never read: CE is masked to labeled rows, KD applies to all). Only what the condition reads
    (present in `train`) is appended; teacher features stay two memmaps (FeatureRows)."""
    n_lab, n_tr = len(train["labels"]), len(transfer["input_ids"])
    out = {
        "labels": torch.cat([train["labels"], torch.full((n_tr,), -100, dtype=torch.long)]),
        "labeled": torch.cat(
            [torch.ones(n_lab, dtype=torch.bool), torch.zeros(n_tr, dtype=torch.bool)]
        ),
    }
    # Token rows may be padded to different widths (train vs transfer): pad the narrower ones
    # with 0 (attention_mask 0, so never attended to; _batch trims every batch anyway).
    width = max(train["input_ids"].shape[1], transfer["input_ids"].shape[1])
    for key in ("input_ids", "attention_mask"):
        a, b = train[key], transfer[key].to(train[key].dtype)
        out[key] = torch.cat([F.pad(a, (0, width - a.shape[1])), F.pad(b, (0, width - b.shape[1]))])
    if "teacher_logits" in train:
        out["teacher_logits"] = torch.cat([train["teacher_logits"], transfer["teacher_logits"]])
    if "teacher_hidden_mean" in train:  # from the labeled rows; the same for every row
        out["teacher_hidden_mean"] = train["teacher_hidden_mean"]
    for key in ("teacher_hidden", "teacher_attention"):
        if key in train:
            if key not in transfer:
                raise KDSweepError(f"transfer set: {key} was not prepared for this condition")
            rows = train[key]
            out[key] = FeatureRows((*rows.parts, transfer[key]), rows.square)
    return out


def _batch(data: dict[str, Any], idx: torch.Tensor, device: torch.device) -> TextBatch:
    ids, mask = trim_padding(data["input_ids"][idx], data["attention_mask"][idx])
    s = ids.shape[1]
    out = {"input_ids": ids.long(), "attention_mask": mask.long(), "labels": data["labels"][idx]}
    for key in ("labeled", "teacher_logits"):  # labeled: False = a teacher-labeled transfer row
        if key in data:
            out[key] = data[key][idx]
    if "teacher_hidden_mean" in data:  # [L, H], not per row
        out["teacher_hidden_mean"] = data["teacher_hidden_mean"]
    for key in ("teacher_hidden", "teacher_attention"):  # FeatureRows -> [B, L, s, H | s]
        if key in data:
            out[key] = data[key].take(idx.numpy(), s)
    return TextBatch(**{k: v.to(device) for k, v in out.items()})
