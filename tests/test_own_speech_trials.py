"""Speech with one's own models: an imported teacher checkpoint, one's own LM, label smoothing,
chosen feature layers with projection (issue 14, speech items 6-8)."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import SMALL_ASR, needs_tts
from safetensors.torch import load_file

from kdsweep.errors import KDSweepError
from kdsweep.speech.data import CharVocab
from kdsweep.speech.decoding import _arpa_words
from kdsweep.speech.losses import ctc_loss, uniform_kl
from kdsweep.speech.models import BiLSTMCTC
from trainables.speech.config import ASRHiddenConfig, SelfDistillConfig, layer_pairs
from trainables.speech.trainable import ASR_TRAINABLES
from trainables.tune_io import local_session

SMALL = {k: v for k, v in SMALL_ASR.items() if not k.startswith("teacher_")}
ARPA = (
    "\\data\\\nngram 1=4\nngram 2=2\n\n\\1-grams:\n-1.0\t<s>\t-0.3\n-0.5\tgo\t-0.2\n"
    "-0.7\t</s>\n-2.0\t<unk>\n\n\\2-grams:\n-0.1\t<s> go\n-0.2\tgo </s>\n\n\\end\\\n"
)


def _save_teacher(path, layers=4, hidden=24, stack=3, vocab=None):
    torch.manual_seed(0)
    m = BiLSTMCTC(80, hidden, layers, vocab or len(CharVocab()), stack, 0.0)
    torch.save({"model": m.state_dict(), "best_val_wer": 48.41}, path)
    return path


# ------------------------------------------------------------------------------ label smoothing
@pytest.mark.unit
def test_label_smoothing_mixes_ctc_with_uniform_kl_over_valid_frames():
    torch.manual_seed(0)
    logits = torch.randn(2, 12, 29)
    targets, in_lens, tgt_lens = (
        torch.tensor([3, 4, 5, 6, 7]),
        torch.tensor([12, 7]),
        torch.tensor([3, 2]),
    )
    plain = ctc_loss(logits, targets, in_lens, tgt_lens)
    assert torch.equal(ctc_loss(logits, targets, in_lens, tgt_lens, label_smoothing=0.0), plain)
    lp = torch.log_softmax(logits, -1)
    kl = uniform_kl(lp, in_lens)
    mixed = ctc_loss(logits, targets, in_lens, tgt_lens, label_smoothing=0.1)
    assert torch.allclose(mixed, 0.9 * plain + 0.1 * kl)
    # KL(u || p) by hand, over the 12 and 7 valid frames only
    by_hand = [
        (torch.log(torch.tensor(1 / 29)) - lp[b, :n]).mean(-1).mean() for b, n in ((0, 12), (1, 7))
    ]
    assert torch.allclose(kl, torch.stack(by_hand).mean(), atol=1e-6)
    padded = logits.clone()
    padded[1, 7:] = 100.0  # padded frames never count
    assert torch.allclose(uniform_kl(torch.log_softmax(padded, -1), in_lens), kl)
    assert float(
        uniform_kl(torch.log_softmax(torch.zeros(1, 5, 29), -1), torch.tensor([5]))
    ) == pytest.approx(0, abs=1e-6)


# ------------------------------------------------------------------------------ layer pairs
@pytest.mark.unit
def test_layer_pairs_select_and_map():
    assert layer_pairs(3, 5, "2,3", "2,4") == [(2, 2), (3, 4)]
    assert layer_pairs(2, 4, "", "") == [(1, 2), (2, 4)]  # uniform, as before
    assert layer_pairs(3, 3, "2,3", "") == [(2, 2), (3, 3)]
    with pytest.raises(KDSweepError, match="field 'layer_map'.*2 teacher layer"):
        layer_pairs(3, 5, "2,3", "2")
    with pytest.raises(KDSweepError, match="field 'student_layers'"):
        layer_pairs(3, 5, "4", "")


@pytest.mark.unit
def test_hidden_weights_and_imported_teacher_shape(tmp_path):
    ckpt = str(_save_teacher(tmp_path / "t.pt", layers=5, hidden=24))
    cfg = ASRHiddenConfig.from_dict(
        {**SMALL, "layers": 3, "teacher_checkpoint": ckpt, "student_layers": "2,3",
         "layer_map": "2,4", "alpha": 0.7, "beta": 0.2, "gamma": 0.1}
    )  # fmt: skip
    assert (cfg.teacher_layers, cfg.teacher_hidden) == (5, 24)  # read from the tensors
    assert (cfg.ctc_weight, cfg.mse_weight) == (0.2, 0.1)
    assert cfg.needs.hidden_layers == (2, 4) and cfg.needs.project
    assert ASRHiddenConfig.from_dict({**SMALL}).ctc_weight == 1.0  # default: 1 - alpha
    with pytest.raises(KDSweepError, match="'teacher_layers': 2 contradicts the checkpoint's 5"):
        ASRHiddenConfig.from_dict({**SMALL, "teacher_checkpoint": ckpt, "teacher_layers": 2})
    with pytest.raises(KDSweepError, match="frame stacking 3 differs"):
        SelfDistillConfig.from_dict({**SMALL, "teacher_checkpoint": ckpt, "stack": 2})
    s = SelfDistillConfig.from_dict({**SMALL, "layers": 3, "hidden": 16, "teacher_checkpoint": ckpt,
                                     "student_layers": "2,3", "layer_map": "2,4"})  # fmt: skip
    assert s.needs.hidden_layers == (2, 4) and s.needs.project  # 32 -> 48 wide
    twin = SelfDistillConfig.from_dict({**SMALL, "layers": 3, "student_layers": "2,3"})
    assert twin.needs.hidden_layers == (2, 3) and not twin.needs.project


@pytest.mark.unit
def test_bad_checkpoints_fail_as_config_input(tmp_path):
    bad_vocab = str(_save_teacher(tmp_path / "v.pt", vocab=31))
    with pytest.raises(KDSweepError, match="head.weight has 31 outputs"):
        SelfDistillConfig.from_dict({**SMALL, "teacher_checkpoint": bad_vocab})
    torch.save({"model": BiLSTMCTC(80, 8, 1, 29, 3, 0.0).state_dict(), "cls": BiLSTMCTC},
               tmp_path / "pickled.pt")  # fmt: skip
    with pytest.raises(KDSweepError, match="weights_only=True"):
        SelfDistillConfig.from_dict({**SMALL, "teacher_checkpoint": str(tmp_path / "pickled.pt")})
    from trainables.speech.config import ASRConfig

    with pytest.raises(KDSweepError, match="has no teacher to import"):
        ASRConfig.from_dict({**SMALL, "teacher_checkpoint": str(tmp_path / "v.pt")})


# ------------------------------------------------------------------------------ lm=
@pytest.mark.unit
def test_lm_field_checks_arpa_text_and_binary(tmp_path):
    (tmp_path / "cut.arpa").write_text(ARPA.split("\\2-grams:")[0])
    with pytest.raises(KDSweepError, match="field 'lm'.*no \\\\end\\\\ line"):
        ASRHiddenConfig.from_dict({**SMALL, "lm": str(tmp_path / "cut.arpa")})
    with pytest.raises(KDSweepError, match="field 'lm': file not found"):
        ASRHiddenConfig.from_dict({**SMALL, "lm": str(tmp_path / "nope.arpa")})
    (tmp_path / "lm.arpa").write_text(ARPA)
    (tmp_path / "text.txt").write_text("go left\ngo right\n")
    binary = tmp_path / "lm.bin"
    binary.write_bytes(b"mmap lm http://kheafield.com/code format version 5\0\0\1\2")
    for f in ("lm.arpa", "text.txt", "lm.bin"):
        assert ASRHiddenConfig.from_dict({**SMALL, "lm": str(tmp_path / f), "lm_order": 2}).lm
    assert _arpa_words(binary) is None  # a KenLM binary: pyctcdecode gets unigrams=None
    assert _arpa_words(tmp_path / "lm.arpa") == ["go"]


# ------------------------------------------------------------------------------ trial
@needs_tts
@pytest.mark.trial
def test_self_distill_from_imported_pt_with_layers_2_3(tmp_path, cache_dir):
    """The note's plan: self-distil from one's own checkpoint_best.pt (here 4 layers of 24),
    student layers [2, 3] <- teacher layers [2, 4] through a projection (32 -> 48 wide)."""
    torch.set_num_threads(1)
    ckpt = _save_teacher(tmp_path / "checkpoint_best.pt", layers=4, hidden=24)
    text_lm = tmp_path / "lm.txt"
    text_lm.write_text("turn on the lights\nturn off the radio\nplay some music\n")
    config = {
        **SMALL, "cache_dir": str(cache_dir), "layers": 3, "hidden": 16, "eval_cmu": False,
        "teacher_checkpoint": str(ckpt), "student_layers": "2,3", "layer_map": "2,4",
        "alpha": 0.7, "beta": 0.2, "gamma": 0.1, "label_smoothing": 0.1,
        "lm": str(text_lm), "lm_order": 2,
    }  # fmt: skip
    with local_session(tmp_path / "trial") as s:
        ASR_TRAINABLES["self"](dict(config))
    last = s.results[-1]
    for key in ("teacher_dev_wer", "teacher_dev_wer_beam", "teacher_test_wer_beam",
                "dev_wer_beam", "loss_hidden"):  # fmt: skip
        assert key in last, key
    weights = load_file(str(s.last_checkpoint / "model.safetensors"))
    assert [tuple(weights[f"aux.proj.{k}.weight"].shape) for k in (0, 1)] == [(48, 32)] * 2
    entries = [json.loads(p.read_text()) for p in (cache_dir / "asr_teachers").rglob("meta.json")]
    imported = [m for m in entries if m.get("source") == str(ckpt.resolve())]
    assert len(imported) == 1 and imported[0]["arch"] == "L4-H24"
    assert any(p.name.startswith("user-lm-2gram-") for p in (cache_dir / "speech" / "lm").iterdir())


@pytest.mark.unit
def test_keep_every_marks_every_kth_epoch(tmp_path):
    from safetensors.torch import save_file

    from driver.pruning import kept_every

    def ckpt(epoch: int, keep_every: int):
        d = tmp_path / f"checkpoint_{epoch:06d}_{keep_every}"
        d.mkdir()
        save_file(
            {"x": torch.zeros(1)}, str(d / "model.safetensors"), metadata={"epoch": str(epoch)}
        )
        (d / "config.json").write_text(json.dumps({"keep_every": keep_every}))
        return d

    assert kept_every(ckpt(10, 5)) and kept_every(ckpt(75, 5))
    assert not kept_every(ckpt(11, 5)) and not kept_every(ckpt(10, 0))
