"""The content-addressed teacher store: hits on reuse, ids per recipe, cached outputs, seeds."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

import kdsweep.text.teacher_store as teacher_store_mod
from kdsweep.errors import KDSweepError
from kdsweep.text.data import load_text_dataset, tokenize_splits
from kdsweep.text.models import resolve_backbone
from kdsweep.text.teacher_store import StoredTeacher, TeacherRecipe, TeacherStore
from kdsweep.train_utils import classification_metrics, predict_logits
from trainables.text.config import SoftConfig, TextConfig
from trainables.text.loop import prepare_text

pytestmark = pytest.mark.trial


def _no_finetune(*a, **k):
    raise AssertionError("the teacher was fine-tuned again although the store holds it")


# ---------------------------------------------------------------- the session teacher
def test_second_prepare_is_a_store_hit(small_text, monkeypatch):
    monkeypatch.setattr(teacher_store_mod, "finetune", _no_finetune)
    logs: list[str] = []
    data = prepare_text(TextConfig.from_dict(small_text), log=logs.append)
    assert data.teacher_hit is True
    assert not any("fine-tuning" in m for m in logs)
    assert data.splits.label_names == data.teacher.meta["label_names"]


def test_conditions_and_student_settings_share_one_teacher(small_text, monkeypatch):
    monkeypatch.setattr(teacher_store_mod, "finetune", _no_finetune)
    base = prepare_text(TextConfig.from_dict(small_text), log=lambda m: None)
    other = {**small_text, "student": "L2-H128", "lr": 0.01, "alpha": 0.9, "seed": 7}
    data = prepare_text(SoftConfig.from_dict(other), log=lambda m: None)
    assert data.teacher_hit and data.teacher.id == base.teacher.id


def test_store_ids_differ_when_the_recipe_or_data_differ(small_text):
    cfg = TextConfig.from_dict(small_text)
    fp = load_text_dataset(cfg.data_spec()).fingerprint()
    recipe = cfg.teacher_recipe()
    base = TeacherStore.entry_id(recipe, fp)
    assert TeacherStore.entry_id(cfg.teacher_recipe(), fp) == base  # stable
    variants = {
        "epochs": recipe.epochs + 1,
        "lr": recipe.lr * 2,
        "batch_size": recipe.batch_size * 2,
        "max_len": recipe.max_len * 2,
        "seed": recipe.seed + 1,
        "backbone": "/some/other/model",
    }
    ids = {base}
    for field, value in variants.items():
        new = TeacherStore.entry_id(dataclasses.replace(recipe, **{field: value}), fp)
        assert new not in ids, field
        ids.add(new)
    assert TeacherStore.entry_id(recipe, "another-data-fingerprint") not in ids
    # Through the config: a teacher_* or data field change moves the id; a student field does not.
    for key, value in (("teacher_epochs", 4), ("teacher_lr", 1e-4), ("max_len", 48)):
        c = TextConfig.from_dict({**small_text, key: value})
        assert TeacherStore.entry_id(c.teacher_recipe(), fp) != base, key
    other_split = TextConfig.from_dict({**small_text, "split_seed": 1})
    assert load_text_dataset(other_split.data_spec()).fingerprint() != fp
    c = TextConfig.from_dict({**small_text, "student": "L2-H128", "lr": 0.01})
    assert TeacherStore.entry_id(c.teacher_recipe(), fp) == base


def test_stored_entry_layout_and_cached_logits(small_text):
    data = prepare_text(TextConfig.from_dict(small_text), log=lambda m: None)
    teacher = data.teacher
    meta = json.loads((teacher.path / "meta.json").read_text())
    assert meta["id"] == teacher.id == teacher.path.name
    assert meta["recipe"]["epochs"] == small_text["teacher_epochs"]
    assert meta["data"] == data.splits.fingerprint()
    assert meta["train_seconds"] > 0
    assert (teacher.path / "model" / "model.safetensors").is_file()
    assert (teacher.path / "model" / "tokenizer_config.json").is_file()
    for split in ("train", "dev", "test"):
        logits = teacher.logits(split)
        assert logits.dtype == torch.float32
        assert logits.shape == (len(data.tokens[split]["labels"]), 6)
    for split in ("dev", "test"):
        m = classification_metrics(teacher.logits(split), data.tokens[split]["labels"])
        assert teacher.metrics[f"{split}_accuracy"] == pytest.approx(m["accuracy"])
        assert teacher.metrics[f"{split}_f1"] == pytest.approx(m["f1"])
    # The cached logits are the stored model's outputs.
    model = teacher.load_model()
    fresh = predict_logits(model, data.tokens["dev"], 64, torch.device("cpu"))
    torch.testing.assert_close(fresh, teacher.logits("dev"), atol=1e-4, rtol=1e-4)
    # The teacher learned something on this 6-class task.
    assert teacher.metrics["dev_accuracy"] > 1 / 6


def test_features_are_cached_and_match_the_teacher(small_text, monkeypatch):
    data = prepare_text(TextConfig.from_dict(small_text), log=lambda m: None)
    teacher, tokens = data.teacher, data.tokens["dev"]
    n, s = tokens["input_ids"].shape
    hidden = teacher.features("dev", "hidden", [2, 6], tokens)
    att = teacher.features("dev", "attention", [1], tokens)
    assert hidden.dtype == np.float16 and hidden.shape == (n, 2, s, 384)
    assert att.dtype == np.float16 and att.shape == (n, 1, s, s)

    model = teacher.load_model(eager_attention=True)
    with torch.no_grad():
        out = model(
            input_ids=tokens["input_ids"][:4].long(),
            attention_mask=tokens["attention_mask"][:4].long(),
            output_hidden_states=True,
            output_attentions=True,
        )
    real = tokens["attention_mask"][:4].bool()
    for j, layer in enumerate([2, 6]):
        got = torch.from_numpy(hidden[:4, j].astype(np.float32))
        torch.testing.assert_close(got[real], out.hidden_states[layer][real], atol=2e-2, rtol=1e-2)
    got_att = torch.from_numpy(att[:4, 0].astype(np.float32))
    torch.testing.assert_close(
        got_att[real], out.attentions[0].mean(dim=1)[real], atol=2e-3, rtol=1e-2
    )
    assert np.allclose(att[:4, 0][real.numpy()].astype(np.float32).sum(-1), 1.0, atol=1e-2)

    def no_rebuild(*a, **k):
        raise AssertionError("features rebuilt although cached")

    monkeypatch.setattr(StoredTeacher, "_build_features", no_rebuild)
    again = teacher.features("dev", "hidden", [2, 6], tokens)
    assert np.array_equal(np.asarray(again), np.asarray(hidden))


def test_truncated_cache_files_are_rebuilt_or_refused(small_text):
    data = prepare_text(TextConfig.from_dict(small_text), log=lambda m: None)
    teacher, tokens = data.teacher, data.tokens["dev"]
    first = np.array(teacher.features("dev", "hidden", [1], tokens))
    path = teacher.path / "feat_hidden_dev_1.npy"
    cut = path.read_bytes()[:-7]
    path.unlink()  # a new file: the map of the old one stays valid
    path.write_bytes(cut)
    assert np.array_equal(np.asarray(teacher.features("dev", "hidden", [1], tokens)), first)
    logits = teacher.path / "logits_test.npy"
    saved = logits.read_bytes()
    try:
        logits.write_bytes(saved[:-3])
        with pytest.raises(KDSweepError, match=r"logits_test\.npy is missing or truncated"):
            teacher.logits("test")
    finally:
        logits.write_bytes(saved)


# ---------------------------------------------------------------- a tiny backbone, fresh stores
@pytest.fixture(scope="module")
def tiny_backbone(tmp_path_factory) -> str:
    """A 1-layer, 32-wide BERT (no classifier head) with the MiniLM tokenizer: trains in ~1 s."""
    from transformers import AutoTokenizer, BertConfig, BertModel

    path = tmp_path_factory.mktemp("tiny-bert")
    torch.manual_seed(123)
    cfg = BertConfig(
        vocab_size=30522,
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
    )
    BertModel(cfg).save_pretrained(path)
    AutoTokenizer.from_pretrained(resolve_backbone("minilm")).save_pretrained(path)
    return str(path)


@pytest.fixture(scope="module")
def tiny_data(small_text, cache_dir):
    cfg = TextConfig.from_dict(small_text)
    splits = load_text_dataset(cfg.data_spec())
    tokens = tokenize_splits(splits, resolve_backbone("minilm"), cfg.max_len, cache_dir)
    return splits, tokens


def test_same_recipe_gives_the_same_teacher_in_two_stores(tiny_backbone, tiny_data, tmp_path):
    """Content addressing assumes a recipe determines its teacher (the new head's init too)."""
    splits, tokens = tiny_data
    recipe = TeacherRecipe(backbone=tiny_backbone, epochs=1, lr=1e-3, batch_size=32, max_len=32)
    fp = splits.fingerprint()
    a, hit_a = TeacherStore(tmp_path / "a").get_or_train(
        recipe, fp, splits.label_names, tokens, log=lambda m: None
    )
    torch.randn(100)  # whatever ran in between must not matter
    b, hit_b = TeacherStore(tmp_path / "b").get_or_train(
        recipe, fp, splits.label_names, tokens, log=lambda m: None
    )
    assert not hit_a and not hit_b and a.id == b.id
    for split in ("train", "dev", "test"):
        assert torch.equal(a.logits(split), b.logits(split)), split
    assert a.metrics == b.metrics


def test_get_or_train_miss_then_hit(tiny_backbone, tiny_data, tmp_path, monkeypatch):
    splits, tokens = tiny_data
    recipe = TeacherRecipe(backbone=tiny_backbone, epochs=1, lr=1e-3, batch_size=32, max_len=32)
    store = TeacherStore(tmp_path / "store")
    logs: list[str] = []
    first, hit = store.get_or_train(recipe, "fp", splits.label_names, tokens, log=logs.append)
    assert (
        not hit
        and any("miss" in m for m in logs)
        and any("teacher fine-tuned: 1 epoch(s)" in m for m in logs)
    )
    assert first.path == tmp_path / "store" / TeacherStore.entry_id(recipe, "fp")
    assert not list((tmp_path / "store").glob(".*.tmp"))  # published atomically
    monkeypatch.setattr(teacher_store_mod, "finetune", _no_finetune)
    second, hit = store.get_or_train(recipe, "fp", splits.label_names, tokens, log=logs.append)
    assert hit and second.path == first.path
    assert store.get("0" * 16) is None


def test_register_is_idempotent_per_source(tiny_backbone, tiny_data, tmp_path, monkeypatch):
    from kdsweep.text.models import load_classifier

    splits, tokens = tiny_data
    model = load_classifier(tiny_backbone, len(splits.label_names))
    store = TeacherStore(tmp_path / "store")
    t1 = store.register(
        model, "ckpt-a|1", tiny_backbone, splits.label_names, tokens, lambda m: None
    )
    assert t1.meta["source"] == "ckpt-a|1"
    assert t1.logits("dev").shape == (len(splits.dev), 6)
    monkeypatch.setattr(TeacherStore, "_save", lambda *a, **k: pytest.fail("saved twice"))
    t2 = store.register(
        model, "ckpt-a|1", tiny_backbone, splits.label_names, tokens, lambda m: None
    )
    assert t2.id == t1.id
    monkeypatch.undo()
    t3 = store.register(
        model, "ckpt-a|2", tiny_backbone, splits.label_names, tokens, lambda m: None
    )
    assert t3.id != t1.id


@pytest.mark.parametrize("grad_accum", [1, 3])
def test_finetune_steps_the_optimizer_once_per_grad_accum_batches(
    tiny_backbone, tiny_data, grad_accum, monkeypatch
):
    """teacher_grad_accum=k: one optimizer (and LR schedule) step per k micro-batches, the last
    partial group included; teacher_precision=bf16 is accepted (plain fp32 on the CPU)."""
    from kdsweep.text.models import load_classifier
    from kdsweep.training import Stepper

    splits, tokens = tiny_data
    n = len(tokens["train"]["labels"])
    recipe = TeacherRecipe(backbone=tiny_backbone, epochs=2, lr=1e-3, batch_size=16, max_len=32,
                           grad_accum=grad_accum, precision="bf16")  # fmt: skip
    steps: list[int] = []
    real = Stepper.step
    monkeypatch.setattr(Stepper, "step", lambda self: (steps.append(1), real(self))[1])
    model = load_classifier(tiny_backbone, len(splits.label_names))
    teacher_store_mod.finetune(model, tokens, recipe, log=lambda m: None)
    batches = -(-n // 16)
    assert len(steps) == 2 * -(-batches // grad_accum)
