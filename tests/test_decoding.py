"""Greedy/beam decoding, WER/CER, ARPA writer, LM corpus."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from kdsweep.errors import KDSweepError
from kdsweep.speech.data import CharVocab
from kdsweep.speech.decoding import (
    BeamDecoder,
    build_lm_corpus,
    cer,
    greedy_decode,
    wer,
    write_arpa,
)

pytestmark = pytest.mark.unit

VOCAB = CharVocab()
HAS_LM = all(importlib.util.find_spec(m) for m in ("kenlm", "pyctcdecode"))
CARD_SENTENCES = [
    "queen of hearts", "king of hearts", "queen of spades", "ten of clubs", "ace of hearts",
    "the queen of clubs", "jack of diamonds", "two of hearts and three of clubs",
]  # fmt: skip


def _frames(text: str, weak: dict[int, float] | None = None) -> np.ndarray:
    """Log-probs [T, V]: each char gets one frame, then a blank frame.

    ``weak`` maps a char position to its probability (the rest of that frame goes to blank), so
    greedy decoding drops weak characters while beam search can still consider them.
    """
    rows = []
    for pos, ch in enumerate(text):
        p = np.full(len(VOCAB), 1e-4)
        idx = VOCAB.encode(ch)[0]
        strength = (weak or {}).get(pos, 0.97)
        p[idx] = strength
        p[0] = 1.0 - strength - 1e-4 * (len(VOCAB) - 2)
        rows.append(p)
        blank = np.full(len(VOCAB), 1e-4)
        blank[0] = 1.0 - 1e-4 * (len(VOCAB) - 1)
        rows.append(blank)
    return np.log(np.stack(rows)).astype(np.float32)


def test_greedy_decode_collapses_repeats_and_blanks() -> None:
    # "hello": l l needs a blank between; repeats of the same label merge
    h, e, ell, o = (VOCAB.encode(c)[0] for c in "helo")
    ids = [0, h, h, e, 0, ell, ell, 0, ell, o, o, 0, 1, 1, 0]
    logits = torch.full((2, len(ids), len(VOCAB)), -5.0)
    for t, i in enumerate(ids):
        logits[0, t, i] = 5.0
        logits[1, t, i] = 5.0
    out = greedy_decode(logits, torch.tensor([len(ids), 5]), VOCAB)
    assert out == ["hello", "he"]


def test_wer_cer_known_values() -> None:
    assert wer(["the cat sat"], ["the cat sat"]) == 0.0
    assert wer(["the cat sat"], ["the bat sat down"]) == pytest.approx(2 / 3)
    assert wer(["a b", "c d e"], ["a", "c d e"]) == pytest.approx(1 / 5)
    assert cer(["abc"], ["abd"]) == pytest.approx(1 / 3)
    assert cer(["ab cd"], ["abcd"]) == pytest.approx(1 / 5)


def test_wer_cer_empty_strings_do_not_crash() -> None:
    assert wer(["hello world"], [""]) == 1.0
    assert wer([""], [""]) == 0.0
    assert wer([""], ["oops"]) == 1.0  # one insertion, denominator clamped to 1
    assert cer(["", "ab"], ["", "ab"]) == 0.0
    assert wer([], []) == 0.0
    with pytest.raises(KDSweepError, match="hyps"):
        wer(["a"], [])


def test_write_arpa_format(tmp_path: Path) -> None:
    path = write_arpa(CARD_SENTENCES, tmp_path / "lm.arpa", order=3)
    lines = path.read_text().splitlines()
    assert lines[0] == "\\data\\" and lines[-1] == "\\end\\"
    assert any(ln.startswith("ngram 3=") for ln in lines)
    grams = [ln for ln in lines if ln and not ln.startswith(("\\", "ngram"))]
    assert all(len(ln.split("\t")) in (2, 3) and " " not in ln.split("\t")[0] for ln in grams)
    words = {ln.split("\t")[1] for ln in grams}
    assert {"<unk>", "<s>", "</s>", "queen", "of hearts", "queen of hearts"} <= words


@pytest.mark.skipif(not HAS_LM, reason="kenlm/pyctcdecode not installed")
def test_arpa_distributions_sum_to_one(tmp_path: Path) -> None:
    import kenlm

    model = kenlm.Model(str(write_arpa(CARD_SENTENCES, tmp_path / "lm.arpa", order=3)))
    vocab = sorted({w for s in CARD_SENTENCES for w in s.split()} | {"</s>", "<unk>"})
    for context in ([], ["queen"], ["queen", "of"], ["of", "clubs"], ["jack", "hearts"]):
        state = kenlm.State()
        model.BeginSentenceWrite(state)
        for w in context:
            nxt = kenlm.State()
            model.BaseScore(state, w, nxt)
            state = nxt
        total = sum(10 ** model.BaseScore(state, w, kenlm.State()) for w in vocab)
        assert total == pytest.approx(1.0, abs=1e-4)


@pytest.mark.skipif(not HAS_LM, reason="kenlm/pyctcdecode not installed")
def test_beam_search_with_lm_fixes_greedy_non_word(tmp_path: Path) -> None:
    text = "queen of hearts"
    lp = _frames(text, weak={1: 0.4})  # the "u" is weaker than blank
    greedy = greedy_decode(torch.from_numpy(lp)[None], torch.tensor([lp.shape[0]]), VOCAB)
    assert greedy == ["qeen of hearts"]
    arpa = write_arpa(CARD_SENTENCES, tmp_path / "lm.arpa", order=3)
    dec = BeamDecoder(VOCAB, arpa, alpha=0.5, beta=1.0)
    assert dec.uses_lm
    assert dec.decode_batch([lp], beam_width=16) == [text]
    padded = torch.from_numpy(np.concatenate([lp, lp[:3]]))[None]
    assert dec.decode_padded(padded, torch.tensor([lp.shape[0]]), beam_width=16) == [text]


def test_beam_decoder_falls_back_to_greedy_without_kenlm(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    arpa = write_arpa(CARD_SENTENCES, tmp_path / "lm.arpa", order=2)
    monkeypatch.setitem(sys.modules, "kenlm", None)  # makes `import kenlm` raise ImportError
    with pytest.warns(RuntimeWarning, match="falling back to greedy"):
        dec = BeamDecoder(VOCAB, arpa)
    assert not dec.uses_lm
    assert dec.decode_batch([_frames("ten of clubs")]) == ["ten of clubs"]


def test_beam_decoder_missing_arpa_is_a_clear_error(tmp_path: Path) -> None:
    if not HAS_LM:
        pytest.skip("kenlm/pyctcdecode not installed")
    with pytest.raises(KDSweepError, match="arpa_path"):
        BeamDecoder(VOCAB, tmp_path / "nope.arpa")


def test_build_lm_corpus_excludes_held_out_sentences(tmp_path: Path) -> None:
    full = build_lm_corpus(sources=("commands",), n_command_sentences=500, seed=7)
    held_out = full[:20]
    kept = build_lm_corpus(
        exclude=[s.upper() + "." for s in held_out],  # compared after normalization
        sources=("commands",),
        n_command_sentences=500,
        seed=7,
        out_path=tmp_path / "lm.txt",
    )
    assert not set(held_out) & set(kept)
    assert len(kept) == len(full) - 20
    assert (tmp_path / "lm.txt").read_text().splitlines() == kept
    with pytest.raises(KDSweepError, match="sources"):
        build_lm_corpus(sources=("wikipedia",))


@pytest.mark.skipif(not Path("/usr/share/games/fortunes").is_dir(), reason="fortunes missing")
def test_build_lm_corpus_from_fortunes() -> None:
    sents = build_lm_corpus(sources=("fortunes",))
    assert len(sents) > 10_000
    assert all(s == " ".join(s.split()) and s.islower() or not s.isalpha() for s in sents[:500])
