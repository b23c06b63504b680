"""ASR teacher store: a BiLSTM-CTC teacher trained once, its posteriors cached for every trial.

Layout of one entry (`<root>/<id>/`):
    model.safetensors          the teacher's weights
    meta.json                  recipe, corpus fingerprint, dev/test greedy WER/CER, seconds
    posteriors_<split>.rows/   float16 logits of every utterance of the split, concatenated over
                               frames ([sum T', V]), as a `kdsweep.rowcache` (memory map +
                               offsets + utterance ids): soft/hard KD trials read these per
                               batch and never run the teacher
    hidden_<split>_<layers>.rows/ the same for hidden states of the mapped layers only
                               ([sum T', L, 2H]), built lazily (one teacher pass) the first time
                               a trial needs them
    posteriors_transfer_<key>.rows/ the logits of a transfer set (unlabeled utterances, content
                               key <key>), and hidden_transfer_<key>_<layers>.rows/ its hidden
                               states: computed once in a sweep's prepare step, read by every trial

A cache that does not match what it is read for (truncated, other utterances, other frame
counts or shape) is rebuilt where the caller passes the features, else refused with a
KDSweepError. Caches of the earlier single-file layout (`<name>.pt`) are converted on first
read, so existing entries keep their ids.

The id hashes (version, recipe, corpus fingerprint); an imported model (`get_or_import`: a
checkpoint the user trained elsewhere) is keyed by its file's content hash + corpus fingerprint
instead, and its meta.json names the source file. Locking, the temp dir + os.replace publish
and the atomic meta.json are `kdsweep.store`'s (so concurrent trials train a missing teacher
exactly once); this module only says what an entry holds. The training itself is
`kdsweep.speech.teacher.train_model` (the student trials' own loop). No ray, no mlflow.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor

from kdsweep.epoch_resume import EpochResume
from kdsweep.errors import KDSweepError
from kdsweep.oom import release_gpu_memory
from kdsweep.rowcache import read_rows, rows_problem, write_rows
from kdsweep.speech import teacher as asr_teacher
from kdsweep.speech.data import FeatureSet
from kdsweep.speech.models import BiLSTMCTC
from kdsweep.speech.teacher import (
    ASRTeacherRecipe,
    build_model,
    frames_needed,
    greedy_scores,
    predict,
)
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

    def logits(self, split: str, ids: Sequence[str] | None = None) -> Sequence[Tensor]:
        """Cached teacher logits of a split, one float32 [T'_i, V] per utterance (no forward),
        read from the float16 memory map when indexed."""
        path = self.path / f"posteriors_{split}.rows"
        _migrate(path, "logits")
        return read_rows(path, ids)

    def transfer_logits(
        self, key: str, fs: FeatureSet, device: torch.device | str = "cpu"
    ) -> Sequence[Tensor]:
        """Teacher logits of a transfer set (content key `key`), one [T'_i, V] per utterance:
        computed once (one teacher pass, under a lock, published atomically) into
        `posteriors_transfer_<key>.rows`, then read like a split's posteriors."""

        def write(tmp: Path) -> None:
            what = "the teacher's transfer-set posteriors"
            logits, _ = predict(self.load_model(device), fs, torch.device(device), what=what)
            write_rows(tmp, logits, fs.ids)
            release_gpu_memory()

        return self._cached(f"posteriors_transfer_{key}", "logits", write, fs)

    def hidden(
        self, split: str, layers: Sequence[int], fs: FeatureSet, device: torch.device | str = "cpu"
    ) -> Sequence[Tensor]:
        """Hidden states of teacher `layers` (1-based, only these are cached), one
        [T'_i, L, 2H] per utterance.

        Built on first use with one teacher pass (under a lock: concurrent trials build it
        once), then read per row from the cache's float16 memory map as float32.
        """
        if not layers or any(not 1 <= j <= self.recipe.layers for j in layers):
            raise KDSweepError(
                f"field 'layer_map': teacher {self.id} has layers 1..{self.recipe.layers}, "
                f"got {list(layers)}"
            )

        def write(tmp: Path) -> None:
            model = self.load_model(device)
            what = "the teacher's hidden states"
            _, hidden = predict(model, fs, torch.device(device), hidden_layers=layers, what=what)
            write_rows(tmp, hidden, fs.ids)
            del model
            release_gpu_memory()  # the teacher's cached blocks go back to the card

        name = f"hidden_{split}_{'-'.join(map(str, layers))}"
        return self._cached(name, "hidden", write, fs, (len(layers), 2 * self.recipe.hidden))

    def _cached(
        self,
        name: str,
        key: str,
        write: Callable[[Path], None],
        fs: FeatureSet,
        tail: tuple[int, ...] | None = None,
    ) -> Sequence[Tensor]:
        """The row cache `<name>.rows` of `fs`, built by `write` when missing, or rebuilt when
        it does not match `fs` (truncated, other utterances or frame counts, other shape)."""
        path = self.path / f"{name}.rows"
        _migrate(path, key)
        expect = {"lengths": frames_needed(fs.lengths, self.recipe.stack), "tail": tail}
        cached_file(path, write, lambda p: rows_problem(p, fs.ids, **expect) is None)
        return read_rows(path, fs.ids, **expect)


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
                resume = EpochResume(self._store.partial(entry_id))
                model = asr_teacher.train_model(
                    recipe, feats, torch.device(device), log, name, resume
                )
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

    def get_or_import(
        self,
        checkpoint: str | Path,
        fingerprint: str,
        feats: dict[str, FeatureSet],
        log: Callable[[str], None] = print,
        device: torch.device | str = "cpu",
        name: str = "teacher",
        beam: Callable[[Sequence[Tensor], Sequence[str]], dict[str, float]] | None = None,
    ) -> tuple[StoredASRTeacher, bool]:
        """The store entry of a BiLSTM-CTC trained elsewhere (`kdsweep.speech.checkpoint_import`):
        imported, evaluated once (dev/test greedy WER/CER, and with `beam` its beam + LM
        scores) and its posteriors cached like a trained teacher's. Keyed by the checkpoint's
        content hash + corpus fingerprint. Returns (teacher, hit)."""
        from kdsweep.speech.checkpoint_import import checkpoint_digest, load_bilstm_ctc
        from kdsweep.speech.data import CharVocab

        n_mels = int(feats["train"].feats[0].shape[-1])
        digest = checkpoint_digest(checkpoint)
        entry_id = content_id({"import": digest}, fingerprint, STORE_VERSION)

        def build(tmp: Path) -> dict:
            model, shape = load_bilstm_ctc(checkpoint, n_mels, len(CharVocab()))
            log(f"ASR teacher store: importing {name} {shape.arch} from {checkpoint} ({entry_id})")
            recipe = ASRTeacherRecipe(
                layers=shape.layers, hidden=shape.hidden, stack=shape.stack, dropout=0.0,
                epochs=0, n_mels=n_mels,
            )  # fmt: skip
            meta = _save(tmp, model.to(device), recipe, fingerprint, feats, 0.0, name, beam)
            meta.update(source=str(Path(checkpoint).expanduser().resolve()), sha256=digest)
            return meta

        path, hit = self._store.get_or_build(entry_id, build)
        teacher = StoredASRTeacher(path)
        if not hit:
            m = teacher.metrics
            log(f"ASR teacher store: imported {name} {entry_id}: dev WER {m['dev_wer']:.3f}, "
                f"test WER {m['test_wer']:.3f}")  # fmt: skip
        return teacher, hit


def _save(tmp: Path, model, recipe, fingerprint, feats, seconds, name, beam=None) -> dict:
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
        write_rows(tmp / f"posteriors_{split}.rows", logits, fs.ids)
        if split != "train" and len(fs):
            for k, v in greedy_scores(logits, fs.transcripts).items():
                metrics[f"{split}_{k}"] = v
            if beam is not None:
                for k, v in beam(logits, fs.transcripts).items():
                    metrics[f"{split}_{k}_beam"] = v
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


def _migrate(path: Path, key: str) -> None:
    """Convert a row cache of the old single-file layout (`<name>.pt`: float16 tensor +
    offsets + ids) into `path`'s, once, so entries keep their ids across the change."""
    legacy = path.with_suffix(".pt")
    if not legacy.is_file() or rows_problem(path) is None:
        return

    def write(tmp: Path) -> None:
        blob = torch.load(legacy, weights_only=True, map_location="cpu")
        off = blob["offsets"].tolist()
        rows = [blob[key][off[i] : off[i + 1]] for i in range(len(off) - 1)]
        write_rows(tmp, rows, blob["ids"])

    cached_file(path, write, lambda p: rows_problem(p) is None)
    legacy.unlink(missing_ok=True)
