"""Content-addressed teacher store: fine-tune once, cache outputs once, share with every trial.

Layout of one entry (`<root>/<id>/`):
    model/              save_pretrained() output (safetensors) + tokenizer
    meta.json           recipe, data fingerprint, label names, dev/test metrics, seconds
    logits_<split>.npy  float32 [N, K]: soft/hard KD trials read these and never run the teacher
    logits_transfer_<key>.npy  the same for a transfer set (key = hash of its tokens)
    feat_<kind>_<split>_<layers>.npy  float16 hidden states / attention maps, built lazily
                        once per layer set
    feat_<kind>_transfer_<key>_<layers>.npy  the same for a transfer set (hidden/attention KD)

The id hashes (recipe, data fingerprint): the same backbone, data and recipe always map to the
same entry, so a second sweep reuses the teacher instead of retraining it.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from kdsweep.errors import KDSweepError, NonFiniteLossError
from kdsweep.filelock import locked
from kdsweep.models.text import load_classifier, pick_device, resolve_backbone
from kdsweep.train_utils import (
    batches,
    classification_metrics,
    predict_logits,
    trim_padding,
    warmup_linear,
)
from kdsweep.training import Precision, Stepper, check_finite

SPLITS = ("train", "dev", "test")


@dataclass(frozen=True)
class TeacherRecipe:
    """How a teacher is fine-tuned; part of its store id."""

    backbone: str = "minilm"
    epochs: int = 2
    lr: float = 5e-5
    batch_size: int = 32
    max_len: int = 64
    seed: int = 0


class StoredTeacher:
    """One stored teacher: its model, metrics and cached outputs."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.meta = json.loads((self.path / "meta.json").read_text())
        self.id: str = self.meta["id"]

    @property
    def model_dir(self) -> str:
        return str(self.path / "model")

    @property
    def metrics(self) -> dict[str, float]:
        return self.meta["metrics"]

    def load_model(self, eager_attention: bool = False) -> torch.nn.Module:
        model = load_classifier(
            self.model_dir, len(self.meta["label_names"]), eager_attention=eager_attention
        )
        return model.eval()

    def logits(self, split: str) -> torch.Tensor:
        """Cached teacher logits of a split, [N, K] float32 (no teacher forward)."""
        return torch.from_numpy(np.load(self.path / f"logits_{split}.npy"))

    def transfer_logits(self, key: str, tokens: dict[str, torch.Tensor]) -> torch.Tensor:
        """Teacher logits of a transfer set (content key `key`), [N, K] float32: computed once
        under a lock into `logits_transfer_<key>.npy`, then read like the splits' logits."""
        path = self.path / f"logits_transfer_{key}.npy"
        if not path.is_file():
            with locked(self.path / f"logits_transfer_{key}.lock"):
                if not path.is_file():
                    device = pick_device("auto")
                    model = self.load_model().to(device)
                    logits = predict_logits(
                        model, {**tokens, "labels": tokens["input_ids"]}, 64, device
                    )
                    tmp = self.path / f".logits_transfer_{key}.tmp.npy"
                    np.save(tmp, logits.numpy().astype(np.float32))
                    os.replace(tmp, path)
        return torch.from_numpy(np.load(path))

    def features(
        self, split: str, kind: str, layers: list[int], tokens: dict[str, torch.Tensor]
    ) -> np.ndarray:
        """Cached hidden states [N, L, S, H] or head-averaged attention [N, L, S, S], float16.

        Built on first use (under a lock, so concurrent trials build it once) with one teacher
        pass, then memory-mapped: a trial pages in only the rows of its batches.
        """
        assert kind in ("hidden", "attention")
        name = f"feat_{kind}_{split}_{'-'.join(map(str, layers))}.npy"
        path = self.path / name
        if not path.is_file():
            with locked(self.path / f"{name}.lock"):
                if not path.is_file():
                    self._build_features(path, kind, layers, tokens)
        return np.load(path, mmap_mode="r")

    def transfer_features(
        self, key: str, kind: str, layers: list[int], tokens: dict[str, torch.Tensor]
    ) -> np.ndarray:
        """`features` of a transfer set (content key `key`, as in `transfer_logits`): the same
        float16 memmap, built once under a lock and published atomically, padded to the
        transfer tokens' own length S (which need not be the train split's)."""
        return self.features(f"transfer_{key}", kind, layers, tokens)

    @torch.no_grad()
    def _build_features(
        self, path: Path, kind: str, layers: list[int], tokens: dict[str, torch.Tensor]
    ) -> None:
        model = self.load_model(eager_attention=kind == "attention")
        device = pick_device("auto")
        model.to(device)
        n, s = tokens["input_ids"].shape
        h = model.config.hidden_size
        shape = (n, len(layers), s, h if kind == "hidden" else s)
        tmp = path.with_suffix(".tmp.npy")
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float16, shape=shape)
        for idx in batches(n, 64, shuffle=False):
            ids = tokens["input_ids"][idx].long().to(device)
            mask = tokens["attention_mask"][idx].long().to(device)
            res = model(
                input_ids=ids,
                attention_mask=mask,
                output_hidden_states=kind == "hidden",
                output_attentions=kind == "attention",
            )
            for j, layer in enumerate(layers):
                if kind == "hidden":  # hidden_states[0] is the embedding output
                    val = res.hidden_states[layer]
                else:  # attentions[layer - 1]: [B, heads, S, S] -> head average
                    val = res.attentions[layer - 1].mean(dim=1)
                out[idx.numpy(), j] = val.float().cpu().numpy().astype(np.float16)
        out.flush()
        del out
        os.replace(tmp, path)


class TeacherStore:
    """Directory of StoredTeacher entries keyed by content hash."""

    def __init__(self, root: Path):
        self.root = Path(root)

    @staticmethod
    def entry_id(recipe: TeacherRecipe, data_fingerprint: str) -> str:
        blob = json.dumps({"recipe": asdict(recipe), "data": data_fingerprint}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def get(self, entry_id: str) -> StoredTeacher | None:
        path = self.root / entry_id
        return StoredTeacher(path) if (path / "meta.json").is_file() else None

    def get_or_train(
        self,
        recipe: TeacherRecipe,
        data_fingerprint: str,
        label_names: list[str],
        tokens: dict[str, dict[str, torch.Tensor]],
        log: Callable[[str], None] = print,
    ) -> tuple[StoredTeacher, bool]:
        """The stored teacher for (recipe, data); fine-tunes it only on a miss.

        Returns (teacher, hit). Concurrent callers serialize on a lock; the loser of the race
        finds the winner's entry and does not train again.
        """
        entry_id = self.entry_id(recipe, data_fingerprint)
        found = self.get(entry_id)
        if found:
            return found, True
        with locked(self.root / f"{entry_id}.lock"):
            found = self.get(entry_id)
            if found:
                return found, True
            log(f"teacher store: miss for {recipe.backbone} ({entry_id}); fine-tuning once")
            # Seeded before the new classifier head is initialised: same recipe, same teacher.
            torch.manual_seed(recipe.seed)
            model = load_classifier(resolve_backbone(recipe.backbone), len(label_names))
            t0 = time.perf_counter()
            finetune(model, tokens, recipe, log)
            seconds = time.perf_counter() - t0
            path = self._save(entry_id, model, recipe.backbone, label_names, tokens, log)
            meta = json.loads((path / "meta.json").read_text())
            meta.update(recipe=asdict(recipe), data=data_fingerprint, train_seconds=seconds)
            (path / "meta.json").write_text(json.dumps(meta, indent=2))
            return StoredTeacher(path), False

    def register(
        self,
        model: torch.nn.Module,
        source: str,
        tokenizer_dir: str,
        label_names: list[str],
        tokens: dict[str, dict[str, torch.Tensor]],
        log: Callable[[str], None] = print,
    ) -> StoredTeacher:
        """Store an already-trained model (a cascade stage's student) as a teacher."""
        entry_id = hashlib.sha256(f"registered|{source}".encode()).hexdigest()[:16]
        found = self.get(entry_id)
        if found:
            return found
        with locked(self.root / f"{entry_id}.lock"):
            return self.get(entry_id) or StoredTeacher(
                self._save(entry_id, model, tokenizer_dir, label_names, tokens, log, source)
            )

    def _save(
        self,
        entry_id: str,
        model: torch.nn.Module,
        tokenizer_src: str,
        label_names: list[str],
        tokens: dict[str, dict[str, torch.Tensor]],
        log: Callable[[str], None],
        source: str = "",
    ) -> Path:
        from transformers import AutoTokenizer

        final = self.root / entry_id
        tmp = self.root / f".{entry_id}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        (tmp / "model").mkdir(parents=True)
        model.save_pretrained(tmp / "model")  # safetensors
        AutoTokenizer.from_pretrained(resolve_backbone(tokenizer_src)).save_pretrained(
            tmp / "model"
        )
        device = next(model.parameters()).device
        metrics = {}
        for split in SPLITS:
            logits = predict_logits(model, tokens[split], 64, device)
            np.save(tmp / f"logits_{split}.npy", logits.numpy().astype(np.float32))
            if split != "train":
                for k, v in classification_metrics(logits, tokens[split]["labels"]).items():
                    metrics[f"{split}_{k}"] = v
        meta = {"id": entry_id, "label_names": label_names, "metrics": metrics, "source": source}
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2))
        os.replace(tmp, final)  # atomic publish: readers never see a half-written entry
        log(
            f"teacher store: saved {entry_id}: "
            + ", ".join(f"{k}={v:.3f}" for k, v in metrics.items())
        )
        return final


def finetune(
    model: torch.nn.Module,
    tokens: dict[str, dict[str, torch.Tensor]],
    recipe: TeacherRecipe,
    log: Callable[[str], None] = print,
) -> None:
    """Plain AdamW fine-tune with linear warm-up/decay; logs dev accuracy each epoch."""
    torch.manual_seed(recipe.seed)
    device = pick_device("auto")
    model.to(device)
    train = tokens["train"]
    n = len(train["labels"])
    if n == 0:
        raise KDSweepError("teacher: the training split is empty")
    steps = recipe.epochs * ((n + recipe.batch_size - 1) // recipe.batch_size)
    opt = torch.optim.AdamW(model.parameters(), lr=recipe.lr, weight_decay=0.01)
    sched = warmup_linear(opt, steps, 0.1)
    stepper = Stepper(model.parameters(), opt, sched, Precision.of("fp32", device).scaler, 1.0)
    for epoch in range(recipe.epochs):
        model.train()
        order = batches(n, recipe.batch_size, shuffle=True, seed=recipe.seed, epoch=epoch)
        for step, idx in enumerate(order):
            ids, mask = trim_padding(train["input_ids"][idx], train["attention_mask"][idx])
            out = model(
                input_ids=ids.long().to(device),
                attention_mask=mask.long().to(device),
                labels=train["labels"][idx].to(device),
            )
            try:
                check_finite(out.loss, {}, epoch + 1, step, "teacher fine-tune")
            except NonFiniteLossError as e:  # before any trial: a clear error line, exit 2
                raise KDSweepError(str(e)) from None
            stepper.backward(out.loss)
        stepper.flush()
        dev = classification_metrics(
            predict_logits(model, tokens["dev"], 64, device), tokens["dev"]["labels"]
        )
        log(f"teacher epoch {epoch + 1}/{recipe.epochs}: dev accuracy {dev['accuracy']:.3f}")
