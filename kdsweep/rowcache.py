"""Per-utterance tensors of varying length on disk: one float16 memory map + an offsets index.

A row cache is a directory (publish it whole with `kdsweep.store.cached_file`):
    rows.npy     float16 [sum T_i, ...], concatenated over utterances (memory-mapped on read)
    index.json   {"version", "ids": [N], "offsets": [N+1], "shape": rows.npy's shape}

`read_rows` returns `Rows`, a sequence whose item i is utterance i as a float32 tensor read
from the map on access: a trial's resident memory holds the rows of its batches, not the
cache, and trials running at once share the file's pages. `rows_valid` checks a cache against
what its caller expects (complete file, same utterances, frame counts, trailing shape), so a
truncated or stale cache is rebuilt or refused, never read as if it were right.
"""

from __future__ import annotations

import bisect
import operator
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from kdsweep.errors import KDSweepError
from kdsweep.store import npy_matches, read_json, write_json

ROWS_VERSION = 1
DATA, INDEX = "rows.npy", "index.json"


def write_rows(path: Path, rows: Sequence[Tensor], ids: Sequence[str]) -> None:
    """Write `rows` (one [T_i, ...] tensor per id) as a new row-cache directory `path`."""
    if len(rows) != len(ids):
        raise ValueError(f"{len(rows)} rows for {len(ids)} ids")
    path.mkdir(parents=True)
    offsets = [0]
    for r in rows:
        offsets.append(offsets[-1] + int(r.shape[0]))
    tail = tuple(rows[0].shape[1:]) if len(rows) else ()
    shape = (offsets[-1], *tail)
    out = np.lib.format.open_memmap(path / DATA, mode="w+", dtype=np.float16, shape=shape)
    for r, a, b in zip(rows, offsets, offsets[1:]):
        out[a:b] = r.detach().to(torch.float16).cpu().numpy()
    out.flush()
    del out
    index = {"version": ROWS_VERSION, "ids": list(ids), "offsets": offsets, "shape": list(shape)}
    write_json(path / INDEX, index)


def rows_problem(
    path: Path,
    ids: Sequence[str] | None = None,
    lengths: Sequence[int] | None = None,
    tail: Sequence[int] | None = None,
) -> str | None:
    """Why the row cache at `path` is unusable for (ids, row lengths, trailing shape), or None."""
    return _inspect(Path(path), ids, lengths, tail)[0]


def _inspect(path: Path, ids, lengths, tail) -> tuple[str | None, dict[str, Any]]:
    index = read_json(path / INDEX)
    if index is None or index.get("version") != ROWS_VERSION:
        return "is missing or incomplete", {}
    offsets, shape = index["offsets"], tuple(index["shape"])
    if len(offsets) != len(index["ids"]) + 1 or not shape or offsets[-1] != shape[0]:
        return "has an inconsistent index", index
    if not npy_matches(path / DATA, np.float16, shape):
        return "is truncated or does not match its index", index
    if ids is not None and list(ids) != index["ids"]:
        return "holds other utterances than this split (corpus changed?)", index
    if lengths is not None and list(lengths) != np.diff(offsets).tolist():
        return "has other frame counts than these features", index
    if tail is not None and offsets[-1] and tuple(tail) != shape[1:]:  # no rows: no shape
        return f"holds rows of shape {list(shape[1:])}, expected {list(tail)}", index
    return None, index


def read_rows(
    path: Path,
    ids: Sequence[str] | None = None,
    lengths: Sequence[int] | None = None,
    tail: Sequence[int] | None = None,
) -> Rows:
    """The rows of the cache at `path` (checked as in `rows_problem`; KDSweepError if bad)."""
    path = Path(path)
    problem, index = _inspect(path, ids, lengths, tail)
    if problem is not None:
        raise KDSweepError(f"teacher store: {path} {problem} (delete it to rebuild)")
    rows = Rows(path, index["offsets"])
    if rows.map().shape != tuple(index["shape"]):  # replaced between the two reads
        raise KDSweepError(f"teacher store: {path} changed while it was read; run again")
    return rows


class RowSequence(Sequence[Tensor]):
    """A read-only sequence of per-utterance tensors; `a + b` concatenates lazily."""

    def __add__(self, other: Sequence[Tensor]) -> Chain:
        return Chain([self, other])

    def __radd__(self, other: Sequence[Tensor]) -> Chain:
        return Chain([other, self])

    def _index(self, i: Any) -> int:
        i = operator.index(i)
        n = len(self)
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError(f"row {i} of {n}")
        return i


class Rows(RowSequence):
    """Rows of one row cache, read from its memory map on access (float32 copies)."""

    def __init__(self, path: Path, offsets: list[int]):
        self.path = path
        self.offsets = offsets
        self._map: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, i):  # type: ignore[override]
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        i = self._index(i)
        rows = self.map()[self.offsets[i] : self.offsets[i + 1]]
        return torch.from_numpy(np.asarray(rows, dtype=np.float32))

    def map(self) -> np.ndarray:
        """The float16 memory map of all rows (opened once, then shared by every access)."""
        if self._map is None:
            self._map = np.load(self.path / DATA, mmap_mode="r")
        return self._map

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_map": None}  # pickled by path, mapped again where read


class Chain(RowSequence):
    """The concatenation of row sequences (e.g. a split's rows + a transfer set's)."""

    def __init__(self, parts: Sequence[Sequence[Tensor]]):
        self.parts = [q for p in parts for q in (p.parts if isinstance(p, Chain) else [p])]
        self.starts = [0]
        for p in self.parts:
            self.starts.append(self.starts[-1] + len(p))

    def __len__(self) -> int:
        return self.starts[-1]

    def __getitem__(self, i):  # type: ignore[override]
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        i = self._index(i)
        k = bisect.bisect_right(self.starts, i) - 1
        return self.parts[k][i - self.starts[k]]
