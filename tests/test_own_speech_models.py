"""Importing a user's BiLSTM-CTC checkpoint and a user's LM file (pure pieces)."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from kdsweep.errors import KDSweepError
from kdsweep.speech.checkpoint_import import infer_shape, load_bilstm_ctc, read_state_dict
from kdsweep.speech.models import BiLSTMCTC
from kdsweep.speech.ngram import check_arpa, lm_kind, resolve_lm

pytestmark = pytest.mark.unit


def _model(layers=2, hidden=16, stack=3, vocab=29, n_mels=20):
    torch.manual_seed(0)
    return BiLSTMCTC(n_mels, hidden, layers, vocab, stack, 0.0).eval()


def test_pt_state_dict_round_trip(tmp_path):
    m = _model(layers=3, hidden=24, stack=2)
    torch.save({"model": m.state_dict(), "best_val_wer": 48.41, "epoch": 80}, tmp_path / "c.pt")
    got, shape = load_bilstm_ctc(tmp_path / "c.pt", n_mels=20, vocab_size=29)
    assert (shape.layers, shape.hidden, shape.stack, shape.vocab_size) == (3, 24, 2, 29)
    x, lens = torch.randn(2, 30, 20), torch.tensor([30, 17])
    assert torch.equal(got(x, lens).logits, m(x, lens).logits)


def test_safetensors_and_module_prefix(tmp_path):
    m = _model()
    save_file({f"module.{k}": v.contiguous() for k, v in m.state_dict().items()},
              str(tmp_path / "c.safetensors"))  # fmt: skip
    state = read_state_dict(tmp_path / "c.safetensors")
    assert "head.weight" in state
    assert infer_shape(state, 20).arch == "L2-H16-S3"


def test_pickled_checkpoint_is_refused_with_advice(tmp_path):
    # a pickled object (here a class reference): weights_only=True refuses it, never runs it
    torch.save({"model": _model().state_dict(), "cls": BiLSTMCTC}, tmp_path / "bad.pt")
    with pytest.raises(KDSweepError, match=r"weights_only=True\) refused .*state_dict"):
        read_state_dict(tmp_path / "bad.pt")


def test_vocab_and_feature_mismatch_name_keys_and_shapes(tmp_path):
    torch.save(_model(vocab=31).state_dict(), tmp_path / "v.pt")
    with pytest.raises(KDSweepError, match="head.weight has 31 outputs .* 29"):
        load_bilstm_ctc(tmp_path / "v.pt", n_mels=20, vocab_size=29)
    with pytest.raises(KDSweepError, match="not a multiple of the corpus' 80 mel bins"):
        load_bilstm_ctc(tmp_path / "v.pt", n_mels=80, vocab_size=31)
    state = _model().state_dict()
    state["lstms.1.weight_hh_l0"] = torch.zeros(64, 8)
    torch.save(state, tmp_path / "w.pt")
    with pytest.raises(KDSweepError, match=r"wrong shapes: lstms.1.weight_hh_l0 \(64, 8\)"):
        load_bilstm_ctc(tmp_path / "w.pt", n_mels=20, vocab_size=29)
    torch.save({"encoder.weight": torch.zeros(2, 2)}, tmp_path / "x.pt")
    with pytest.raises(KDSweepError, match="not a kdsweep BiLSTM-CTC state dict"):
        load_bilstm_ctc(tmp_path / "x.pt", n_mels=20, vocab_size=29)


def test_missing_and_unknown_files(tmp_path):
    with pytest.raises(KDSweepError, match="no such file"):
        read_state_dict(tmp_path / "nope.pt")
    (tmp_path / "c.onnx").write_bytes(b"x")
    with pytest.raises(KDSweepError, match="unknown checkpoint type"):
        read_state_dict(tmp_path / "c.onnx")
    (tmp_path / "t.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{trunc")
    with pytest.raises(KDSweepError, match="not a readable safetensors"):
        read_state_dict(tmp_path / "t.safetensors")


ARPA = (
    "\\data\\\nngram 1=4\nngram 2=2\n\n\\1-grams:\n-1.0\t<s>\t-0.3\n-0.5\tgo\t-0.2\n"
    "-0.7\t</s>\n-2.0\t<unk>\n\n\\2-grams:\n-0.1\t<s> go\n-0.2\tgo </s>\n\n\\end\\\n"
)


def test_arpa_checked_and_corrupt_arpa_named(tmp_path):
    good = tmp_path / "lm.arpa"
    good.write_text(ARPA)
    assert lm_kind(good) == "arpa" and check_arpa(good) == 2
    assert resolve_lm(str(good), 3, tmp_path) == good.resolve()
    (tmp_path / "cut.arpa").write_text(ARPA.split("\\2-grams:")[0])
    with pytest.raises(KDSweepError, match="no \\\\end\\\\ line"):
        resolve_lm(str(tmp_path / "cut.arpa"), 3, tmp_path)
    (tmp_path / "count.arpa").write_text(ARPA.replace("ngram 2=2", "ngram 2=5"))
    with pytest.raises(KDSweepError, match="declares 5 2-grams, the file has 2"):
        check_arpa(tmp_path / "count.arpa")
    (tmp_path / "prob.arpa").write_text(ARPA.replace("-0.5\tgo", "x\tgo"))
    with pytest.raises(KDSweepError, match=r"line 7: 'x' is not a log-probability"):
        check_arpa(tmp_path / "prob.arpa")


def test_text_file_builds_a_cached_ngram(tmp_path):
    txt = tmp_path / "corpus.txt"
    txt.write_text("Turn on the lights.\nturn off the radio\n\n")
    arpa = resolve_lm(str(txt), 2, tmp_path / "cache")
    assert check_arpa(arpa) == 2 and "turn on the lights" not in arpa.read_text()
    assert "\tturn on\t" in arpa.read_text() or "\tturn on\n" in arpa.read_text()
    assert resolve_lm(str(txt), 2, tmp_path / "cache") == arpa  # cached by content
    assert resolve_lm(str(txt), 3, tmp_path / "cache") != arpa  # order is part of the key
    (tmp_path / "bin.lm").write_bytes(b"mmap lm http://kheafield.com/code format version 5\0..")
    assert lm_kind(tmp_path / "bin.lm") == "kenlm"
