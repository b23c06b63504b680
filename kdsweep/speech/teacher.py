"""Training a BiLSTM-CTC: the epoch loop shared by stored teachers and student trials.

The training code here is also the epoch loop of the student trials (`train_epoch`), so a stored
"twin" (the student's architecture and recipe) is exactly an independent trial of its seed.
The store of trained teachers and their cached outputs is `kdsweep.speech.store` (which imports
this module, never the other way round). No ray, no mlflow.
"""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import pad_sequence

from kdsweep.epoch_resume import EpochResume
from kdsweep.errors import KDSweepError
from kdsweep.errors import NonFiniteLossError as NonFiniteLossError  # re-exported
from kdsweep.oom import backoff
from kdsweep.progress import Progress
from kdsweep.speech.data import CharVocab, FeatureSet, SpecAugment, bucket_batches, pad_collate
from kdsweep.speech.decoding import cer, greedy_decode, wer
from kdsweep.speech.losses import ctc_loss
from kdsweep.speech.models import BiLSTMCTC, CTCOutput
from kdsweep.train_utils import make_optimizer
from kdsweep.training import Precision, Stepper, optimizer_steps

SPLITS = ("train", "dev", "test")


@dataclass
class SpeechBatch:
    """One training batch as the loss receives it (tensors on the device; T' student frames)."""

    targets: Tensor  # gold transcripts, concatenated (CTC's 1-D form)
    target_lens: Tensor  # [B]
    idx: list[int]  # rows of the epoch's feature set
    epoch: int  # 0-based (a temperature schedule reads it)
    labeled: Tensor | None = None  # [B] bool, False = transfer row; None: no transfer set
    teacher_logits: Tensor | None = None  # [B, T', V] frame logits (needs.logits)
    teacher_targets: Tensor | None = None  # greedy teacher transcripts, concatenated (hard KD)
    teacher_target_lens: Tensor | None = None  # [B]
    teacher_hidden: Tensor | None = None  # [B, T', L, 2H]: the matched teacher layers

    def to(self, device: torch.device) -> SpeechBatch:
        moved = {f.name: getattr(self, f.name) for f in fields(self)}
        return SpeechBatch(**{k: v.to(device) if isinstance(v, Tensor) else v
                              for k, v in moved.items()})  # fmt: skip


# loss_fn(student output, batch, aux modules) -> (total loss, {component name: value})
LossFn = Callable[[CTCOutput, SpeechBatch, Any], tuple[Tensor, dict[str, Tensor]]]


@dataclass(frozen=True)
class ASRTeacherRecipe:
    """Architecture + training recipe of a stored BiLSTM-CTC; part of its store id."""

    layers: int = 3
    hidden: int = 256
    stack: int = 3
    dropout: float = 0.1
    epochs: int = 15
    lr: float = 2e-3
    batch_size: int = 32
    weight_decay: float = 0.01
    warmup_ratio: float = 0.05
    grad_clip: float = 1.0
    specaugment: bool = False
    seed: int = 1
    n_mels: int = 80


def build_model(layers: int, hidden: int, stack: int, dropout: float, n_mels: int = 80):
    """The BiLSTM-CTC over the 29-symbol character vocabulary."""
    return BiLSTMCTC(n_mels, hidden, layers, len(CharVocab()), stack, dropout)


# --------------------------------------------------------------------------------------------
# The epoch loop shared by stored teachers and student trials
# --------------------------------------------------------------------------------------------


def epoch_order(fs: FeatureSet, batch_size: int, seed: int, epoch: int) -> list[list[int]]:
    """Length-bucketed batches; the order is a pure function of (seed, epoch), so a resumed run
    sees exactly the batches it would have seen without the interruption."""
    return bucket_batches(fs.lengths, batch_size, shuffle=True, seed=seed * 100_003 + epoch)


def steps_per_epoch(fs: FeatureSet, batch_size: int, grad_accum: int = 1) -> int:
    """Optimizer steps of one epoch over `fs` (batches, grouped by `grad_accum`)."""
    return optimizer_steps(len(epoch_order(fs, batch_size, 0, 0)), grad_accum)


def pad_frames(rows: Sequence[Tensor], length: int) -> Tensor:
    """Per-utterance [T_i, ...] tensors -> [B, length, ...] (zero padded, float32)."""
    out = pad_sequence([r.float() for r in rows], batch_first=True)
    if out.shape[1] < length:
        pad = [0, 0] * (out.dim() - 2) + [0, length - out.shape[1]]
        out = nn.functional.pad(out, pad)
    return out[:, :length]


def train_epoch(
    model: nn.ModuleDict,
    fs: FeatureSet,
    opt: torch.optim.Optimizer,
    sched: Any,
    *,
    epoch: int,
    seed: int,
    batch_size: int,
    grad_clip: float,
    loss_fn: LossFn,
    specaug: nn.Module | None,
    device: torch.device,
    extras: Callable[[list[int], int], dict[str, Any]] | None = None,
    need_hidden: bool = False,
    precision: Precision | None = None,
    grad_accum: int = 1,
    on_batch: Callable[[float], None] | None = None,
) -> dict[str, float]:
    """One epoch over `fs` (0-based `epoch`); returns the mean of every loss component.

    `model` holds the network under "student" and extra trainable modules under "aux";
    `extras(indices, frames)` adds per-batch teacher tensors (padded to the student's frames).
    `precision` (autocast + grad scaler, default fp32) and `grad_accum` (micro-batches per
    optimizer step) go to the shared training step (`kdsweep.training`); `on_batch(loss)` is
    called after every batch (a progress bar).
    """
    student, aux = model["student"], model["aux"]
    model.train()
    if specaug is not None:
        specaug.train()
    amp = precision or Precision.of("fp32", device)
    stepper = Stepper(model.parameters(), opt, sched, amp.scaler, grad_clip, grad_accum)
    for step, idx in enumerate(epoch_order(fs, batch_size, seed, epoch)):
        x, xl, y, yl = pad_collate([fs[i] for i in idx])
        x = x.to(device)
        if specaug is not None:
            x = specaug(x)
        frames = student.output_lengths(torch.tensor([x.shape[1]])).item()
        teacher = extras(idx, frames) if extras is not None else {}
        batch = SpeechBatch(y, yl, idx, epoch, **teacher).to(device)
        with amp.autocast():
            out = student(x, xl, return_hidden=need_hidden)
            loss, parts = loss_fn(out, batch, aux)
        stepper.micro_step(loss, parts, epoch, step)
        if on_batch is not None:
            on_batch(float(loss.detach()))
    return stepper.end_epoch()


def ctc_only(out: CTCOutput, batch: SpeechBatch, aux: Any):
    """The independent objective: CTC on the gold transcripts."""
    loss = ctc_loss(out.logits, batch.targets, out.out_lens, batch.target_lens)
    return loss, {"loss_ctc": loss}


def predict(
    model: BiLSTMCTC,
    fs: FeatureSet,
    device: torch.device,
    batch_size: int = 32,
    hidden_layers: Sequence[int] = (),
    what: str = "a speech model's outputs",
) -> tuple[list[Tensor], list[Tensor]]:
    """Per-utterance logits [T'_i, V] (float32, CPU, in `fs` order) and, for `hidden_layers`
    (1-based), hidden states [T'_i, L, 2H]. The batch size backs off on CUDA out-of-memory on
    its own (`kdsweep.oom.backoff`; `what` names the pass in its messages)."""
    run = functools.partial(_predict, model, fs, device, hidden_layers=hidden_layers)
    return backoff(run, batch_size, what)


@torch.no_grad()
def _predict(
    model: BiLSTMCTC,
    fs: FeatureSet,
    device: torch.device,
    batch_size: int,
    hidden_layers: Sequence[int] = (),
) -> tuple[list[Tensor], list[Tensor]]:
    model.eval()
    logits: list[Tensor | None] = [None] * len(fs)
    hidden: list[Tensor | None] = [None] * len(fs)
    for idx, (x, xl, _, _) in fs.indexed_batches(batch_size, shuffle=False):
        out = model(x.to(device), xl, return_hidden=bool(hidden_layers))
        lg = out.logits.float().cpu()
        hs = [out.hidden_states[j - 1].float().cpu() for j in hidden_layers]
        for b, i in enumerate(idx):
            n = int(out.out_lens[b])
            logits[i] = lg[b, :n]
            if hidden_layers:
                hidden[i] = torch.stack([h[b, :n] for h in hs], dim=1)
    return logits, (hidden if hidden_layers else [])  # type: ignore[return-value]


def greedy_texts(logits: Sequence[Tensor], vocab: CharVocab | None = None) -> list[str]:
    """Best-path transcripts of per-utterance [T', V] logits."""
    vocab = vocab or CharVocab()
    return [greedy_decode(lg[None], torch.tensor([lg.shape[0]]), vocab)[0] for lg in logits]


def greedy_scores(logits: Sequence[Tensor], refs: Sequence[str]) -> dict[str, float]:
    hyps = greedy_texts(logits)
    return {"wer": wer(refs, hyps), "cer": cer(refs, hyps)}


def train_model(
    recipe: ASRTeacherRecipe,
    feats: dict[str, FeatureSet],
    device: torch.device,
    log: Callable[[str], None] = print,
    name: str = "teacher",
    resume: EpochResume | None = None,
) -> BiLSTMCTC:
    """Train a BiLSTM-CTC on the gold transcripts: the `independent` trial's loop.

    A progress bar runs over the batches (loss, dev WER per epoch). With `resume`, every epoch
    is checkpointed there (weights, optimizer, schedule, RNG) and a rerun after a kill continues
    after the last complete epoch; on the CPU the result equals an uninterrupted run's."""
    torch.manual_seed(recipe.seed)
    student = build_model(recipe.layers, recipe.hidden, recipe.stack, recipe.dropout, recipe.n_mels)
    model = nn.ModuleDict({"student": student, "aux": nn.ModuleDict()}).to(device)
    train, dev = feats["train"], feats["dev"]
    if len(train) == 0:
        raise KDSweepError(f"{name}: the training split is empty")
    per_epoch = len(epoch_order(train, recipe.batch_size, 0, 0))
    total = recipe.epochs * steps_per_epoch(train, recipe.batch_size)
    opt, sched = make_optimizer(model, recipe.lr, recipe.weight_decay, recipe.warmup_ratio, total)
    specaug = SpecAugment() if recipe.specaugment else None
    state = resume.load(model) if resume is not None else None
    done = 0
    if state is not None:
        opt.load_state_dict(state["opt"])
        sched.load_state_dict(state["sched"])
        done = int(state["epoch"])
        log(f"{name}: resuming after epoch {done}/{recipe.epochs}")
    with Progress((recipe.epochs - done) * per_epoch, f"{name} training") as bar:
        for epoch in range(done, recipe.epochs):
            t0 = time.perf_counter()
            info = f"epoch {epoch + 1}/{recipe.epochs}"
            losses = train_epoch(
                model, train, opt, sched, epoch=epoch, seed=recipe.seed,
                batch_size=recipe.batch_size, grad_clip=recipe.grad_clip, loss_fn=ctc_only,
                specaug=specaug, device=device,
                on_batch=lambda loss, info=info: bar.update(1, info=f"{info}, loss {loss:.3f}"),
            )  # fmt: skip
            scores = greedy_scores(predict(student, dev, device)[0], dev.transcripts)
            bar.update(0, info=f"{info}, dev WER {scores['wer']:.3f}")
            if resume is not None:
                resume.save(
                    epoch + 1, model, {"opt": opt.state_dict(), "sched": sched.state_dict()}
                )
            log(
                f"{name} epoch {epoch + 1}/{recipe.epochs}: loss {losses['loss']:.3f}, dev WER "
                f"{scores['wer']:.3f}, CER {scores['cer']:.3f} ({time.perf_counter() - t0:.0f} s)"
            )
    return student.eval()


def frames_needed(lengths: Sequence[int], stack: int) -> list[int]:
    """Frames after stacking for feature lengths (ceil(T / stack))."""
    return [math.ceil(n / stack) for n in lengths]
