"""kdsweep.store: content ids, atomic publish, locking, atomic meta, stale entries ignored."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import numpy as np
import pytest

from kdsweep.store import (
    META,
    ResumableRows,
    Store,
    cached_file,
    content_id,
    npy_matches,
    read_json,
    write_json,
)

pytestmark = pytest.mark.unit
ROOT = Path(__file__).resolve().parents[1]


def _build_ok(tmp: Path) -> dict:
    (tmp / "weights.bin").write_bytes(b"w" * 100)
    return {"what": "ok"}


def test_content_id_is_stable_short_and_sensitive():
    a = content_id({"lr": 0.1, "epochs": 2}, "data-a")
    assert a == content_id({"epochs": 2, "lr": 0.1}, "data-a")  # key order does not matter
    assert len(a) == 16 and int(a, 16) >= 0
    assert a != content_id({"lr": 0.2, "epochs": 2}, "data-a")
    assert a != content_id({"lr": 0.1, "epochs": 2}, "data-b")
    assert a != content_id({"lr": 0.1, "epochs": 2}, "data-a", version=1)


def test_build_publishes_entry_with_id_and_version_then_hits(tmp_path):
    store = Store(tmp_path, version=3)
    path, hit = store.get_or_build("abc", _build_ok)
    assert not hit and path == tmp_path / "abc"
    meta = json.loads((path / META).read_text())
    assert meta == {"what": "ok", "id": "abc", "store_version": 3}
    assert (path / "weights.bin").read_bytes() == b"w" * 100
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []

    def no_build(tmp):
        raise AssertionError("built again although published")

    assert store.get_or_build("abc", no_build) == (path, True)
    assert Store(tmp_path, version=4).get("abc") is None  # another layout version: not reused


def test_a_failed_build_leaves_no_visible_entry(tmp_path):
    store = Store(tmp_path)

    def crash(tmp: Path) -> dict:
        (tmp / "half.bin").write_bytes(b"x")
        raise RuntimeError("killed mid-build")

    with pytest.raises(RuntimeError, match="mid-build"):
        store.get_or_build("e1", crash)
    assert store.get("e1") is None and not (tmp_path / "e1").exists()
    path, hit = store.get_or_build("e1", _build_ok)
    assert not hit and (path / "weights.bin").is_file() and not (path / "half.bin").exists()


def test_a_process_killed_before_the_replace_leaves_no_entry(tmp_path):
    """A real crash (os._exit, no cleanup) between the temp-dir build and os.replace."""
    code = textwrap.dedent(
        f"""
        import os
        from pathlib import Path
        from kdsweep import store as st
        def build(tmp):
            (tmp / "weights.bin").write_bytes(b"w")
            return {{}}
        st.publish = lambda tmp, final: os._exit(17)  # dies just before publishing
        st.Store(Path({str(tmp_path)!r})).get_or_build("e2", build)
        """
    )
    env = {"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"}
    done = subprocess.run([sys.executable, "-c", code], env=env, cwd=ROOT, check=False)
    assert done.returncode == 17
    assert (tmp_path / ".e2.tmp" / META).is_file()  # the builder got as far as its meta
    store = Store(tmp_path)
    assert store.get("e2") is None and not (tmp_path / "e2").exists()
    path, hit = store.get_or_build("e2", _build_ok)  # the next builder starts afresh
    assert not hit and read_json(path / META)["what"] == "ok"
    assert not (tmp_path / ".e2.tmp").exists()


@pytest.mark.parametrize(
    "meta",
    [None, "{not json", json.dumps({"id": "other"}), json.dumps({"id": "e3", "store_version": 9})],
)
def test_half_published_or_stale_entries_are_ignored_and_rebuilt(tmp_path, meta):
    final = tmp_path / "e3"
    final.mkdir()
    (final / "leftover.bin").write_bytes(b"old")
    if meta is not None:
        (final / META).write_text(meta)
    store = Store(tmp_path)
    assert store.get("e3") is None and store.meta("e3") is None
    path, hit = store.get_or_build("e3", _build_ok)
    assert not hit and not (path / "leftover.bin").exists() and store.get("e3") == path


def test_entries_from_before_versions_count_as_version_1(tmp_path):
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / META).write_text(json.dumps({"id": "old", "metrics": {}}))
    assert Store(tmp_path).get("old") == tmp_path / "old"
    assert Store(tmp_path, version=2).get("old") is None


def test_a_concurrent_second_builder_waits_on_the_lock_and_reuses(tmp_path):
    store = Store(tmp_path)
    started, release = threading.Event(), threading.Event()
    builds: list[str] = []
    results: dict[str, tuple[Path, bool]] = {}

    def slow_build(tmp: Path) -> dict:
        builds.append("slow")
        started.set()
        assert release.wait(30)
        return _build_ok(tmp)

    def other_build(tmp: Path) -> dict:
        builds.append("other")
        return _build_ok(tmp)

    first = threading.Thread(target=lambda: results.update(a=store.get_or_build("e4", slow_build)))
    second = threading.Thread(
        target=lambda: results.update(b=store.get_or_build("e4", other_build))
    )
    first.start()
    assert started.wait(30)
    second.start()
    second.join(0.3)
    assert second.is_alive() and "b" not in results  # blocked on the entry's lock
    release.set()
    first.join(30)
    second.join(30)
    assert builds == ["slow"]
    assert results["a"] == (tmp_path / "e4", False) and results["b"] == (tmp_path / "e4", True)


def test_write_json_replaces_atomically(tmp_path, monkeypatch):
    path = tmp_path / "meta.json"
    write_json(path, {"v": 1})
    import kdsweep.store as st

    def fail_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(st.os, "replace", fail_replace)
    with pytest.raises(OSError, match="disk full"):
        write_json(path, {"v": 2})
    monkeypatch.undo()
    assert read_json(path) == {"v": 1}  # the old content, whole
    assert [p.name for p in tmp_path.iterdir()] == ["meta.json"]  # no temp file left
    write_json(path, {"v": 2})
    assert read_json(path) == {"v": 2}


def test_cached_file_builds_once_and_rebuilds_an_invalid_file(tmp_path):
    calls: list[int] = []

    def write(tmp: Path) -> None:
        calls.append(1)
        np.save(tmp, np.arange(6, dtype=np.float16).reshape(2, 3))

    path = tmp_path / "x.npy"

    def valid(p):
        return npy_matches(p, np.float16, (2, 3))

    assert cached_file(path, write, valid) == path and calls == [1]
    cached_file(path, write, valid)
    assert calls == [1]
    path.write_bytes(path.read_bytes()[:-2])  # truncated
    assert not valid(path)
    cached_file(path, write, valid)
    assert calls == [1, 1] and np.load(path).shape == (2, 3)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.npy", "x.npy.lock"]


def test_npy_matches_checks_dtype_shape_and_completeness(tmp_path):
    path = tmp_path / "a.npy"
    np.save(path, np.zeros((4, 2, 5), dtype=np.float16))
    assert npy_matches(path, np.float16, (4, 2))
    assert npy_matches(path, np.float16, (4, 2, 5))
    assert not npy_matches(path, np.float32, (4, 2))
    assert not npy_matches(path, np.float16, (3, 2))
    assert not npy_matches(tmp_path / "missing.npy", np.float16, ())
    (tmp_path / "junk.npy").write_bytes(b"not an npy file")
    assert not npy_matches(tmp_path / "junk.npy", np.float16, ())


def test_resumable_rows_resume_at_the_last_commit_and_restart_on_other_shapes(tmp_path):
    spec = {
        "a": (tmp_path / "a.npy", np.float32, (6, 2)),
        "b": (tmp_path / "b.npy", np.int32, (6,)),
    }
    out = ResumableRows(tmp_path / "done.json", spec)
    assert (out.done, out.totals) == (0, {})
    out.arrays["a"][0:2], out.arrays["b"][0:2] = 1.5, 7
    out.commit(2, nll=3.0)
    out.arrays["a"][2:4] = 9.0  # written but never committed: a kill before the record
    out.close()
    again = ResumableRows(tmp_path / "done.json", spec)
    assert (again.done, again.totals) == (2, {"nll": 3.0})
    assert again.arrays["a"][:2].tolist() == [[1.5, 1.5], [1.5, 1.5]]
    assert again.arrays["b"][:2].tolist() == [7, 7]
    again.close()
    other = {**spec, "b": (tmp_path / "b.npy", np.int32, (5,))}  # other content: start over
    fresh = ResumableRows(tmp_path / "done.json", other)
    assert (fresh.done, fresh.totals) == (0, {})
    assert not fresh.arrays["a"].any()
