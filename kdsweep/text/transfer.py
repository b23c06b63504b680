"""Transfer sets: extra unlabeled text that the teacher labels for the student.

A transfer set is one of
    "unlabeled"          the dataset's own shipped unlabeled texts (TextSplits.unlabeled)
    "augment"            the labeled train texts with tokens masked/replaced (teacher tokenizer)
    <file>.txt           one text per line
    <file>.csv/.tsv      a `text_column` column
    <file>.jsonl/.json   one JSON object per line with a `text_column` key
Tokens are cached on disk keyed by content, like the labeled splits.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import random
from pathlib import Path

import torch

from kdsweep.errors import KDSweepError
from kdsweep.filelock import locked

KEYWORDS = ("unlabeled", "augment")
FILE_SUFFIXES = (".txt", ".csv", ".tsv", ".jsonl", ".json")


def check_source(source: str) -> None:
    """Config-time check: a keyword or a path with a known suffix (existence checked on load)."""
    if source in ("", *KEYWORDS) or Path(source).suffix.lower() in FILE_SUFFIXES:
        return
    raise KDSweepError(
        f"field 'transfer_set': unknown source {source!r}; use '' (none), 'unlabeled', "
        f"'augment' or a path to a {'/'.join(FILE_SUFFIXES)} file"
    )


def load_transfer_texts(
    source: str, unlabeled: list[str], text_column: str, exclude: set[str], size: int, seed: int
) -> list[str]:
    """The transfer texts of a text source, deduplicated, without any dev/test text (`exclude`),
    shuffled deterministically by `seed` and cut to `size` (0 = all)."""
    if source == "unlabeled":
        texts = list(unlabeled)
        if not texts:
            raise KDSweepError(
                "transfer_set 'unlabeled': this dataset ships no unlabeled texts (fortunes and "
                "rotten_tomatoes do); give a .txt/.csv/.jsonl file instead"
            )
    else:
        texts = _read_file(Path(source), text_column)
    seen: set[str] = set()
    texts = [t for t in texts if t not in exclude and not (t in seen or seen.add(t))]
    if not texts:
        raise KDSweepError(
            f"transfer_set {source!r}: no texts left after removing duplicates and dev/test texts"
        )
    random.Random(f"transfer-{seed}").shuffle(texts)
    return texts[:size] if size else texts


def _read_file(path: Path, text_column: str) -> list[str]:
    where = f"transfer_set {str(path)!r}"
    if not path.is_file():
        raise KDSweepError(f"{where}: file not found")
    suffix = path.suffix.lower()
    try:
        with path.open(encoding="utf-8", newline="") as f:
            if suffix == ".txt":
                return _nonempty([line.strip() for line in f], where)
            if suffix in (".csv", ".tsv"):
                records = list(csv.DictReader(f, delimiter="\t" if suffix == ".tsv" else ","))
            else:
                records = [json.loads(line) for line in f if line.strip()]
    except (UnicodeDecodeError, json.JSONDecodeError, csv.Error) as e:
        raise KDSweepError(f"{where}: cannot parse: {e}") from e
    if not records:
        raise KDSweepError(f"{where}: the file is empty")
    if not isinstance(records[0], dict) or text_column not in records[0]:
        cols = sorted(records[0]) if isinstance(records[0], dict) else []
        raise KDSweepError(f"{where}: no column {text_column!r} (text_column); columns are {cols}")
    return _nonempty([str(r.get(text_column) or "").strip() for r in records], where)


def _nonempty(texts: list[str], where: str) -> list[str]:
    texts = [t for t in texts if t]
    if not texts:
        raise KDSweepError(f"{where}: the file is empty (no non-blank text)")
    return texts


def tokenize_texts(
    texts: list[str], tokenizer_dir: str, max_len: int, cache_dir: Path
) -> dict[str, torch.Tensor]:
    """input_ids / attention_mask of unlabeled texts, tokenized once, cached by content."""
    h = hashlib.sha256(f"{tokenizer_dir}|{max_len}|".encode())
    for t in texts:
        h.update(t.encode())
        h.update(b"\0")
    path = Path(cache_dir) / "tokens" / f"transfer_{h.hexdigest()[:16]}.pt"
    if path.is_file():
        return torch.load(path, weights_only=True, map_location="cpu")
    with locked(path.with_suffix(".lock")):
        if not path.is_file():
            from transformers import AutoTokenizer

            tok = AutoTokenizer.from_pretrained(tokenizer_dir)
            enc = tok(
                texts,
                max_length=max_len,
                truncation=True,
                padding="max_length",
                return_tensors="pt",
            )
            out = {
                "input_ids": enc["input_ids"].to(torch.int32),
                "attention_mask": enc["attention_mask"].to(torch.int8),
            }
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp")
            torch.save(out, tmp)
            os.replace(tmp, path)
    return torch.load(path, weights_only=True, map_location="cpu")


def augment_tokens(
    train: dict[str, torch.Tensor], tokenizer_dir: str, prob: float, size: int, seed: int = 0
) -> dict[str, torch.Tensor]:
    """`size` rows (0 = one per train row) of train tokens with each real, non-special token
    replaced with probability `prob`: half by [MASK], half by a random vocabulary token.
    Deterministic in `seed`; row r is a copy of train row r % N."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    n = len(train["input_ids"])
    if n == 0:
        raise KDSweepError("transfer_set 'augment': the labeled train split is empty")
    rows = torch.arange(size or n) % n
    ids = train["input_ids"][rows].clone()
    mask = train["attention_mask"][rows].clone()
    g = torch.Generator().manual_seed(seed)
    special = torch.tensor(sorted(set(tok.all_special_ids)), dtype=ids.dtype)
    can = mask.bool() & ~torch.isin(ids, special)
    hit = can & (torch.rand(ids.shape, generator=g) < prob)
    use_mask = torch.rand(ids.shape, generator=g) < 0.5
    random_ids = torch.randint(0, len(tok), ids.shape, generator=g, dtype=ids.dtype)
    mask_id = tok.mask_token_id if tok.mask_token_id is not None else tok.unk_token_id
    replaced = torch.where(use_mask, torch.full_like(ids, mask_id), random_ids)
    ids = torch.where(hit, replaced, ids)
    return {"input_ids": ids, "attention_mask": mask}


def tokens_key(tokens: dict[str, torch.Tensor]) -> str:
    """Content key of a tokenized transfer set (names its cached teacher logits)."""
    h = hashlib.sha256(tokens["input_ids"].numpy().tobytes())
    h.update(tokens["attention_mask"].numpy().tobytes())
    return h.hexdigest()[:16]
