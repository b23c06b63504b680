"""Bring-your-own models on the text side: pretrained students with their own tokenizer, an
already fine-tuned teacher used as it is (teacher_epochs=0), and the errors around them.

The pretrained models are built here (offline): a tiny DistilBERT and a tiny BERT classifier,
saved with save_pretrained, with a WordPiece tokenizer trained on a few fortunes (so its
vocabulary is not the teacher's)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from kdsweep.errors import KDSweepError
from kdsweep.text.models import resolve_student, tokenizer_fingerprint
from trainables.text.config import CascadeConfig, HiddenConfig, SoftConfig, TextConfig
from trainables.text.loop import evaluate_text_checkpoint, prepare_text
from trainables.text.trainable import TEXT_TRAINABLES
from trainables.tune_io import local_session

FAST = {"lr": 3e-3, "attribution_examples": 0, "epochs": 2}
PRE = {"student_init": "random"}  # the session config initialises its shape from the teacher


def _wordpiece(texts: list[str], out: Path):
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    special = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tok.train_from_iterator(
        texts, trainers.WordPieceTrainer(vocab_size=600, special_tokens=special)
    )
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", tok.token_to_id("[CLS]")), ("[SEP]", tok.token_to_id("[SEP]"))],
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
    )
    fast.save_pretrained(out)
    return fast


@pytest.fixture(scope="session")
def pretrained(tmp_path_factory, small_text) -> dict[str, Path]:
    """{"distilbert": dir, "bert": dir} (own WordPiece vocab) + "teacher_copy": the session
    teacher's fine-tuned model copied out, with the data's label names in its config."""
    from transformers import (
        BertConfig,
        BertForSequenceClassification,
        DistilBertConfig,
        DistilBertForSequenceClassification,
    )

    from kdsweep.text.data import load_text_dataset

    root = tmp_path_factory.mktemp("pretrained")
    cfg = TextConfig.from_dict(small_text)
    splits = load_text_dataset(cfg.data_spec())
    texts = [t for t, _ in splits.train[:120]]
    out = {}
    tok = _wordpiece(texts, root / "distilbert")
    dcfg = DistilBertConfig(
        vocab_size=len(tok), dim=32, n_layers=2, n_heads=2, hidden_dim=64, num_labels=3
    )
    DistilBertForSequenceClassification(dcfg).save_pretrained(root / "distilbert")
    out["distilbert"] = root / "distilbert"
    tok.save_pretrained(root / "bert")
    bcfg = BertConfig(
        vocab_size=len(tok),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
    )
    BertForSequenceClassification(bcfg).save_pretrained(root / "bert")
    out["bert"] = root / "bert"
    # The session teacher (fine-tuned on these fortunes), as a user's own fine-tuned classifier.
    data = prepare_text(cfg, log=lambda m: None)
    shutil.copytree(data.teacher.model_dir, root / "teacher")
    conf = json.loads((root / "teacher" / "config.json").read_text())
    conf["id2label"] = dict(enumerate(splits.label_names))
    conf["label2id"] = {n: i for i, n in enumerate(splits.label_names)}
    (root / "teacher" / "config.json").write_text(json.dumps(conf))
    out["teacher"] = root / "teacher"
    out["teacher_dev_accuracy"] = data.teacher.metrics["dev_accuracy"]
    return out


# ---------------------------------------------------------------- bad input (fast)
@pytest.mark.unit
@pytest.mark.parametrize(
    "name, shape, hub",
    [
        ("tinybert", "L4-H312", "huawei-noah/TinyBERT_General_4L_312D"),
        ("minilm", "L6-H384", "MiniLM"),
    ],
)
def test_old_shape_name_is_an_error_naming_both_meanings(name, shape, hub):
    with pytest.raises(KDSweepError, match="is a shape name") as e:
        TextConfig.from_dict({"student": name})
    assert shape in str(e.value) and hub in str(e.value)


@pytest.mark.unit
def test_shapes_keep_working():
    assert TextConfig.from_dict({}).student == "L2-H128"
    assert TextConfig.from_dict({"student": "L4-H312"}).student == "L4-H312"
    with pytest.raises(KDSweepError, match="not a valid shape"):
        TextConfig.from_dict({"student": "L2-H130-A4"})


@pytest.mark.unit
def test_student_dir_without_config_or_tokenizer(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(KDSweepError, match="has no config.json"):
        TextConfig.from_dict({"student": str(tmp_path / "empty")})
    (tmp_path / "notok").mkdir()
    (tmp_path / "notok" / "config.json").write_text("{}")
    with pytest.raises(KDSweepError, match="has no tokenizer"):
        TextConfig.from_dict({"student": str(tmp_path / "notok")})


@pytest.mark.unit
def test_offline_hub_name_says_it_needs_internet():
    with pytest.raises(KDSweepError, match="needs internet or a local copy"):
        resolve_student("nobody-here/no-such-model-kdsweep")


@pytest.mark.unit
def test_pretrained_student_cannot_take_teacher_init(tmp_path):
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.json").write_text("{}")
    (tmp_path / "m" / "vocab.txt").write_text("[PAD]\n")
    with pytest.raises(KDSweepError, match="student_init"):
        TextConfig.from_dict({"student": str(tmp_path / "m"), "student_init": "teacher"})


@pytest.mark.unit
def test_teacher_knobs_reach_the_recipe():
    r = TextConfig.from_dict(
        {"teacher_batch_size": 8, "teacher_grad_accum": 4, "teacher_precision": "bf16"}
    ).teacher_recipe()
    assert (r.batch_size, r.grad_accum, r.precision) == (8, 4, "bf16")
    with pytest.raises(KDSweepError, match="teacher_precision"):
        TextConfig.from_dict({"teacher_precision": "fp8"})


@pytest.mark.unit
def test_recipe_id_unchanged_at_the_new_fields_defaults():
    """A teacher stored before grad_accum/precision existed keeps its id (and cache entry)."""
    from kdsweep.store import content_id
    from kdsweep.text.teacher_store import TeacherRecipe, TeacherStore

    old = {"backbone": "minilm", "epochs": 2, "lr": 5e-5, "batch_size": 32, "max_len": 64,
           "seed": 0}  # fmt: skip
    assert TeacherStore.entry_id(TeacherRecipe(), "fp") == content_id(old, "fp")
    assert TeacherStore.entry_id(TeacherRecipe(grad_accum=2), "fp") != content_id(old, "fp")


# ---------------------------------------------------------------- pretrained students
@pytest.mark.trial
def test_pretrained_student_has_its_own_tokens(pretrained, small_text):
    cfg = SoftConfig.from_dict({**small_text, **PRE, "student": str(pretrained["distilbert"])})
    data = prepare_text(cfg, log=lambda m: None)
    assert data.cross_tokenizer
    s, t = data.student_tokens["train"], data.tokens["train"]
    assert s["input_ids"].shape[0] == t["input_ids"].shape[0]
    assert (s["labels"] == t["labels"]).all()  # same rows, same order: per-example targets
    assert not (s["input_ids"] == t["input_ids"]).all()
    assert int(s["input_ids"].max()) < 600  # the student's own vocabulary
    # a shape student reads the teacher's tokens
    same = prepare_text(SoftConfig.from_dict(small_text), log=lambda m: None)
    assert not same.cross_tokenizer
    # cache key by content: a copy of the tokenizer hashes the same
    assert tokenizer_fingerprint(str(pretrained["distilbert"])) == tokenizer_fingerprint(
        str(pretrained["bert"])
    )
    assert tokenizer_fingerprint(data.teacher.model_dir) != tokenizer_fingerprint(
        str(pretrained["bert"])
    )


@pytest.mark.trial
@pytest.mark.parametrize("arch", ["distilbert", "bert"])
def test_pretrained_student_soft_kd_across_tokenizers(arch, pretrained, small_text, tmp_path):
    cfg = {
        **small_text,
        **FAST,
        "student": str(pretrained[arch]),
        "student_init": "random",
        "attribution_examples": 4 if arch == "bert" else 0,
        "attributions": arch == "bert",
    }
    with local_session(tmp_path) as session:
        TEXT_TRAINABLES["soft"](cfg)
    results = session.results
    assert [r["epoch"] for r in results] == [1, 2]
    assert results[-1]["loss_kd"] > 0 and results[-1]["dev_accuracy"] >= 0
    assert results[-1]["params"] < 100_000  # the tiny pretrained model, not a BERT shape
    if arch == "bert":  # word-level attribution similarity across the two tokenizers
        assert -1.0 <= results[-1]["attr_cosine"] <= 1.0
    # the checkpoint reloads as the pretrained architecture, evaluated on its own tokens
    test = evaluate_text_checkpoint(SoftConfig.from_dict(cfg), session.last_checkpoint)
    assert 0.0 <= test["test_accuracy"] <= 1.0


@pytest.mark.trial
def test_hidden_kd_across_tokenizers_is_refused(pretrained, small_text):
    cfg = HiddenConfig.from_dict({**small_text, "student": str(pretrained["bert"]),
                                  "student_init": "random"})  # fmt: skip
    with pytest.raises(KDSweepError, match="token positions do not align"):
        prepare_text(cfg, log=lambda m: None)


# ---------------------------------------------------------------- teacher as it is
@pytest.mark.trial
def test_teacher_epochs_0_uses_a_fine_tuned_classifier_as_is(pretrained, small_text, monkeypatch):
    import kdsweep.text.teacher_store as ts

    def no_finetune(*a, **k):
        raise AssertionError("teacher_epochs=0 fine-tuned the teacher")

    monkeypatch.setattr(ts, "finetune", no_finetune)
    cfg = TextConfig.from_dict(
        {**small_text, "teacher": str(pretrained["teacher"]), "teacher_epochs": 0}
    )
    data = prepare_text(cfg, log=lambda m: None)
    assert data.teacher.metrics["dev_accuracy"] == pytest.approx(pretrained["teacher_dev_accuracy"])
    assert data.teacher.logits("dev").shape[1] == len(data.splits.label_names)
    again = prepare_text(cfg, log=lambda m: None)
    assert again.teacher_hit and again.teacher.id == data.teacher.id


@pytest.mark.trial
def test_teacher_with_other_labels_is_refused(pretrained, small_text, tmp_path):
    bad = tmp_path / "other"
    shutil.copytree(pretrained["teacher"], bad)
    conf = json.loads((bad / "config.json").read_text())
    conf["id2label"] = {i: f"topic{i}" for i in range(len(conf["id2label"]))}
    (bad / "config.json").write_text(json.dumps(conf))
    cfg = TextConfig.from_dict({**small_text, "teacher": str(bad), "teacher_epochs": 0})
    with pytest.raises(KDSweepError, match="topic0") as e:
        prepare_text(cfg, log=lambda m: None)
    assert "computers" in str(e.value)


@pytest.mark.e2e
def test_cli_old_shape_name_exits_2(tmp_path, capsys):
    import driver.cli as cli_mod

    with pytest.raises(SystemExit) as e:
        cli_mod.main(
            "temperature",
            None,
            ["--smoke", "--student", "tinybert", "--storage", str(tmp_path / "runs")],
        )
    err = capsys.readouterr().err
    assert e.value.code == 2 and "is a shape name" in err and "Traceback" not in err, err


@pytest.mark.trial
def test_cascade_from_a_pretrained_stage(pretrained, small_text, tmp_path):
    """Stage 1 a pretrained DistilBERT (own tokenizer), stage 2 a shape taught by it: the shape
    is built on the stage-1 vocabulary and reads the stage-1 tokenizer's tokens."""
    base = {**small_text, **FAST, **PRE, "alpha": 0.5}
    with local_session(tmp_path / "s1") as s1:
        TEXT_TRAINABLES["cascade"]({**base, "student": str(pretrained["distilbert"])})
    stage2 = {**base, "student": "L1-H32-A2", "teacher_checkpoint": str(s1.last_checkpoint),
              "attribution_examples": 4, "attributions": True}  # fmt: skip
    data = prepare_text(CascadeConfig.from_dict(stage2), log=lambda m: None)
    assert tokenizer_fingerprint(data.teacher.model_dir) == tokenizer_fingerprint(
        str(pretrained["distilbert"])
    )
    with local_session(tmp_path / "s2") as s2:
        TEXT_TRAINABLES["cascade"](stage2)
    assert [r["epoch"] for r in s2.results] == [1, 2]
    # attribution similarity to its own teacher (stage 1, same tokenizer: per token) and to the
    # original MiniLM teacher (another tokenizer: per word)
    last = s2.results[-1]
    for key in ("attr_cosine", "attr_cosine_origin", "attr_spearman_origin"):
        assert -1.0 <= last[key] <= 1.0, key
    assert s2.results[0]["teacher_dev_accuracy"] == pytest.approx(
        s1.results[-1]["dev_accuracy"], abs=1e-6
    )
    test = evaluate_text_checkpoint(CascadeConfig.from_dict(stage2), s2.last_checkpoint)
    assert 0.0 <= test["test_accuracy"] <= 1.0
