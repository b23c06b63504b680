"""Row caches (float16 memory maps + offsets) and the ASR store's checks of them: a cache is read
per row, never whole; a truncated or stale one is rebuilt or refused, never read as right."""

from __future__ import annotations

import pickle
import shutil

import pytest
import torch

from kdsweep.errors import KDSweepError
from kdsweep.rowcache import DATA, Chain, Rows, read_rows, rows_problem, write_rows
from kdsweep.speech.data import CharVocab, FeatureSet
from kdsweep.speech.store import ASRTeacherStore, StoredASRTeacher
from kdsweep.speech.teacher import ASRTeacherRecipe


def _truncate(path, drop: int) -> None:
    """Replace `path` by a copy without its last `drop` bytes (a new file: a map of the old
    one stays valid, as it does when the store replaces a cache)."""
    data = path.read_bytes()[:-drop]
    path.unlink()
    path.write_bytes(data)


def _rows(n: int = 5, tail=(3,), seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(2 + i, *tail, generator=g) for i in range(n)]


@pytest.mark.unit
def test_rows_are_read_lazily_as_float32_rows_of_the_float16_map(tmp_path):
    rows, ids = _rows(), [f"u{i}" for i in range(5)]
    write_rows(tmp_path / "c", rows, ids)
    got = read_rows(tmp_path / "c", ids, lengths=[r.shape[0] for r in rows], tail=(3,))
    assert isinstance(got, Rows) and len(got) == 5
    assert got.map().dtype.name == "float16" and got.map().shape == (20, 3)
    for a, b in zip(got, rows):
        assert a.dtype == torch.float32 and a.shape == b.shape
        torch.testing.assert_close(a, b.half().float())
    assert torch.equal(got[-1], got[4]) and len(got[1:3]) == 2
    with pytest.raises(IndexError):
        got[5]
    again = pickle.loads(pickle.dumps(got))  # by path, not by data
    assert torch.equal(again[2], got[2])


@pytest.mark.unit
def test_rows_concatenate_with_rows_and_lists(tmp_path):
    a, b = _rows(3, seed=1), _rows(2, seed=2)
    write_rows(tmp_path / "a", a, ["a0", "a1", "a2"])
    write_rows(tmp_path / "b", b, ["b0", "b1"])
    ra, rb = read_rows(tmp_path / "a"), read_rows(tmp_path / "b")
    both = ra + rb
    assert isinstance(both, Chain) and len(both) == 5
    assert torch.equal(both[3], rb[0]) and torch.equal(both[-1], rb[1])
    assert len(ra + b + rb) == 7 and torch.equal((list(b) + ra)[2], ra[0])
    assert [r.shape[0] for r in both] == [r.shape[0] for r in a + b]


@pytest.mark.unit
def test_a_truncated_or_mismatched_cache_is_refused_with_the_reason(tmp_path):
    rows, ids = _rows(), [f"u{i}" for i in range(5)]
    path = tmp_path / "c"
    write_rows(path, rows, ids)
    assert rows_problem(path, ids) is None
    assert "other utterances" in rows_problem(path, ids[::-1])
    assert "frame counts" in rows_problem(path, lengths=[9] * 5)
    assert "shape" in rows_problem(path, tail=(4,))
    write_rows(tmp_path / "empty", [], [])
    assert rows_problem(tmp_path / "empty", [], lengths=[], tail=(4,)) is None
    assert len(read_rows(tmp_path / "empty")) == 0
    _truncate(path / DATA, 10)
    with pytest.raises(KDSweepError, match=r"c is truncated"):
        read_rows(path, ids)
    (path / DATA).unlink()
    (path / "index.json").unlink()
    with pytest.raises(KDSweepError, match="missing"):
        read_rows(path)


# ---------------------------------------------------------------- the ASR store on a tiny corpus
def _feats(n: int, prefix: str, seed: int) -> FeatureSet:
    g = torch.Generator().manual_seed(seed)
    vocab, text = CharVocab(), "a cab"
    feats = [torch.randn(9 + 3 * i, 8, generator=g) for i in range(n)]
    targets = [torch.tensor(vocab.encode(text), dtype=torch.long) for _ in range(n)]
    return FeatureSet(
        [f"{prefix}{i}" for i in range(n)], feats, targets, [text] * n, ["v"] * n, [prefix] * n
    )


@pytest.fixture
def teacher(tmp_path) -> StoredASRTeacher:
    torch.manual_seed(0)
    recipe = ASRTeacherRecipe(layers=2, hidden=4, stack=3, epochs=1, batch_size=4, n_mels=8)
    feats = {s: _feats(4, s, k) for k, s in enumerate(("train", "dev", "test"))}
    store = ASRTeacherStore(tmp_path / "store")
    found, hit = store.get_or_train(recipe, "fp", feats, log=lambda m: None)
    assert not hit and store.get(found.id).path == found.path
    return found


@pytest.mark.trial
def test_asr_caches_are_checked_and_rebuilt_from_the_features(teacher, monkeypatch):
    fs = _feats(3, "x", 7)
    calls: list[int] = []
    real = StoredASRTeacher.load_model

    def counted(self, *a, **k):
        calls.append(1)
        return real(self, *a, **k)

    monkeypatch.setattr(StoredASRTeacher, "load_model", counted)
    hidden = teacher.hidden("x", [2], fs)
    assert calls == [1] and [h.shape for h in hidden] == [(3, 1, 8), (4, 1, 8), (5, 1, 8)]
    teacher.hidden("x", [2], fs)
    assert calls == [1]  # cached
    hidden = [h.clone() for h in hidden]
    _truncate(teacher.path / "hidden_x_2.rows" / DATA, 4)  # rebuilt, never read as it is
    assert [torch.equal(a, b) for a, b in zip(teacher.hidden("x", [2], fs), hidden)] == [True] * 3
    assert calls == [1, 1]
    other = _feats(3, "y", 8)  # other utterances under the same name: rebuilt for them
    assert len(teacher.hidden("x", [2], other)) == 3 and calls == [1, 1, 1]
    assert rows_problem(teacher.path / "hidden_x_2.rows", other.ids) is None


@pytest.mark.trial
def test_split_posteriors_refuse_other_content_and_truncation(teacher):
    train_ids = [f"train{i}" for i in range(4)]
    assert len(teacher.logits("train", train_ids)) == 4
    with pytest.raises(KDSweepError, match="other utterances"):
        teacher.logits("train", train_ids[::-1])
    _truncate(teacher.path / "posteriors_dev.rows" / DATA, 100)
    with pytest.raises(KDSweepError, match=r"posteriors_dev\.rows is truncated"):
        teacher.logits("dev")


@pytest.mark.trial
def test_caches_of_the_old_single_file_layout_are_converted_once(teacher):
    new = teacher.path / "posteriors_test.rows"
    want = list(teacher.logits("test"))
    lens = torch.tensor([0] + [r.shape[0] for r in want])
    blob = {
        "logits": torch.cat(want).half(),
        "offsets": torch.cumsum(lens, 0),
        "ids": [f"test{i}" for i in range(4)],
    }
    shutil.rmtree(new)
    torch.save(blob, teacher.path / "posteriors_test.pt")
    got = teacher.logits("test", blob["ids"])
    assert [torch.equal(a, b) for a, b in zip(got, want)] == [True] * 4
    assert new.is_dir() and not (teacher.path / "posteriors_test.pt").exists()
