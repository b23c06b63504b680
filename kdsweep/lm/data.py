"""The LM corpus: documents, a seeded split by document, tokens packed into blocks.

    docs = load_documents("fortunes")                  # or a .txt / .jsonl path
    splits = split_documents(docs, seed=0)             # 80 / 10 / 10 by document
    blocks = pack(splits, tokenizer, block_size=64)    # {"train": int32 [N, 64], ...}

The default corpus is the Debian `fortunes` package (already a set-up dependency of the text
task): about 15k short English texts (quotes, jokes, definitions, verse) written by people, in
one shipped folder, offline; one fortune is one document, so a split by document keeps every
text wholly in train, dev or test. Attribution lines ("-- Author") are dropped (`prose`): they
are names, not language the teacher could predict. Documents are packed GPT-style: each one's
tokens followed by the end-of-text token, concatenated, cut into `block_size` rows (the last,
partial row is dropped). No ray, no mlflow.
"""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from kdsweep.errors import KDSweepError
from kdsweep.text.fortunes import FORTUNES_DIR, fortune_records

BUILTIN = ("fortunes",)
SPLITS = ("train", "dev", "test")
FRACTIONS = (0.8, 0.1, 0.1)


@dataclass(frozen=True)
class CorpusSpec:
    """What a trial reads: the corpus, how documents are split, how many are kept."""

    dataset: str = "fortunes"  # fortunes | path to .txt (blank-line separated) / .jsonl
    text_column: str = "text"  # .jsonl: the field holding each document
    split_seed: int = 0
    max_docs: int = 0  # 0 = every document (drawn with the split seed before splitting)

    def fingerprint(self) -> str:
        return hashlib.sha256(json.dumps(self.__dict__, sort_keys=True).encode()).hexdigest()[:16]


def check_dataset(dataset: str) -> None:
    """A clear error for a corpus that is neither built in nor a readable .txt/.jsonl file."""
    if dataset in BUILTIN:
        return
    path = Path(dataset).expanduser()
    if path.suffix.lower() not in (".txt", ".jsonl"):
        raise KDSweepError(
            f"field 'dataset': {dataset!r} is not one of {list(BUILTIN)} nor a .txt/.jsonl file"
        )
    if not path.is_file():
        raise KDSweepError(f"field 'dataset': file {path} not found")


def load_documents(dataset: str, text_column: str = "text") -> list[str]:
    """The corpus' documents, in a fixed order (blank and duplicate documents dropped)."""
    check_dataset(dataset)
    if dataset == "fortunes":
        docs = [r.prose for r in fortune_records(FORTUNES_DIR, field="dataset")]
    else:
        docs = _read_file(Path(dataset).expanduser(), text_column)
    out = list(dict.fromkeys(d.strip() for d in docs if d and d.strip()))
    if len(out) < 3:
        raise KDSweepError(
            f"field 'dataset': {dataset} has {len(out)} non-empty document(s); a train/dev/test "
            "split by document needs at least 3"
        )
    return out


def _read_file(path: Path, text_column: str) -> list[str]:
    """A .txt file (documents separated by blank lines) or .jsonl (one object per line)."""
    try:
        raw = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise KDSweepError(f"field 'dataset': cannot read {path} ({type(e).__name__}: {e})") from e
    if path.suffix.lower() == ".txt":
        return [" ".join(p.split()) for p in raw.split("\n\n")]
    docs = []
    for n, line in enumerate(raw.splitlines(), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise KDSweepError(f"field 'dataset': {path} line {n}: not JSON ({e.msg})") from e
        if not isinstance(obj, dict) or text_column not in obj:
            raise KDSweepError(f"field 'text_column': {path} line {n} has no {text_column!r} field")
        docs.append(str(obj[text_column]))
    return docs


def split_documents(docs: list[str], seed: int, max_docs: int = 0) -> dict[str, list[str]]:
    """A seeded shuffle of the documents, cut 80/10/10 (every split gets at least one)."""
    order = list(docs)
    random.Random(seed).shuffle(order)
    if max_docs:
        order = order[:max_docs]
    n = len(order)
    n_dev = max(1, round(n * FRACTIONS[1]))
    n_test = max(1, round(n * FRACTIONS[2]))
    n_train = n - n_dev - n_test
    if n_train < 1:
        raise KDSweepError(f"field 'max_docs': {n} documents leave none for training")
    return {
        "train": order[:n_train],
        "dev": order[n_train : n_train + n_dev],
        "test": order[n_train + n_dev :],
    }


def pack(docs: list[str], tokenizer: Any, block_size: int) -> torch.Tensor:
    """Token ids [N, block_size] (int32): each document then the end-of-text token,
    concatenated and cut into rows; the remainder shorter than a block is dropped."""
    eos = tokenizer.eos_token_id
    if eos is None:
        raise KDSweepError("teacher tokenizer: no end-of-text token to separate documents")
    ids: list[int] = []
    for enc in tokenizer(docs, add_special_tokens=False)["input_ids"]:
        ids.extend(enc)
        ids.append(eos)
    n = len(ids) // block_size
    return torch.tensor(np.asarray(ids[: n * block_size], dtype=np.int32)).view(n, block_size)


@dataclass
class Corpus:
    """Packed blocks per split, the documents they came from, and a content fingerprint."""

    blocks: dict[str, torch.Tensor]
    docs: dict[str, list[str]]

    def fingerprint(self) -> str:
        """sha256 of every block's tokens: two corpora with the same tokens share caches."""
        h = hashlib.sha256()
        for split in SPLITS:
            h.update(split.encode())
            h.update(self.blocks[split].numpy().tobytes())
        return h.hexdigest()[:16]

    def tokens(self, split: str) -> int:
        return int(self.blocks[split].numel())


def load_corpus(spec: CorpusSpec, tokenizer: Any, block_size: int) -> Corpus:
    """Documents -> split -> packed blocks; a split too small for one block is an error."""
    docs = split_documents(load_documents(spec.dataset, spec.text_column), spec.split_seed,
                           spec.max_docs)  # fmt: skip
    blocks = {s: pack(docs[s], tokenizer, block_size) for s in SPLITS}
    for split, b in blocks.items():
        if len(b) == 0:
            raise KDSweepError(
                f"field 'block_size': the {split} split of {spec.dataset} ({len(docs[split])} "
                f"documents) has fewer than {block_size} tokens; lower block_size or add text"
            )
    return Corpus(blocks, docs)


def first_blocks(blocks: torch.Tensor, n: int) -> torch.Tensor:
    """The first `n` rows (0 = all): data_subset / eval_subset."""
    return blocks[:n] if n else blocks
