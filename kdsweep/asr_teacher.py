"""ASR teacher store: a BiLSTM-CTC teacher trained once, its posteriors cached for every trial.

Layout of one entry (`<root>/<id>/`):
    model.safetensors          the teacher's weights
    meta.json                  recipe, corpus fingerprint, dev/test greedy WER/CER, seconds
    posteriors_<split>.pt      float16 logits of every utterance of the split, concatenated over
                               frames ([sum T', V]) + offsets [N+1] + utterance ids: soft/hard KD
                               trials read these and never run the teacher
    hidden_<split>_<layers>.pt the same for hidden states of the mapped layers ([sum T', L, 2H]),
                               built lazily (one teacher pass) the first time a trial needs them
    posteriors_transfer_<key>.pt the logits of a transfer set (unlabeled utterances, content key
                               <key>), and hidden_transfer_<key>_<layers>.pt its hidden states:
                               computed once in a sweep's prepare step, read by every trial

The id hashes (recipe, corpus fingerprint). Entries are published atomically (a tmp dir, then
os.replace) under a file lock, so concurrent trials train a missing teacher exactly once.

The training code here is also the epoch loop of the student trials (`train_epoch`), so a stored
"twin" (the student's architecture and recipe) is exactly an independent trial of its seed.
No ray, no mlflow.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn
from torch.nn.utils.rnn import pad_sequence

from kdsweep.data.speech import CharVocab, FeatureSet, SpecAugment, bucket_batches, pad_collate
from kdsweep.decoding import cer, greedy_decode, wer
from kdsweep.errors import KDSweepError
from kdsweep.errors import NonFiniteLossError as NonFiniteLossError  # re-exported
from kdsweep.filelock import locked
from kdsweep.losses.ctc import ctc_loss
from kdsweep.models.speech import BiLSTMCTC, CTCOutput
from kdsweep.train_utils import warmup_linear
from kdsweep.training import Precision, Stepper, check_finite, optimizer_steps

SPLITS = ("train", "dev", "test")
STORE_VERSION = 1

# loss_fn(student output, batch, aux modules) -> (total loss, {component name: value})
LossFn = Callable[[CTCOutput, dict[str, Any], nn.ModuleDict], tuple[Tensor, dict[str, Tensor]]]


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


def make_optimizer(model: nn.Module, lr: float, weight_decay: float, warmup_ratio: float, total):
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    return opt, warmup_linear(opt, total, warmup_ratio)


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
) -> dict[str, float]:
    """One epoch over `fs` (0-based `epoch`); returns the mean of every loss component.

    `model` holds the network under "student" and extra trainable modules under "aux";
    `extras(indices, frames)` adds per-batch teacher tensors (padded to the student's frames).
    `precision` (autocast + grad scaler, default fp32) and `grad_accum` (micro-batches per
    optimizer step) go to the shared training step (`kdsweep.training`).
    """
    student, aux = model["student"], model["aux"]
    model.train()
    if specaug is not None:
        specaug.train()
    amp = precision or Precision.of("fp32", device)
    stepper = Stepper(model.parameters(), opt, sched, amp.scaler, grad_clip, grad_accum)
    sums: dict[str, float] = {}
    step = -1
    for step, idx in enumerate(epoch_order(fs, batch_size, seed, epoch)):
        x, xl, y, yl = pad_collate([fs[i] for i in idx])
        x = x.to(device)
        if specaug is not None:
            x = specaug(x)
        frames = student.output_lengths(torch.tensor([x.shape[1]])).item()
        batch = {"targets": y, "target_lens": yl, "idx": idx, "epoch": epoch}
        if extras is not None:
            batch.update(extras(idx, frames))
        batch = {k: v.to(device) if isinstance(v, Tensor) else v for k, v in batch.items()}
        with amp.autocast():
            out = student(x, xl, return_hidden=need_hidden)
            loss, parts = loss_fn(out, batch, aux)
        check_finite(loss, parts, epoch + 1, step)
        stepper.backward(loss)
        for k, v in {"loss": loss, **parts}.items():
            sums[k] = sums.get(k, 0.0) + float(v.detach())
    stepper.flush()
    return {k: v / (step + 1) for k, v in sums.items()}


def ctc_only(out: CTCOutput, batch: dict[str, Any], aux: nn.ModuleDict):
    """The independent objective: CTC on the gold transcripts."""
    loss = ctc_loss(out.logits, batch["targets"], out.out_lens, batch["target_lens"])
    return loss, {"loss_ctc": loss}


@torch.no_grad()
def predict(
    model: BiLSTMCTC,
    fs: FeatureSet,
    device: torch.device,
    batch_size: int = 32,
    hidden_layers: Sequence[int] = (),
) -> tuple[list[Tensor], list[Tensor]]:
    """Per-utterance logits [T'_i, V] (float32, CPU, in `fs` order) and, for `hidden_layers`
    (1-based), hidden states [T'_i, L, 2H]."""
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
) -> BiLSTMCTC:
    """Train a BiLSTM-CTC on the gold transcripts: the `independent` trial's loop, no resume."""
    torch.manual_seed(recipe.seed)
    student = build_model(recipe.layers, recipe.hidden, recipe.stack, recipe.dropout, recipe.n_mels)
    model = nn.ModuleDict({"student": student, "aux": nn.ModuleDict()}).to(device)
    train, dev = feats["train"], feats["dev"]
    if len(train) == 0:
        raise KDSweepError(f"{name}: the training split is empty")
    total = recipe.epochs * steps_per_epoch(train, recipe.batch_size)
    opt, sched = make_optimizer(model, recipe.lr, recipe.weight_decay, recipe.warmup_ratio, total)
    specaug = SpecAugment() if recipe.specaugment else None
    for epoch in range(recipe.epochs):
        t0 = time.perf_counter()
        losses = train_epoch(
            model, train, opt, sched, epoch=epoch, seed=recipe.seed,
            batch_size=recipe.batch_size, grad_clip=recipe.grad_clip, loss_fn=ctc_only,
            specaug=specaug, device=device,
        )  # fmt: skip
        scores = greedy_scores(predict(student, dev, device)[0], dev.transcripts)
        log(
            f"{name} epoch {epoch + 1}/{recipe.epochs}: loss {losses['loss']:.3f}, dev WER "
            f"{scores['wer']:.3f}, CER {scores['cer']:.3f} ({time.perf_counter() - t0:.0f} s)"
        )
    return student.eval()


# --------------------------------------------------------------------------------------------
# The store
# --------------------------------------------------------------------------------------------


class StoredASRTeacher:
    """One stored teacher: its model, metrics and cached posteriors / hidden states."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.meta = json.loads((self.path / "meta.json").read_text())
        self.id: str = self.meta["id"]
        self.recipe = ASRTeacherRecipe(**self.meta["recipe"])

    @property
    def metrics(self) -> dict[str, float]:
        return self.meta["metrics"]

    def load_model(self, device: torch.device | str = "cpu") -> BiLSTMCTC:
        r = self.recipe
        model = build_model(r.layers, r.hidden, r.stack, 0.0, r.n_mels)
        model.load_state_dict(load_file(str(self.path / "model.safetensors")))
        return model.to(device).eval()

    def logits(self, split: str, ids: Sequence[str] | None = None) -> list[Tensor]:
        """Cached teacher logits of a split, one float32 [T'_i, V] per utterance (no forward)."""
        return _read_rows(self.path / f"posteriors_{split}.pt", "logits", ids)

    def transfer_logits(
        self, key: str, fs: FeatureSet, device: torch.device | str = "cpu"
    ) -> list[Tensor]:
        """Teacher logits of a transfer set (content key `key`), one [T'_i, V] per utterance:
        computed once (one teacher pass, under a lock, published atomically) into
        `posteriors_transfer_<key>.pt`, then read like a split's posteriors."""
        path = self.path / f"posteriors_transfer_{key}.pt"
        if not path.is_file():
            with locked(self.path / f"{path.name}.lock"):
                if not path.is_file():
                    model = self.load_model(device)
                    logits, _ = predict(model, fs, torch.device(device))
                    _write_rows(path, "logits", logits, fs.ids)
        return _read_rows(path, "logits", fs.ids)

    def hidden(
        self, split: str, layers: Sequence[int], fs: FeatureSet, device: torch.device | str = "cpu"
    ) -> list[Tensor]:
        """Hidden states of teacher `layers` (1-based), one [T'_i, L, 2H] per utterance.

        Built on first use with one teacher pass (under a lock: concurrent trials build it
        once), then read from the cache: float16 on disk, float32 in memory.
        """
        if not layers or any(not 1 <= j <= self.recipe.layers for j in layers):
            raise KDSweepError(
                f"field 'layer_map': teacher {self.id} has layers 1..{self.recipe.layers}, "
                f"got {list(layers)}"
            )
        path = self.path / f"hidden_{split}_{'-'.join(map(str, layers))}.pt"
        if not path.is_file():
            with locked(self.path / f"{path.name}.lock"):
                if not path.is_file():
                    model = self.load_model(device)
                    _, hidden = predict(model, fs, torch.device(device), hidden_layers=layers)
                    _write_rows(path, "hidden", hidden, fs.ids)
        return _read_rows(path, "hidden", fs.ids)


class ASRTeacherStore:
    """Directory of StoredASRTeacher entries keyed by (recipe, corpus fingerprint)."""

    def __init__(self, root: Path):
        self.root = Path(root)

    @staticmethod
    def entry_id(recipe: ASRTeacherRecipe, fingerprint: str) -> str:
        blob = json.dumps(
            {"v": STORE_VERSION, "recipe": asdict(recipe), "data": fingerprint}, sort_keys=True
        )
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def get(self, entry_id: str) -> StoredASRTeacher | None:
        path = self.root / entry_id
        return StoredASRTeacher(path) if (path / "meta.json").is_file() else None

    def get_or_train(
        self,
        recipe: ASRTeacherRecipe,
        fingerprint: str,
        feats: dict[str, FeatureSet],
        log: Callable[[str], None] = print,
        device: torch.device | str = "cpu",
        threads: int = 1,
        name: str = "teacher",
    ) -> tuple[StoredASRTeacher, bool]:
        """The stored teacher for (recipe, corpus); trained only on a miss. Returns (teacher,
        hit). Concurrent callers serialize on a lock; the loser finds the winner's entry."""
        entry_id = self.entry_id(recipe, fingerprint)
        found = self.get(entry_id)
        if found:
            return found, True
        with locked(self.root / f"{entry_id}.lock"):
            found = self.get(entry_id)
            if found:
                return found, True
            arch = f"L{recipe.layers}-H{recipe.hidden}"
            log(f"ASR teacher store: miss for {name} {arch} ({entry_id}); training it once")
            prev = torch.get_num_threads()
            torch.set_num_threads(max(1, threads))
            try:
                t0 = time.perf_counter()
                device = torch.device(device)
                model = train_model(recipe, feats, device, log, name)
                seconds = time.perf_counter() - t0
                path = self._publish(entry_id, model, recipe, fingerprint, feats, seconds, name)
            finally:
                torch.set_num_threads(prev)
            teacher = StoredASRTeacher(path)
            m = teacher.metrics
            log(
                f"ASR teacher store: saved {name} {entry_id}: dev WER {m['dev_wer']:.3f} "
                f"CER {m['dev_cer']:.3f}, test WER {m['test_wer']:.3f} ({seconds:.0f} s)"
            )
            return teacher, False

    def _publish(self, entry_id, model, recipe, fingerprint, feats, seconds, name) -> Path:
        final = self.root / entry_id
        tmp = self.root / f".{entry_id}.tmp{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        save_file(
            {k: v.contiguous().cpu() for k, v in model.state_dict().items()},
            str(tmp / "model.safetensors"),
        )
        device = next(model.parameters()).device
        metrics: dict[str, float] = {}
        for split in SPLITS:
            fs = feats[split]
            logits, _ = predict(model, fs, device)
            _write_rows(tmp / f"posteriors_{split}.pt", "logits", logits, fs.ids)
            if split != "train" and len(fs):
                for k, v in greedy_scores(logits, fs.transcripts).items():
                    metrics[f"{split}_{k}"] = v
        meta = {
            "id": entry_id,
            "name": name,
            "arch": f"L{recipe.layers}-H{recipe.hidden}",
            "recipe": asdict(recipe),
            "data": fingerprint,
            "metrics": metrics,
            "params": sum(p.numel() for p in model.parameters()),
            "train_seconds": seconds,
            "sizes": {s: len(feats[s]) for s in SPLITS},
        }
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2))
        shutil.rmtree(final, ignore_errors=True)  # a half-written leftover never has meta.json
        os.replace(tmp, final)  # atomic publish: readers never see a half-written entry
        return final


# --------------------------------------------------------------------------------------------
# Per-utterance tensors stored as one concatenated float16 tensor + offsets
# --------------------------------------------------------------------------------------------


def _write_rows(path: Path, key: str, rows: Sequence[Tensor], ids: Sequence[str]) -> None:
    lens = torch.tensor([0] + [r.shape[0] for r in rows], dtype=torch.long)
    cat = torch.cat(list(rows)) if rows else torch.zeros(0)
    blob = {key: cat.to(torch.float16), "offsets": torch.cumsum(lens, 0), "ids": list(ids)}
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    torch.save(blob, tmp)
    os.replace(tmp, path)


def _read_rows(path: Path, key: str, ids: Sequence[str] | None) -> list[Tensor]:
    try:
        blob = torch.load(path, weights_only=True)
    except FileNotFoundError:
        msg = f"teacher store: {path} is missing (delete the entry to rebuild)"
        raise KDSweepError(msg) from None
    if ids is not None and list(ids) != blob["ids"]:
        raise KDSweepError(
            f"teacher store: {path} holds other utterances than this split (corpus changed?)"
        )
    data = blob[key].float()
    off = blob["offsets"].tolist()
    return [data[off[i] : off[i + 1]] for i in range(len(off) - 1)]


def frames_needed(lengths: Sequence[int], stack: int) -> list[int]:
    """Frames after stacking for feature lengths (ceil(T / stack))."""
    return [math.ceil(n / stack) for n in lengths]
