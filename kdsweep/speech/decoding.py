"""CTC decoding (greedy, beam + n-gram LM), WER/CER, and a small ARPA n-gram LM writer.

No ray, no mlflow. The LM path is optional: without kenlm, ``BeamDecoder`` warns and decodes
greedily instead of failing.
"""

from __future__ import annotations

import math
import re
import warnings
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path

import jiwer
import numpy as np
import torch
from torch import Tensor

from kdsweep.errors import KDSweepError
from kdsweep.speech.data import (
    FORTUNES_DIR,
    CharVocab,
    command_sentences,
    fortune_records,
    normalize_text,
)

# --------------------------------------------------------------------------------------------
# Greedy decoding and error rates
# --------------------------------------------------------------------------------------------


def _collapse(ids: Sequence[int], vocab: CharVocab) -> str:
    """CTC rule: merge repeated labels, then drop blanks; tidy whitespace."""
    out = []
    prev = -1
    for i in ids:
        if i != prev and i != vocab.blank:
            out.append(vocab.symbols[i])
        prev = i
    return " ".join("".join(out).split())


def greedy_decode(logits: Tensor, lens: Tensor, vocab: CharVocab) -> list[str]:
    """Best-path decoding of [B, T, V] logits (or log-probs); frames past ``lens`` ignored."""
    best = logits.argmax(-1).cpu()
    return [_collapse(best[b, : int(n)].tolist(), vocab) for b, n in enumerate(lens.cpu())]


def _clean(texts: Sequence[str]) -> list[str]:
    return [" ".join(t.split()) for t in texts]


def _check_pairs(refs: Sequence[str], hyps: Sequence[str]) -> None:
    if len(refs) != len(hyps):
        raise KDSweepError(f"hyps: {len(hyps)} hypotheses for {len(refs)} references")


def wer(refs: Sequence[str], hyps: Sequence[str]) -> float:
    """Corpus word error rate: (S + D + I) / reference words.

    Empty references or hypotheses are fine (an empty hypothesis is all deletions); with no
    reference words at all the denominator is taken as 1, so the result is the insertion count.
    """
    _check_pairs(refs, hyps)
    if not refs:
        return 0.0
    out = jiwer.process_words(_clean(refs), _clean(hyps))
    n_ref = out.hits + out.substitutions + out.deletions
    return (out.substitutions + out.deletions + out.insertions) / max(n_ref, 1)


def cer(refs: Sequence[str], hyps: Sequence[str]) -> float:
    """Corpus character error rate (spaces count as characters), same conventions as ``wer``."""
    _check_pairs(refs, hyps)
    if not refs:
        return 0.0
    out = jiwer.process_characters(_clean(refs), _clean(hyps))
    n_ref = out.hits + out.substitutions + out.deletions
    return (out.substitutions + out.deletions + out.insertions) / max(n_ref, 1)


# --------------------------------------------------------------------------------------------
# ARPA n-gram LM
# --------------------------------------------------------------------------------------------


def _discount(counts: Iterable[int]) -> float:
    """Ney's absolute discount D = n1 / (n1 + 2 n2) from count-of-counts, kept in [0.1, 0.9]."""
    coc = Counter(counts)
    n1, n2 = coc.get(1, 0), coc.get(2, 0)
    if n1 + 2 * n2 == 0:
        return 0.5
    return min(0.9, max(0.1, n1 / (n1 + 2 * n2)))


def write_arpa(sentences: Iterable[str], path: str | Path, order: int = 3) -> Path:
    """Write an interpolated absolute-discounting n-gram LM in ARPA format (log10, TAB fields).

    p(w|h) = max(c(hw) - D, 0) / c(h) + gamma(h) * p(w|h'), gamma(h) = D * N1+(h.) / c(h),
    with unigrams interpolated with a uniform distribution over the vocabulary plus ``<unk>``.
    For an interpolated model the ARPA backoff weight of h is exactly gamma(h), so every
    conditional distribution sums to one. Sentences should already be normalized.
    """
    if order < 1:
        raise KDSweepError(f"order: must be >= 1, got {order}")
    counts: list[Counter[tuple[str, ...]]] = [Counter() for _ in range(order + 1)]
    for s in sentences:
        toks = ["<s>", *s.split(), "</s>"]
        for n in range(1, order + 1):
            for i in range(len(toks) - n + 1):
                gram = tuple(toks[i : i + n])
                if gram != ("<s>",):  # <s> is only ever a context
                    counts[n][gram] += 1
    if not counts[1]:
        raise KDSweepError(f"sentences: no words to build an LM for {path}")

    disc = [0.0] + [_discount(counts[n].values()) for n in range(1, order + 1)]
    # unigrams
    total = sum(counts[1].values())
    vocab_size = len(counts[1]) + 1  # + <unk>
    uniform_mass = disc[1] * len(counts[1]) / total
    prob: list[dict[tuple[str, ...], float]] = [{} for _ in range(order + 1)]
    for g, c in counts[1].items():
        prob[1][g] = (c - disc[1]) / total + uniform_mass / vocab_size
    prob[1][("<unk>",)] = uniform_mass / vocab_size
    # context statistics for order n: c(h) and N1+(h .)
    bow: list[dict[tuple[str, ...], float]] = [{} for _ in range(order + 1)]
    for n in range(2, order + 1):
        ctx_count: dict[tuple[str, ...], int] = defaultdict(int)
        ctx_types: dict[tuple[str, ...], int] = defaultdict(int)
        for g, c in counts[n].items():
            ctx_count[g[:-1]] += c
            ctx_types[g[:-1]] += 1
        gamma = {h: disc[n] * ctx_types[h] / ctx_count[h] for h in ctx_count}
        for g, c in counts[n].items():
            h = g[:-1]
            # the lower-order n-gram g[1:] was seen one position later, so it is stored
            prob[n][g] = (c - disc[n]) / ctx_count[h] + gamma[h] * prob[n - 1][g[1:]]
        bow[n - 1] = gamma
    prob[1][("<s>",)] = 0.0  # never predicted: written as -99

    def fmt(p: float) -> str:
        return "-99" if p <= 0 else f"{math.log10(p):.6f}"

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        # No header text before \data\: KenLM rejects it.
        f.write("\\data\\\n")
        for n in range(1, order + 1):
            f.write(f"ngram {n}={len(prob[n])}\n")
        for n in range(1, order + 1):
            f.write(f"\n\\{n}-grams:\n")
            for g in sorted(prob[n]):
                fields = [fmt(prob[n][g]), " ".join(g)]
                if n < order and g in bow[n]:
                    fields.append(f"{math.log10(bow[n][g]):.6f}")
                f.write("\t".join(fields) + "\n")  # TAB-separated (pyctcdecode splits on \t)
        f.write("\n\\end\\\n")
    return path


def build_lm_corpus(
    exclude: Iterable[str] = (),
    sources: Sequence[str] = ("fortunes",),
    n_command_sentences: int = 20_000,
    seed: int = 12_345,
    extra_files: Sequence[str | Path] = (),
    fortunes_dir: Path = FORTUNES_DIR,
    out_path: str | Path | None = None,
) -> list[str]:
    """Normalized LM training sentences from offline text, minus ``exclude``.

    ``sources``: "fortunes" (every sentence of every Debian fortune record) and/or "commands"
    (template sentences of the synthetic commands domain, drawn with ``seed``). ``extra_files``
    are plain-text files, one sentence per line. Sentences equal (after normalization) to one in
    ``exclude`` (pass the dev/test transcripts) are dropped; shorter n-gram overlaps remain,
    which is unavoidable for a template domain. Optionally writes one sentence per line.
    """
    banned = {normalize_text(s) for s in exclude}
    out: list[str] = []
    seen: set[str] = set()

    def add(text: str) -> None:
        s = normalize_text(text)
        if s and s not in banned and s not in seen:
            seen.add(s)
            out.append(s)

    for src in sources:
        if src == "fortunes":
            for _, body in fortune_records(fortunes_dir):
                for part in re.split(r"(?<=[.!?;:])\s+", body):
                    add(part)
        elif src == "commands":
            for s in command_sentences(n_command_sentences, seed=seed):
                add(s)
        else:
            raise KDSweepError(f"sources: unknown LM text source {src!r} (fortunes, commands)")
    for ef in extra_files:
        p = Path(ef)
        if not p.is_file():
            raise KDSweepError(f"extra_files: file not found: {p}")
        for line in p.read_text(encoding="utf-8", errors="replace").splitlines():
            add(line)
    if out_path is not None:
        Path(out_path).write_text("\n".join(out) + "\n", encoding="utf-8")
    return out


# --------------------------------------------------------------------------------------------
# Beam search with an n-gram LM
# --------------------------------------------------------------------------------------------


KENLM_MAGIC = b"mmap lm http://kheafield.com/code"  # first bytes of a KenLM binary


class BeamDecoder:
    """CTC prefix beam search with a KenLM n-gram (pyctcdecode shallow fusion).

    ``arpa_path`` is an ARPA file or a KenLM binary (``build_binary`` output: no unigram list).
    ``alpha`` weighs the LM log-prob, ``beta`` is a per-word bonus. Without an ARPA file it is a
    plain beam search; if kenlm/pyctcdecode cannot be loaded it warns once and decodes greedily.
    """

    def __init__(
        self,
        vocab: CharVocab,
        arpa_path: str | Path | None = None,
        alpha: float = 0.5,
        beta: float = 1.0,
        unk_score_offset: float = -10.0,
    ) -> None:
        self.vocab = vocab
        self.decoder = None
        self.fallback_reason: str | None = None
        try:
            from pyctcdecode import build_ctcdecoder

            if arpa_path is not None:
                import kenlm  # noqa: F401  (fail here with a clear reason, not deep inside)

                if not Path(arpa_path).is_file():
                    raise KDSweepError(f"arpa_path: LM file not found: {arpa_path}")
            unigrams = None if arpa_path is None else _arpa_words(Path(arpa_path))
            self.decoder = build_ctcdecoder(
                vocab.labels,
                kenlm_model_path=None if arpa_path is None else str(arpa_path),
                unigrams=unigrams,
                alpha=alpha,
                beta=beta,
                unk_score_offset=unk_score_offset,
            )
        except KDSweepError:
            raise
        except Exception as exc:  # ImportError, kenlm load errors: never crash a sweep
            self.fallback_reason = f"{type(exc).__name__}: {exc}"
            warnings.warn(
                f"BeamDecoder: LM beam search unavailable ({self.fallback_reason}); "
                "falling back to greedy decoding",
                RuntimeWarning,
                stacklevel=2,
            )

    @property
    def uses_lm(self) -> bool:
        """True when beam search with the LM is active (not the greedy fallback)."""
        return self.decoder is not None

    def decode_batch(self, logits_list: Sequence[np.ndarray], beam_width: int = 32) -> list[str]:
        """Decode unpadded [T, V] logit/log-prob arrays, one per utterance."""
        out = []
        for lg in logits_list:
            lg = np.asarray(lg, dtype=np.float32)
            if self.decoder is None:
                out.append(_collapse(lg.argmax(-1).tolist(), self.vocab))
            else:
                text = self.decoder.decode(lg, beam_width=beam_width)
                out.append(" ".join(text.split()))
        return out

    def decode_padded(self, logits: Tensor, lens: Tensor, beam_width: int = 32) -> list[str]:
        """Convenience: decode a padded [B, T, V] tensor with valid lengths ``lens``."""
        lp = torch.log_softmax(logits.detach().float(), -1).cpu().numpy()
        return self.decode_batch([lp[b, : int(n)] for b, n in enumerate(lens)], beam_width)


def _arpa_words(path: Path) -> list[str] | None:
    """Unigram words of an ARPA file, without the <s>, </s>, <unk> markers; None for a KenLM
    binary (no readable unigram list: pyctcdecode then decodes without its unigram filter)."""
    with open(path, "rb") as f:
        if f.read(len(KENLM_MAGIC)) == KENLM_MAGIC:
            return None
    words = []
    in_unigrams = False
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if line == "\\1-grams:":
                in_unigrams = True
            elif line.startswith("\\2-grams:") or line == "\\end\\":
                break
            elif in_unigrams and line:
                parts = line.split("\t")
                if len(parts) < 2:
                    raise KDSweepError(f"{path}: unigram line is not TAB-separated: {line!r}")
                if parts[1] not in ("<s>", "</s>", "<unk>"):
                    words.append(parts[1])
    if not words:
        raise KDSweepError(f"arpa_path: no unigrams found in {path}")
    return words
