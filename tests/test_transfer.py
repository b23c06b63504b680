"""Transfer sets: teacher-labeled extra text mixed into soft/hard KD (CE on labeled rows only)."""

from __future__ import annotations

import math
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

import trainables.text.trainable as text_mod
from kdsweep.errors import KDSweepError
from kdsweep.losses import masked_cross_entropy, soft_kd_objective
from kdsweep.text.teacher_store import StoredTeacher
from kdsweep.text.transfer import augment_tokens, load_transfer_texts
from trainables.text.config import SoftConfig, TextConfig
from trainables.text.loop import TextBatch, mixed_epoch_index, prepare_text, transfer_count
from trainables.text.trainable import TEXT_TRAINABLES
from trainables.tune_io import local_session

ROOT = Path(__file__).resolve().parents[1]
FAST = {"student": "L2-H128", "student_init": "random", "lr": 3e-3, "attribution_examples": 0}
TRANSFER = {"transfer_set": "unlabeled", "transfer_size": 120, "transfer_ratio": 0.5}


# ---------------------------------------------------------------- losses: CE on labeled rows only
def _batch(labels, labeled):
    torch.manual_seed(0)
    ids = torch.ones(len(labels), 4, dtype=torch.long)
    return TextBatch(
        input_ids=ids,
        attention_mask=ids,
        labels=torch.tensor(labels),
        labeled=torch.tensor(labeled),
        teacher_logits=torch.randn(len(labels), 3),
    )


@pytest.mark.unit
def test_masked_ce_ignores_unlabeled_rows():
    logits = torch.randn(4, 3)
    mask = torch.tensor([True, False, True, False])
    a = masked_cross_entropy(logits, torch.tensor([0, 1, 2, 0]), mask)
    b = masked_cross_entropy(logits, torch.tensor([0, -100, 2, 7]), mask)  # junk labels unread
    assert a == b
    assert a == pytest.approx(F.cross_entropy(logits[mask], torch.tensor([0, 2])).item())
    none = masked_cross_entropy(logits, torch.tensor([0, 1, 2, 0]), torch.zeros(4, dtype=bool))
    assert none.item() == 0.0
    labels = torch.tensor([0, 1, 2, 0])
    assert masked_cross_entropy(logits, labels) == F.cross_entropy(logits, labels)


@pytest.mark.unit
@pytest.mark.parametrize("cond", ["soft", "hard"])
def test_condition_losses_read_the_mask_from_the_batch(monkeypatch, cond):
    """The trainables' own loss functions: unlabeled rows' labels change nothing, their
    teacher logits do (KD applies to every row)."""
    captured = []
    monkeypatch.setattr(text_mod, "run_text_trial", lambda cfg, fn, needs=None: captured.append(fn))
    TEXT_TRAINABLES[cond]({"alpha": 0.5})
    loss_fn = captured[0]
    out = SimpleNamespace(logits=torch.randn(4, 3, requires_grad=True))
    base = _batch([0, 1, 2, 0], [True, False, True, False])
    relabeled = replace(base, labels=torch.tensor([0, 2, 2, 1]))
    t1, p1 = loss_fn(out, base, None)
    t2, p2 = loss_fn(out, relabeled, None)
    assert t1 == t2 and p1["loss_ce"] == p2["loss_ce"]
    teacher = base.teacher_logits.clone()
    other = (int(teacher[1].argmax()) + 1) % 3  # a different target for an unlabeled row
    teacher[1] = F.one_hot(torch.tensor(other), 3).float() * 9
    t3, _ = loss_fn(out, replace(base, teacher_logits=teacher), None)
    assert t3 != t1
    # No labeled row: CE contributes 0, the KD term still trains.
    t4, p4 = loss_fn(out, replace(base, labeled=torch.zeros(4, dtype=bool)), None)
    assert p4["loss_ce"].item() == 0.0 and t4.item() > 0


@pytest.mark.unit
def test_soft_objective_gradient_of_unlabeled_rows_is_kd_only():
    logits = torch.randn(2, 3, requires_grad=True)
    teacher = torch.randn(2, 3)
    labels = torch.tensor([1, 2])
    mask = torch.tensor([True, False])
    total, _, _ = soft_kd_objective(logits, teacher, labels, 0.0, 2.0, mask)  # alpha 0: CE only
    total.backward()
    assert torch.all(logits.grad[1] == 0) and torch.any(logits.grad[0] != 0)


# ---------------------------------------------------------------- the epoch mix
@pytest.mark.unit
def test_mixed_epoch_index_is_deterministic_and_keeps_every_labeled_row():
    a = mixed_epoch_index(10, 30, 0.5, seed=3, epoch=1)
    assert torch.equal(a, mixed_epoch_index(10, 30, 0.5, seed=3, epoch=1))
    assert sorted(a[a < 10].tolist()) == list(range(10))
    assert (a >= 10).sum() == 5 == transfer_count(10, 30, 0.5)
    other = mixed_epoch_index(10, 30, 0.5, seed=3, epoch=2)
    assert set(a[a >= 10].tolist()) != set(other[other >= 10].tolist())
    assert transfer_count(10, 4, 2.0) == 4  # capped at the transfer set's size
    assert sorted(mixed_epoch_index(10, 30, 0.0, 0, 0).tolist()) == list(range(10))


# ---------------------------------------------------------------- config + source errors
@pytest.mark.unit
@pytest.mark.parametrize(
    "cls, extra, needle",
    [
        (TextConfig, {"transfer_set": "unlabeled"}, "TextConfig cannot use a transfer set"),
        (SoftConfig, {"transfer_set": "unlabelled"}, "unknown source 'unlabelled'"),
        (SoftConfig, {"transfer_set": "extra.docx"}, "unknown source"),
        (SoftConfig, {"transfer_ratio": -1}, "transfer_ratio"),
        (SoftConfig, {"transfer_size": -5}, "transfer_size"),
        (SoftConfig, {"augment_prob": 0.0}, "augment_prob"),
    ],
)
def test_bad_transfer_configs(cls, extra, needle):
    with pytest.raises(KDSweepError, match=needle):
        cls.from_dict(extra)


@pytest.mark.unit
def test_good_transfer_configs():
    assert SoftConfig.from_dict({"transfer_set": "x.txt", "transfer_ratio": 2}).transfer_ratio == 2
    assert TextConfig.from_dict({"transfer_ratio": 0.5}).transfer_set == ""


@pytest.mark.unit
@pytest.mark.parametrize(
    "name, content, needle",
    [
        ("missing.txt", None, "file not found"),
        ("empty.txt", "\n  \n", "empty"),
        ("empty.jsonl", "", "empty"),
        ("header.csv", "text,label\n", "empty"),
        ("cols.csv", "body\nhello\n", "no column 'text'"),
        ("cols.jsonl", '{"body": "hello"}\n', "no column 'text'"),
        ("broken.jsonl", '{"text": \n', "cannot parse"),
    ],
)
def test_bad_transfer_files(tmp_path, name, content, needle):
    path = tmp_path / name
    if content is not None:
        path.write_text(content)
    with pytest.raises(KDSweepError, match=needle) as e:
        load_transfer_texts(str(path), [], "text", set(), 0, 0)
    assert name in str(e.value)


@pytest.mark.unit
def test_transfer_files_and_keywords(tmp_path):
    (tmp_path / "a.txt").write_text("one\ntwo\n\ntwo\nheld out\nthree\n")
    texts = load_transfer_texts(str(tmp_path / "a.txt"), [], "text", {"held out"}, 0, 0)
    assert sorted(texts) == ["one", "three", "two"]  # deduplicated, dev/test texts dropped
    assert len(load_transfer_texts(str(tmp_path / "a.txt"), [], "text", set(), 2, 0)) == 2
    (tmp_path / "b.jsonl").write_text('{"body": "x"}\n{"body": "y"}\n')
    assert sorted(load_transfer_texts(str(tmp_path / "b.jsonl"), [], "body", set(), 0, 0)) == [
        "x",
        "y",
    ]
    with pytest.raises(KDSweepError, match="ships no unlabeled texts"):
        load_transfer_texts("unlabeled", [], "text", set(), 0, 0)


@pytest.mark.trial
def test_augment_masks_only_real_tokens(small_text):
    data = prepare_text(TextConfig.from_dict(small_text), log=lambda m: None)
    train = data.tokens["train"]
    aug = augment_tokens(train, data.teacher.model_dir, 0.5, 300)
    assert aug["input_ids"].shape == (300, train["input_ids"].shape[1])
    n = len(train["input_ids"])
    same = aug["input_ids"][:n] == train["input_ids"]
    pad = train["attention_mask"] == 0
    assert same[pad].all() and same[:, 0].all()  # padding and [CLS] untouched
    assert 0.3 < (~same[~pad]).float().mean() < 0.6
    assert torch.equal(
        aug["input_ids"], augment_tokens(train, data.teacher.model_dir, 0.5, 300)["input_ids"]
    )


# ---------------------------------------------------------------- cached teacher logits + trial
@pytest.mark.trial
def test_transfer_logits_cached_then_soft_trial_reports(small_text, tmp_path, monkeypatch):
    cfg = {**small_text, **FAST, **TRANSFER, "condition": "soft", "alpha": 0.9, "temperature": 4}
    data = prepare_text(SoftConfig.from_dict(cfg), log=lambda m: None)  # the driver's prepare
    assert data.transfer["input_ids"].shape[0] == 120
    assert data.transfer["teacher_logits"].shape == (120, data.splits.num_labels)
    assert list(data.teacher.path.glob("logits_transfer_*.npy"))

    def boom(*a, **k):
        raise AssertionError("the teacher ran inside a trial")

    monkeypatch.setattr(StoredTeacher, "load_model", boom)
    again = prepare_text(SoftConfig.from_dict(cfg), log=lambda m: None)
    assert torch.equal(again.transfer["teacher_logits"], data.transfer["teacher_logits"])
    with local_session(tmp_path) as session:
        TEXT_TRAINABLES["soft"](cfg)
    assert [r["epoch"] for r in session.results] == [1, 2]
    n_labeled = len(data.tokens["train"]["labels"])
    for r in session.results:
        assert r["transfer_rows_per_epoch"] == round(0.5 * n_labeled)
        assert all(math.isfinite(v) for v in r.values() if isinstance(v, float))
        assert r["loss"] == pytest.approx(0.9 * r["loss_kd"] + 0.1 * r["loss_ce"], rel=1e-4)


@pytest.mark.trial
def test_hard_trial_with_augment(small_text, tmp_path):
    cfg = {**small_text, **FAST, "epochs": 1, "transfer_set": "augment", "transfer_size": 64}
    with local_session(tmp_path) as session:
        TEXT_TRAINABLES["hard"](cfg)
    assert session.results[-1]["transfer_rows_per_epoch"] == 64


@pytest.mark.e2e
def test_transfer_sweep_smoke(tmp_path, cache_dir):
    import os

    env = {**os.environ, "KDSWEEP_HOME": str(cache_dir)}
    env.pop("RAY_ADDRESS", None)
    env.pop("MLFLOW_TRACKING_URI", None)
    cmd = [
        sys.executable,
        str(ROOT / "sweeps" / "transfer.py"),
        "--smoke",
        "transfer_size=200",  # the smoke teacher labels 200 texts, not all ~5k
        "--storage",
        str(tmp_path / "runs"),
        "--mlflow-uri",
        f"sqlite:///{tmp_path / 'mlruns.db'}",
    ]
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900, cwd=tmp_path)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert "best: soft" in res.stdout
    table = (tmp_path / "runs" / "transfer-text-fortunes-smoke" / "trials.csv").read_text()
    assert table.count("\n") == 4  # header + 3 transfer ratios


@pytest.mark.trial
def test_ratio_zero_is_plain_soft_kd(small_text, tmp_path):
    """transfer_ratio 0 (the sweep's baseline arm) trains exactly like soft KD without a set."""
    cfg = {**small_text, **FAST, "epochs": 1, "alpha": 0.9, "temperature": 4}
    runs = []
    for extra in ({}, {**TRANSFER, "transfer_ratio": 0.0}):
        with local_session(tmp_path / str(len(runs))) as session:
            TEXT_TRAINABLES["soft"]({**cfg, **extra})
        runs.append(session.results[-1])
    assert "transfer_rows_per_epoch" not in runs[1]
    assert runs[0]["loss"] == runs[1]["loss"] and runs[0]["dev_accuracy"] == runs[1]["dev_accuracy"]
