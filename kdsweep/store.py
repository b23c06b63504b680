"""Content-addressed store: each entry is built once, under a lock, and published atomically.

An entry is a directory `<root>/<id>/` whose id hashes (recipe, data fingerprint): the same
recipe on the same data always maps to the same entry. A builder fills a temp directory next
to the final one (`<root>/.<id>.tmp`), writes `meta.json` (with the id and the store version)
last, fsyncs, and moves it into place with one `os.replace`: a reader sees the whole entry or
none of it. `get` ignores anything without a valid `meta.json` of this id and version (a
crashed builder's leftovers, an older layout), and `get_or_build` rebuilds it.

Files derived later inside an entry (a transfer set's logits, hidden states of a layer set) use
`cached_file`: built once under the file's own lock, published the same way. No ray, no mlflow.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from kdsweep.filelock import locked

META = "meta.json"


def content_id(recipe: Mapping[str, Any], data: str, version: int | None = None) -> str:
    """Short sha256 hex of stable JSON of (recipe, data fingerprint[, version])."""
    payload: dict[str, Any] = {"recipe": dict(recipe), "data": data}
    if version is not None:
        payload["v"] = version
    blob = json.dumps(payload, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def read_json(path: Path) -> dict[str, Any] | None:
    """The JSON object at `path`, or None when it is missing or not a complete JSON object."""
    try:
        obj = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    return obj if isinstance(obj, dict) else None


def write_json(path: Path, obj: Any) -> None:
    """Write JSON atomically and durably: a temp file beside it, fsync, then os.replace."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}-{threading.get_ident()}")
    try:
        with tmp.open("w") as fh:
            json.dump(obj, fh, indent=2)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    _fsync_dir(path.parent)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_tree(path: Path) -> None:
    files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
    for f in files:
        with f.open("rb") as fh:
            os.fsync(fh.fileno())


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def publish(tmp: Path, final: Path) -> None:
    """Move a fully written file or directory `tmp` to `final` in one rename (after fsync).

    A stale `final` (half-published, other version, failed validation) is first renamed aside
    and then deleted, so `final` is never a mixture of the two."""
    _fsync_tree(tmp)
    if final.is_dir() and not final.is_symlink():
        old = final.with_name(f".{final.name}.old{os.getpid()}-{threading.get_ident()}")
        _remove(old)
        os.replace(final, old)
        _remove(old)
    os.replace(tmp, final)
    _fsync_dir(final.parent)


def cached_file(
    path: Path, write: Callable[[Path], None], valid: Callable[[Path], bool] | None = None
) -> Path:
    """`path`, built once by `write(tmp)` under the lock `<path>.lock` and published atomically.

    `tmp` keeps `path`'s suffix (np.save keeps the name); `write` may create a file or a
    directory. `valid(path)` (default: it exists) decides whether a present file is usable;
    an unusable one is rebuilt, never returned."""
    path = Path(path)
    ok = valid or (lambda p: p.exists())
    if ok(path):
        return path
    with locked(path.with_name(f"{path.name}.lock")):
        if not ok(path):
            tmp = path.with_name(f".{path.stem}.tmp{path.suffix}")
            _remove(tmp)
            try:
                write(tmp)
                publish(tmp, path)
            finally:
                _remove(tmp)
    return path


class Store:
    """A directory of content-addressed entries, each `<root>/<id>/` with a `meta.json`."""

    def __init__(self, root: Path, version: int = 1):
        self.root = Path(root)
        self.version = version

    def path(self, entry_id: str) -> Path:
        return self.root / entry_id

    def meta(self, entry_id: str) -> dict[str, Any] | None:
        """The published entry's meta, or None if it is missing, half-published or stale."""
        meta = read_json(self.path(entry_id) / META)
        if meta is None or meta.get("id") != entry_id:
            return None
        # Entries written before the store had versions count as version 1.
        return meta if meta.get("store_version", 1) == self.version else None

    def partial(self, entry_id: str) -> Path:
        """A builder's resume folder `<root>/.<id>.partial/` (per-epoch checkpoints): unlike
        the temp dir it survives a killed build, and it is deleted once the entry is published."""
        return self.root / f".{entry_id}.partial"

    def get(self, entry_id: str) -> Path | None:
        """The entry's directory if it is completely published, else None."""
        return self.path(entry_id) if self.meta(entry_id) is not None else None

    def get_or_build(
        self, entry_id: str, build: Callable[[Path], dict[str, Any]]
    ) -> tuple[Path, bool]:
        """(entry directory, hit). On a miss `build(tmp_dir)` fills a temp directory and
        returns the meta to store; concurrent callers wait on the entry's lock and the
        losers reuse the winner's entry instead of building again."""
        found = self.get(entry_id)
        if found is not None:
            return found, True
        with locked(self.root / f"{entry_id}.lock"):
            found = self.get(entry_id)
            if found is not None:
                return found, True
            return self._build(entry_id, build), False

    def _build(self, entry_id: str, build: Callable[[Path], dict[str, Any]]) -> Path:
        tmp = self.root / f".{entry_id}.tmp"  # one builder at a time: we hold the lock
        _remove(tmp)
        tmp.mkdir(parents=True)
        try:
            meta = build(tmp)
            write_json(tmp / META, {**meta, "id": entry_id, "store_version": self.version})
            publish(tmp, self.path(entry_id))
            _remove(self.partial(entry_id))
        finally:
            _remove(tmp)
        return self.path(entry_id)


def npy_matches(path: Path, dtype: Any, shape: tuple[int, ...]) -> bool:
    """Whether `path` is a complete .npy file of `dtype` whose shape starts with `shape`
    (a truncated file, or one written for other content, does not match)."""
    readers = {
        (1, 0): np.lib.format.read_array_header_1_0,
        (2, 0): np.lib.format.read_array_header_2_0,
    }
    try:
        with open(path, "rb") as fh:
            reader = readers.get(np.lib.format.read_magic(fh))
            if reader is None:
                return False
            got, _, got_dtype = reader(fh)
            size = fh.tell() + int(np.prod(got, dtype=np.int64)) * got_dtype.itemsize
            complete = os.fstat(fh.fileno()).st_size == size
    except (OSError, ValueError):
        return False
    return complete and got_dtype == np.dtype(dtype) and tuple(got[: len(shape)]) == tuple(shape)


class ResumableRows:
    """Row-wise results written batch by batch into `.npy` memmaps that survive a kill.

    `spec` maps a name to (path, dtype, shape); rows run along axis 0 of every array. After
    each batch `commit(rows, **totals)` flushes the arrays and only then writes the JSON record
    at `state_path` that says how many rows are on disk (plus running totals such as a summed
    NLL). A later instance over the same paths and shapes opens the arrays `r+` and starts at
    `done` with the recorded `totals`; a missing, truncated or differently shaped array starts
    over from row 0. `close()` releases the maps before the caller moves the files."""

    def __init__(self, state_path: Path, spec: Mapping[str, tuple[Path, Any, tuple[int, ...]]]):
        self.state_path = Path(state_path)
        state = read_json(self.state_path) or {}
        resumable = all(npy_matches(p, dtype, shape) for p, dtype, shape in spec.values())
        self.done = int(state.get("rows", 0)) if resumable else 0
        self.totals = {k: v for k, v in state.items() if k != "rows"} if self.done else {}
        mode = "r+" if self.done else "w+"
        self.arrays: dict[str, np.memmap] = {}
        for name, (path, dtype, shape) in spec.items():
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            self.arrays[name] = np.lib.format.open_memmap(path, mode, dtype, shape)

    def commit(self, rows: int, **totals: Any) -> None:
        """Record that the first `rows` rows (and `totals`) are written: data first, then record."""
        for arr in self.arrays.values():
            arr.flush()
        write_json(self.state_path, {"rows": rows, **totals})

    def close(self) -> None:
        """Drop the maps (the files can be moved or renamed afterwards)."""
        self.arrays.clear()
