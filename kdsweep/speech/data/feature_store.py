"""Per-utterance features on disk: one float16 ``.npy`` memory map + offsets per content.

Layout of ``<cache>/feats-<key>/``: ``feats.npy`` (all frames [sum T, F], float16),
``offsets.npy`` (int64 [n + 1]: utterance i is rows ``offsets[i]:offsets[i+1]``) and
``meta.json`` (the content: key, settings, ids, transcripts, ...), written last. The folder is
built as ``feats-<key>.partial/``: features are computed and saved per chunk of utterances
(``chunk-NNNNN.npz``, each written atomically), so a rerun after a kill continues with the first
missing chunk; the chunks are then copied into the memory map and the folder renamed into place.
A cache whose meta, offsets or file sizes do not match is rebuilt, never read.
"""

from __future__ import annotations

import json
import os
import shutil
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from kdsweep.errors import KDSweepError
from kdsweep.progress import progress

CHUNK_UTTERANCES = 256  # features computed and saved per chunk (bounded memory, resumable)
_FEATS, _OFFSETS, _META, _PLAN = "feats.npy", "offsets.npy", "meta.json", "plan.json"


class MappedFeatures(Sequence[Tensor]):
    """Utterance features [T, F] read on access from float16 memory maps, as float32 tensors.

    Rows may come from several caches (e.g. a labeled corpus, then a transfer set); a trial
    holds only the rows of the batch it is building. Pickles without the open maps.
    """

    def __init__(self, parts: Sequence[tuple[Path, np.ndarray]], index: np.ndarray) -> None:
        self._parts = [(Path(p), np.asarray(off, dtype=np.int64)) for p, off in parts]
        self._index = np.asarray(index, dtype=np.int64).reshape(-1, 2)  # rows of (part, row)
        self._maps: dict[int, np.ndarray] = {}

    @classmethod
    def open(cls, path: Path, offsets: np.ndarray) -> MappedFeatures:
        """All utterances of one cache, in order."""
        n = len(offsets) - 1
        return cls([(path, offsets)], np.stack([np.zeros(n, np.int64), np.arange(n)], axis=1))

    def __len__(self) -> int:
        return len(self._index)

    def __getitem__(self, i: int) -> Tensor:  # type: ignore[override]
        if not isinstance(i, int | np.integer):
            raise TypeError(f"MappedFeatures index must be an int, got {type(i).__name__}")
        part, row = self._index[i]
        path, off = self._parts[part]
        mm = self._maps.get(int(part))
        if mm is None:
            mm = self._maps[int(part)] = np.load(path, mmap_mode="r")
        return torch.from_numpy(np.array(mm[off[row] : off[row + 1]], dtype=np.float32))

    def __iter__(self) -> Iterator[Tensor]:
        return (self[i] for i in range(len(self)))

    @property
    def lengths(self) -> list[int]:
        """Frames per utterance, from the offsets (no feature read)."""
        sizes = [np.diff(off) for _, off in self._parts]
        return [int(sizes[p][r]) for p, r in self._index]

    def take(self, rows: Iterable[int]) -> MappedFeatures:
        """The utterances ``rows``, in that order (still on disk)."""
        picked = np.fromiter(rows, dtype=np.int64)
        return MappedFeatures(self._parts, self._index[picked])

    def __add__(self, other: Sequence[Tensor]) -> Sequence[Tensor]:
        if isinstance(other, MappedFeatures):
            shifted = other._index + np.array([len(self._parts), 0])
            index = np.concatenate([self._index, shifted])
            return MappedFeatures(self._parts + other._parts, index)
        return list(self) + list(other)

    def __radd__(self, other: Sequence[Tensor]) -> list[Tensor]:
        return list(other) + list(self)

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_maps": {}}


def load_or_build(
    cache: Path,
    meta: dict[str, Any],
    n_features: int,
    compute: Callable[[int], Tensor],
    chunk: int = CHUNK_UTTERANCES,
) -> MappedFeatures:
    """The cached features described by ``meta`` (``meta["ids"]``: one per utterance), built
    with ``compute(i) -> [T, n_features]`` if ``cache`` is missing, partial or does not match."""
    problem = _check(cache, meta, n_features)
    if problem is not None:
        if cache.exists():
            warnings.warn(f"features cache {cache}: {problem}; rebuilding it", stacklevel=3)
            shutil.rmtree(cache)
        _build(cache, meta, n_features, compute, chunk)
        problem = _check(cache, meta, n_features)
        if problem is not None:
            raise KDSweepError(f"features cache {cache}: {problem} right after building it")
    return MappedFeatures.open(cache / _FEATS, np.load(cache / _OFFSETS))


def _check(cache: Path, meta: dict[str, Any], n_features: int) -> str | None:
    """Why ``cache`` cannot be used for ``meta`` (None: it can)."""
    if not (cache / _META).is_file():
        return "missing or incomplete"
    try:
        stored = json.loads((cache / _META).read_text())
        offsets = np.load(cache / _OFFSETS)
        feats = np.load(cache / _FEATS, mmap_mode="r")
    except (OSError, ValueError) as exc:
        return f"unreadable ({exc})"
    if stored != meta:
        return "written for other content (meta.json differs)"
    n = len(meta["ids"])
    if offsets.shape != (n + 1,) or offsets[0] != 0 or np.any(np.diff(offsets) < 1):
        return f"offsets.npy does not index {n} utterances"
    if feats.dtype != np.float16 or feats.shape != (int(offsets[-1]), n_features):
        return (
            f"feats.npy is {feats.dtype} {feats.shape}, not float16 ({offsets[-1]}, {n_features})"
        )
    if os.path.getsize(cache / _FEATS) != feats.offset + feats.nbytes:
        return "feats.npy has the wrong size (truncated or appended to)"
    return None


def _build(
    cache: Path,
    meta: dict[str, Any],
    n_features: int,
    compute: Callable[[int], Tensor],
    chunk: int,
) -> None:
    work = cache.with_name(cache.name + ".partial")
    n = len(meta["ids"])
    plan = {"meta": meta, "chunk": chunk}
    if _read_json(work / _PLAN) != plan:  # another content or chunking: start afresh
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        _write_json(work / _PLAN, plan)
    starts = range(0, n, chunk)
    for c, start in enumerate(progress(starts, desc=f"features {cache.name}")):
        path = work / f"chunk-{c:05d}.npz"
        rows = range(start, min(start + chunk, n))
        if _chunk_rows(path) == len(rows):
            continue  # saved before an interruption
        _save_chunk(path, [compute(i) for i in rows])
    _assemble(work, len(starts), n_features)
    _write_json(work / _META, meta)
    for c in range(len(starts)):
        (work / f"chunk-{c:05d}.npz").unlink()
    (work / _PLAN).unlink()
    shutil.rmtree(cache, ignore_errors=True)
    work.rename(cache)


def _save_chunk(path: Path, feats: list[Tensor]) -> None:
    lens = np.array([f.shape[0] for f in feats], dtype=np.int64)
    # float16 halves the cache; after CMVN values are O(1), and fp16's ~1e-3 relative
    # precision is far below the features' own noise. Read back as float32.
    data = torch.cat(feats).to(torch.float16).numpy()
    tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
    with open(tmp, "wb") as fh:
        np.savez(fh, feats=data, lens=lens)
    os.replace(tmp, path)  # a chunk file exists only when complete


def _chunk_rows(path: Path) -> int:
    """Utterances in a saved chunk (-1: missing or unreadable)."""
    try:
        with np.load(path) as z:
            lens = z["lens"]
            ok = z["feats"].shape[0] == int(lens.sum())
    except (OSError, ValueError, KeyError):
        return -1
    return len(lens) if ok else -1


def _assemble(work: Path, n_chunks: int, n_features: int) -> None:
    """Copy the chunks into one memory map; write the offsets."""
    lens = []
    for c in range(n_chunks):
        with np.load(work / f"chunk-{c:05d}.npz") as z:
            lens.append(z["lens"])
    offsets = np.concatenate([[0], np.cumsum(np.concatenate(lens))]).astype(np.int64)
    out = np.lib.format.open_memmap(
        work / _FEATS, mode="w+", dtype=np.float16, shape=(int(offsets[-1]), n_features)
    )
    pos = 0
    for c in range(n_chunks):
        with np.load(work / f"chunk-{c:05d}.npz") as z:
            block = z["feats"]
        out[pos : pos + len(block)] = block
        pos += len(block)
    out.flush()
    del out
    np.save(work / _OFFSETS, offsets)


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _write_json(path: Path, obj: Any) -> None:
    tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
    tmp.write_text(json.dumps(obj, sort_keys=True))
    os.replace(tmp, path)
