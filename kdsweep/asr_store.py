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

The id hashes (version, recipe, corpus fingerprint). Locking, the temp dir + os.replace publish
and the atomic meta.json are `kdsweep.store`'s (so concurrent trials train a missing teacher
exactly once); this module only says what an entry holds. The training itself is
`kdsweep.asr_teacher.train_model` (the student trials' own loop). No ray, no mlflow.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor

from kdsweep import asr_teacher
from kdsweep.asr_teacher import ASRTeacherRecipe, build_model, greedy_scores, predict
from kdsweep.data.speech import FeatureSet
from kdsweep.errors import KDSweepError
from kdsweep.models.speech import BiLSTMCTC
from kdsweep.store import META, Store, cached_file, content_id, read_json

SPLITS = ("train", "dev", "test")
STORE_VERSION = 1


class StoredASRTeacher:
    """One stored teacher: its model, metrics and cached posteriors / hidden states."""

    def __init__(self, path: Path):
        self.path = Path(path)
        meta = read_json(self.path / META)
        if meta is None:
            raise KDSweepError(f"ASR teacher store: {self.path} has no readable {META}")
        self.meta: dict = meta
        self.id: str = meta["id"]
        self.recipe = ASRTeacherRecipe(**meta["recipe"])

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

        def write(tmp: Path) -> None:
            logits, _ = predict(self.load_model(device), fs, torch.device(device))
            _write_rows(tmp, "logits", logits, fs.ids)

        path = cached_file(self.path / f"posteriors_transfer_{key}.pt", write)
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

        def write(tmp: Path) -> None:
            model = self.load_model(device)
            _, hidden = predict(model, fs, torch.device(device), hidden_layers=layers)
            _write_rows(tmp, "hidden", hidden, fs.ids)

        path = cached_file(self.path / f"hidden_{split}_{'-'.join(map(str, layers))}.pt", write)
        return _read_rows(path, "hidden", fs.ids)


class ASRTeacherStore:
    """Directory of StoredASRTeacher entries keyed by (recipe, corpus fingerprint)."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self._store = Store(self.root, STORE_VERSION)

    @staticmethod
    def entry_id(recipe: ASRTeacherRecipe, fingerprint: str) -> str:
        return content_id(asdict(recipe), fingerprint, STORE_VERSION)

    def get(self, entry_id: str) -> StoredASRTeacher | None:
        path = self._store.get(entry_id)
        return StoredASRTeacher(path) if path is not None else None

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

        def build(tmp: Path) -> dict:
            arch = f"L{recipe.layers}-H{recipe.hidden}"
            log(f"ASR teacher store: miss for {name} {arch} ({entry_id}); training it once")
            prev = torch.get_num_threads()
            torch.set_num_threads(max(1, threads))
            try:
                t0 = time.perf_counter()
                model = asr_teacher.train_model(recipe, feats, torch.device(device), log, name)
                seconds = time.perf_counter() - t0
                return _save(tmp, model, recipe, fingerprint, feats, seconds, name)
            finally:
                torch.set_num_threads(prev)

        path, hit = self._store.get_or_build(entry_id, build)
        teacher = StoredASRTeacher(path)
        if not hit:
            m = teacher.metrics
            log(
                f"ASR teacher store: saved {name} {entry_id}: dev WER {m['dev_wer']:.3f} "
                f"CER {m['dev_cer']:.3f}, test WER {m['test_wer']:.3f} "
                f"({teacher.meta['train_seconds']:.0f} s)"
            )
        return teacher, hit


def _save(tmp: Path, model, recipe, fingerprint, feats, seconds, name) -> dict:
    """Weights and every split's posteriors into the entry's temp dir; returns its meta."""
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
    return {
        "name": name,
        "arch": f"L{recipe.layers}-H{recipe.hidden}",
        "recipe": asdict(recipe),
        "data": fingerprint,
        "metrics": metrics,
        "params": sum(p.numel() for p in model.parameters()),
        "train_seconds": seconds,
        "sizes": {s: len(feats[s]) for s in SPLITS},
    }


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
