"""Do student and teacher look at the same tokens? Integrated Gradients similarity.

For each probe example (the first `n` dev examples) both models get Layer Integrated Gradients
over their input (word) embeddings, attributed to the gold label's logit, from a baseline where
every real token is replaced by [PAD] ([CLS]/[SEP] and padding stay as they are). Summing over
the hidden dimension gives one attribution per token; per example we compare the two vectors
over the real tokens (cosine and Spearman rank correlation) and average over examples.

The student shares the teacher's tokenizer here, so tokens align one to one. For models with
different tokenizers, `tokenize_with_words` records which whitespace word every word piece
belongs to (from the tokenizer's character offsets) and `word_level_similarity` compares the
attributions summed per word instead.
"""

from __future__ import annotations

import bisect
import math
import re
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from kdsweep.oom import backoff
from kdsweep.train_utils import trim_padding

DEFAULT_EXAMPLES = 200
DEFAULT_STEPS = 16


# ---------------------------------------------------------------- attributions
def real_token_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """[B, S] bool: real tokens, i.e. not padding and not the first/last real position
    (the [CLS]/[SEP] a BERT-style tokenizer puts around every sequence)."""
    mask = attention_mask.bool().clone()
    lengths = mask.sum(dim=1)
    rows = torch.arange(mask.shape[0])
    mask[rows[lengths > 0], 0] = False
    last = (lengths - 1).clamp(min=0)
    mask[rows[lengths > 0], last[lengths > 0]] = False
    return mask


def token_attributions(
    model: nn.Module,
    tokens: dict[str, torch.Tensor],
    n: int = DEFAULT_EXAMPLES,
    steps: int = DEFAULT_STEPS,
    batch_size: int = 16,
    targets: torch.Tensor | None = None,
) -> torch.Tensor:
    """Per-token Integrated Gradients of the first `n` examples: float32 [n, S] on the CPU.

    Attributions are w.r.t. the model's input embeddings (`get_input_embeddings()`, the word
    embeddings of a BERT), summed over the hidden dimension; [CLS]/[SEP]/padding are 0.
    `targets` (default: the gold labels) picks the logit that is explained.
    """
    from captum.attr import LayerIntegratedGradients

    ids_all = tokens["input_ids"][:n]
    mask_all = tokens["attention_mask"][:n]
    targets = (tokens["labels"] if targets is None else targets)[:n]
    device = next(model.parameters()).device
    pad_id = getattr(model.config, "pad_token_id", None) or 0
    was_training = model.training
    model.eval()

    def forward(input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return model(input_ids=input_ids, attention_mask=attention_mask).logits.float()

    lig = LayerIntegratedGradients(forward, model.get_input_embeddings())

    def run(bs: int) -> torch.Tensor:  # all examples, `bs` at a time (x `steps` inside)
        out = torch.zeros(ids_all.shape, dtype=torch.float32)
        for start in range(0, len(ids_all), bs):
            sl = slice(start, start + bs)
            ids, mask = trim_padding(ids_all[sl], mask_all[sl])
            ids, mask = ids.long(), mask.long()
            real = real_token_mask(mask)
            baseline = torch.where(real, torch.full_like(ids, pad_id), ids)
            attr = lig.attribute(
                inputs=ids.to(device),
                baselines=baseline.to(device),
                target=targets[sl].long().to(device),
                additional_forward_args=(mask.to(device),),
                n_steps=steps,
                internal_batch_size=len(ids) * steps,
            )
            per_token = attr.sum(dim=-1).detach().float().cpu() * real
            out[sl, : per_token.shape[1]] = per_token
        return out

    try:
        with torch.enable_grad():  # its own batch size backs off on CUDA out-of-memory
            out = backoff(run, batch_size, "Integrated Gradients attributions")
    finally:
        model.train(was_training)
    return out


# ---------------------------------------------------------------- similarity
def cosine_similarity(a: Sequence[float], b: Sequence[float]) -> float:
    """Cosine of two attribution vectors; NaN when either is all zeros (or empty)."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    na, nb = np.linalg.norm(a), np.linalg.norm(b)
    if a.size == 0 or na == 0 or nb == 0:
        return math.nan
    return float(np.dot(a, b) / (na * nb))


def _rank(x: np.ndarray) -> np.ndarray:
    """Ranks 1..n, ties get their average rank (as scipy.stats.rankdata)."""
    order = np.argsort(x, kind="mergesort")
    ranks = np.empty(len(x), dtype=np.float64)
    xs = x[order]
    i = 0
    while i < len(x):
        j = i
        while j + 1 < len(x) and xs[j + 1] == xs[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2 + 1
        i = j + 1
    return ranks


def spearman_correlation(a: Sequence[float], b: Sequence[float]) -> float:
    """Spearman's rho (Pearson correlation of tie-averaged ranks); NaN for < 2 items or a
    constant vector."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.size < 2:
        return math.nan
    ra, rb = _rank(a) - (a.size + 1) / 2, _rank(b) - (b.size + 1) / 2
    den = math.sqrt(float(np.dot(ra, ra)) * float(np.dot(rb, rb)))
    return float(np.dot(ra, rb) / den) if den > 0 else math.nan


def _nanmean(values: list[float]) -> float:
    finite = [v for v in values if not math.isnan(v)]
    return sum(finite) / len(finite) if finite else math.nan


def similarity_from_attributions(
    attr_a: torch.Tensor, attr_b: torch.Tensor, mask: torch.Tensor
) -> dict[str, float]:
    """Mean per-example cosine and Spearman of two [N, S] attribution maps over `mask`'s tokens."""
    cos, rho = [], []
    for a, b, m in zip(attr_a, attr_b, mask.bool()):
        cos.append(cosine_similarity(a[m].numpy(), b[m].numpy()))
        rho.append(spearman_correlation(a[m].numpy(), b[m].numpy()))
    return {"attr_cosine": _nanmean(cos), "attr_spearman": _nanmean(rho)}


# ---------------------------------------------------------------- different tokenizers: words
def word_ids_from_offsets(offsets: Sequence[tuple[int, int]], text: str) -> list[int | None]:
    """Whitespace-word index of every token from its character span (None: special/padding).

    Whitespace words are the unit two different tokenizers agree on (BERT's `word_ids()` also
    splits punctuation, a byte-level BPE does not).
    """
    spans = [m.span() for m in re.finditer(r"\S+", text)]
    starts = [a for a, _ in spans]
    out: list[int | None] = []
    for s, e in offsets:
        w = bisect.bisect_right(starts, s) - 1
        out.append(w if e > s and w >= 0 and s < spans[w][1] else None)  # (0, 0): special
    return out


def tokenize_with_words(tokenizer, texts: Sequence[str], max_len: int) -> dict[str, torch.Tensor]:
    """Tokenize like the data pipeline, plus `word_ids` [N, S] (-1 = special/padding).

    Needs a fast tokenizer (character offsets).
    """
    enc = tokenizer(
        list(texts),
        max_length=max_len,
        truncation=True,
        padding="max_length",
        return_offsets_mapping=True,
        return_tensors="pt",
    )
    words = [
        [-1 if w is None else w for w in word_ids_from_offsets(off.tolist(), text)]
        for off, text in zip(enc["offset_mapping"], texts)
    ]
    return {
        "input_ids": enc["input_ids"],
        "attention_mask": enc["attention_mask"],
        "word_ids": torch.tensor(words, dtype=torch.long),
    }


def merge_word_pieces(
    attr: Sequence[float] | torch.Tensor, word_ids: Sequence[int | None] | torch.Tensor
) -> np.ndarray:
    """Sum word-piece attributions into words: [w_0, w_1, ...]. word_ids as from a fast
    tokenizer's `word_ids()` or `word_ids_from_offsets` (None or -1: not part of a word)."""
    attr = np.asarray(attr.tolist() if isinstance(attr, torch.Tensor) else attr, dtype=np.float64)
    wids = word_ids.tolist() if isinstance(word_ids, torch.Tensor) else list(word_ids)
    wids = [-1 if w is None else int(w) for w in wids]
    n_words = max(wids, default=-1) + 1
    out = np.zeros(n_words, dtype=np.float64)
    for a, w in zip(attr, wids):
        if w >= 0:
            out[w] += a
    return out


def word_level_similarity(
    attr_a: torch.Tensor,
    word_ids_a: torch.Tensor,
    attr_b: torch.Tensor,
    word_ids_b: torch.Tensor,
) -> dict[str, float]:
    """Like `similarity_from_attributions` for two tokenizations of the same texts: attributions
    summed per word, compared over the words both kept (truncation may cut one earlier)."""
    cos, rho = [], []
    for a, wa, b, wb in zip(attr_a, word_ids_a, attr_b, word_ids_b):
        va, vb = merge_word_pieces(a, wa), merge_word_pieces(b, wb)
        k = min(len(va), len(vb))
        cos.append(cosine_similarity(va[:k], vb[:k]))
        rho.append(spearman_correlation(va[:k], vb[:k]))
    return {"attr_cosine": _nanmean(cos), "attr_spearman": _nanmean(rho)}


# ---------------------------------------------------------------- one call
def attribution_similarity(
    teacher_model: nn.Module | None,
    student_model: nn.Module,
    tokens: dict[str, torch.Tensor],
    n: int = DEFAULT_EXAMPLES,
    steps: int = DEFAULT_STEPS,
    *,
    teacher_attr: torch.Tensor | None = None,
    student_tokens: dict[str, torch.Tensor] | None = None,
    batch_size: int = 16,
) -> dict[str, float]:
    """{"attr_cosine", "attr_spearman"}: teacher vs student IG over the first `n` examples.

    `teacher_attr` (from `token_attributions`) skips the teacher's pass: the teacher is fixed,
    so its attributions can be computed once and reused by every trial. `student_tokens` (with
    `word_ids` in both token dicts, see `tokenize_with_words`) compares per word when the
    student's tokenizer differs; targets are `tokens["labels"]` for both models.
    """
    n = min(n, len(tokens["input_ids"]))
    if teacher_attr is None:
        if teacher_model is None:
            raise ValueError("attribution_similarity needs teacher_model or teacher_attr")
        teacher_attr = token_attributions(teacher_model, tokens, n, steps, batch_size)
    teacher_attr = teacher_attr[:n]
    if student_tokens is None:
        student_attr = token_attributions(student_model, tokens, n, steps, batch_size)
        mask = real_token_mask(tokens["attention_mask"][:n])
        return similarity_from_attributions(teacher_attr, student_attr, mask)
    student_attr = token_attributions(
        student_model, student_tokens, n, steps, batch_size, targets=tokens["labels"]
    )
    return word_level_similarity(
        teacher_attr, tokens["word_ids"][:n], student_attr, student_tokens["word_ids"][:n]
    )
