"""Bad LM input: one clear error, before any trial, nothing written to the stores."""

from __future__ import annotations

from pathlib import Path

import pytest
from sweep_helpers import run_sweep_script

from kdsweep.errors import KDSweepError
from tests.lm_helpers import SMALL_LM, tiny_lm  # noqa: F401 - fixture
from trainables.lm.loop import prepare_lm
from trainables.registry import config_for


def _bert_dir(root: Path) -> Path:
    """A tiny BERT (an encoder: not a causal LM) with a tokenizer."""
    from transformers import BertConfig, BertModel, PreTrainedTokenizerFast

    from kdsweep.lm.tiny import build_tiny_teacher

    tok_dir = build_tiny_teacher(root / "tok", layers=1, hidden=16, vocab=300)
    cfg = BertConfig(vocab_size=300, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                     intermediate_size=32)  # fmt: skip
    BertModel(cfg).save_pretrained(root / "bert")
    PreTrainedTokenizerFast.from_pretrained(tok_dir).save_pretrained(root / "bert")
    return root / "bert"


def _case(name: str, root: Path, tiny: dict) -> tuple[dict, str]:
    """(config overrides, a word the error must contain) for one kind of bad input."""
    from kdsweep.lm.tiny import build_tiny_teacher

    if name == "not_causal":
        return {"teacher": str(_bert_dir(root))}, "not a causal LM"
    if name == "tokenizer":
        other = build_tiny_teacher(root / "other", layers=1, hidden=16, vocab=300)
        return {"student": str(other)}, "another tokenizer"
    if name == "block_size":
        return {"block_size": 128}, "positions"
    if name == "empty_corpus":
        (root / "empty.txt").write_text("\n\n  \n")
        return {"dataset": str(root / "empty.txt")}, "0 non-empty document"
    if name == "unreadable_corpus":
        (root / "bad.jsonl").write_text('{"text": "fine"}\n{not json\n')
        return {"dataset": str(root / "bad.jsonl")}, "line 2"
    if name == "binary_corpus":
        (root / "bin.txt").write_bytes(b"\xff\xfe\x00garbage\x81")
        return {"dataset": str(root / "bin.txt")}, "cannot read"
    if name == "corrupt_gguf":
        (root / "broken.gguf").write_bytes(b"GGUF" + bytes(range(256)) * 8)
        return {"teacher": str(root / "broken.gguf")}, "broken.gguf"
    raise ValueError(name)


CASES = ["not_causal", "tokenizer", "block_size", "empty_corpus", "unreadable_corpus",
         "binary_corpus", "corrupt_gguf"]  # fmt: skip


def _nothing_stored(cache: Path) -> bool:
    """No teacher entry and no cache entry (a lock file from a refused build is not data)."""
    entries = [p for d in ("lm_teachers", "lm_caches") for p in (cache / d).glob("*")
               if p.is_dir()]  # fmt: skip
    return not entries


@pytest.mark.trial
@pytest.mark.parametrize("name", CASES)
def test_bad_input_is_one_clear_error_and_writes_nothing(name, tiny_lm, tmp_path):  # noqa: F811
    overrides, needle = _case(name, tmp_path, tiny_lm)
    cache = tmp_path / "cache"
    cfg = {**tiny_lm, "condition": "kd", "cache_dir": str(cache), **overrides}
    with pytest.raises(KDSweepError) as err:
        prepare_lm(config_for(cfg), log=lambda m: None)
    msg = str(err.value)
    assert needle in msg and "\n" not in msg, msg
    assert _nothing_stored(cache)


@pytest.mark.unit
@pytest.mark.parametrize(
    "overrides, needle",
    [
        ({"divergence": "kl"}, "divergence"),
        ({"beta": 1.5}, "beta"),
        ({"dataset": "corpus.csv"}, ".txt/.jsonl"),
        ({"dataset": "/nonexistent/c.txt"}, "not found"),
        ({"block_size": 4}, "block_size"),
        ({"student_init": "copy"}, "student_init"),
        ({"temprature": 2.0}, "did you mean 'temperature'"),
    ],
)
def test_config_errors(overrides, needle):
    with pytest.raises(KDSweepError, match=needle):
        config_for({**SMALL_LM, "condition": "kd", **overrides})


@pytest.mark.e2e
def test_cli_bad_teacher_exits_2_before_ray(tmp_path, tiny_lm):  # noqa: F811
    overrides, _ = _case("corrupt_gguf", tmp_path, tiny_lm)
    res = run_sweep_script("lm_divergence", tmp_path, tmp_path / "cache",
                           f"teacher={overrides['teacher']}", timeout=300)  # fmt: skip
    assert res.returncode == 2, res.stderr[-2000:]
    errors = [ln for ln in res.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and "broken.gguf" in errors[0] and "Traceback" not in res.stderr
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())
    assert _nothing_stored(tmp_path / "cache")
