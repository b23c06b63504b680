"""Transfer sets for hidden-state and attention KD: cached teacher features, mixing, masking."""

from __future__ import annotations

import math
from dataclasses import replace
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import trainables.text.trainable as text_mod
from kdsweep.errors import KDSweepError
from kdsweep.losses import attention_kd_loss, hidden_mse_loss
from kdsweep.text.teacher_store import StoredTeacher
from kdsweep.text.transfer import tokens_key
from trainables.conditions import Aux
from trainables.text.config import AttentionConfig, HiddenConfig, TextConfig
from trainables.text.loop import FeatureRows, TextBatch, _append_transfer, _batch, prepare_text
from trainables.text.trainable import TEXT_TRAINABLES
from trainables.tune_io import local_session

FAST = {"student": "L2-H128", "student_init": "random", "lr": 3e-3, "attribution_examples": 0}
TRANSFER = {"transfer_set": "unlabeled", "transfer_size": 48, "transfer_ratio": 0.5}
CONFIGS = {"hidden": HiddenConfig, "attention": AttentionConfig}
MAPPED = [3, 6]  # L2 student -> teacher layers ceil(i * 6 / 2) of the 6-layer MiniLM


@pytest.fixture(scope="module", autouse=True)
def _restore_torch_threads():
    """Trials pin torch's threads to their CPU share; give the rest of the session its own."""
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


def _forbid_teacher(mp: pytest.MonkeyPatch) -> None:
    """From here on no teacher model can be loaded and no feature file built."""

    def boom(*a, **k):
        raise AssertionError("the teacher ran although its outputs are cached")

    mp.setattr(StoredTeacher, "load_model", boom)
    mp.setattr(StoredTeacher, "_build_features", boom)


# ---------------------------------------------------------------- configs
@pytest.mark.unit
def test_hidden_and_attention_accept_transfer_sets_independent_does_not():
    assert HiddenConfig.from_dict({"transfer_set": "unlabeled"}).needs.features == ("hidden",)
    assert AttentionConfig.from_dict({"transfer_set": "augment"}).needs.features == ("attention",)
    with pytest.raises(KDSweepError, match="TextConfig cannot use a transfer set"):
        TextConfig.from_dict({"transfer_set": "unlabeled"})
    with pytest.raises(KDSweepError, match="unknown source 'unlabelled'"):
        AttentionConfig.from_dict({"transfer_set": "unlabelled"})


@pytest.mark.trial
def test_bad_transfer_file_is_a_clear_error(small_text, tmp_path):
    missing = tmp_path / "missing.txt"
    cfg = {**small_text, **FAST, "transfer_set": str(missing)}
    with pytest.raises(KDSweepError, match="file not found") as e:
        prepare_text(HiddenConfig.from_dict(cfg), log=lambda m: None)
    assert "missing.txt" in str(e.value)
    with local_session(tmp_path / "s"), pytest.raises(KDSweepError, match="file not found"):
        TEXT_TRAINABLES["attention"]({**cfg, "condition": "attention"})


# ---------------------------------------------------------------- the cache
@pytest.mark.trial
@pytest.mark.parametrize("kind", ["hidden", "attention"])
def test_transfer_features_are_cached_once_with_the_token_shapes(small_text, monkeypatch, kind):
    cfg = CONFIGS[kind].from_dict({**small_text, **FAST, **TRANSFER})
    data = prepare_text(cfg, log=lambda m: None)  # the driver's prepare builds them
    tr = data.transfer
    feats = tr[f"teacher_{kind}"]
    n, s = tr["input_ids"].shape
    assert n == 48
    assert feats.dtype == np.float16
    assert feats.shape == ((n, 2, s, 384) if kind == "hidden" else (n, 2, s, s))
    key = tokens_key({"input_ids": tr["input_ids"], "attention_mask": tr["attention_mask"]})
    path = data.teacher.path / f"feat_{kind}_transfer_{key}_3-6.npy"
    assert path.is_file() and not list(data.teacher.path.glob(".*tmp*"))

    # They are the teacher's own outputs on the transfer tokens (a few rows, real tokens).
    model = data.teacher.load_model(eager_attention=kind == "attention")
    with torch.no_grad():
        out = model(
            input_ids=tr["input_ids"][:4].long(),
            attention_mask=tr["attention_mask"][:4].long(),
            output_hidden_states=True,
            output_attentions=kind == "attention",
        )
    real = tr["attention_mask"][:4].bool()
    for j, layer in enumerate(MAPPED):
        got = torch.from_numpy(feats[:4, j].astype(np.float32))
        want = out.hidden_states[layer] if kind == "hidden" else out.attentions[layer - 1].mean(1)
        torch.testing.assert_close(got[real], want[real], atol=2e-2, rtol=1e-2)
    if kind == "attention":  # real query rows are distributions over the (real) keys
        sums = feats[:4, 0][real.numpy()].astype(np.float32).sum(-1)
        assert np.allclose(sums, 1.0, atol=1e-2)

    # A second preparation (every trial does one) reads the cache: the teacher never runs.
    mtime = path.stat().st_mtime_ns
    with pytest.MonkeyPatch.context() as mp:
        _forbid_teacher(mp)
        again = prepare_text(cfg, log=lambda m: None)
    assert np.array_equal(np.asarray(again.transfer[f"teacher_{kind}"]), np.asarray(feats))
    assert path.stat().st_mtime_ns == mtime


# ---------------------------------------------------------------- trials
@pytest.mark.trial
@pytest.mark.parametrize(
    "cond, extra",
    [
        ("hidden", {"hidden_weight": 0.1}),
        ("hidden", {"transfer_set": "augment", "transfer_size": 64, "alpha": 0.5}),
        ("attention", {}),
        ("attention", {"transfer_set": "augment", "transfer_size": 64}),
    ],
)
def test_trial_with_a_transfer_set_reports_from_the_cache(small_text, tmp_path, cond, extra):
    cfg = {**small_text, **FAST, **TRANSFER, "epochs": 1, "condition": cond, **extra}
    data = prepare_text(CONFIGS[cond].from_dict(cfg), log=lambda m: None)  # driver side
    data.teacher.features("train", cond, MAPPED, data.tokens["train"])  # first trial's build
    with pytest.MonkeyPatch.context() as mp, local_session(tmp_path) as session:
        _forbid_teacher(mp)
        TEXT_TRAINABLES[cond](cfg)
    (r,) = session.results
    n_labeled = len(data.tokens["train"]["labels"])
    n_transfer = len(data.transfer["input_ids"])
    assert r["transfer_rows_per_epoch"] == min(n_transfer, round(0.5 * n_labeled))
    assert all(math.isfinite(v) for v in r.values() if isinstance(v, float))
    alpha = cfg.get("alpha", 0.0)
    weight = cfg.get(f"{cond}_weight", getattr(CONFIGS[cond], f"{cond}_weight"))  # its default
    expect = (1 - alpha) * r["loss_ce"] + weight * r[f"loss_{cond}"]
    if alpha:
        expect += alpha * r["loss_kd"]
    assert r["loss"] == pytest.approx(expect, rel=1e-4)


# ---------------------------------------------------------------- losses: CE on labeled rows only
def _loss_fn(monkeypatch, cond: str, alpha: float):
    captured = []
    monkeypatch.setattr(text_mod, "run_text_trial", lambda cfg, fn, needs=None: captured.append(fn))
    TEXT_TRAINABLES[cond]({"alpha": alpha})
    return captured[0]


def _fake(cond: str, b: int = 4, s: int = 5, k: int = 3):
    """A student output, aux modules and a batch shaped like a 2-layer trial's."""
    torch.manual_seed(0)
    logits = torch.randn(b, k, requires_grad=True)
    mask = torch.ones(b, s, dtype=torch.long)
    mask[1, 3:] = 0
    batch = TextBatch(
        input_ids=torch.ones(b, s, dtype=torch.long),
        labels=torch.tensor([0, 1, 2, 0]),
        labeled=torch.tensor([True, False, True, False]),
        attention_mask=mask,
        teacher_logits=torch.randn(b, k),
    )
    if cond == "hidden":
        out = SimpleNamespace(logits=logits, hidden_states=[torch.randn(b, s, 8) for _ in "012"])
        aux = Aux(nn.ModuleList(nn.Linear(8, 12) for _ in range(2)))
        batch.teacher_hidden = torch.randn(b, 2, s, 12)
        batch.teacher_hidden_mean = torch.randn(2, 12)  # [L, H], as the loop adds it
    else:
        out = SimpleNamespace(logits=logits, attentions=[torch.randn(b, 2, s, s).softmax(-1)] * 2)
        aux = Aux()
        batch.teacher_attention = torch.randn(b, 2, s, s).softmax(-1)
    return out, aux, batch


@pytest.mark.unit
@pytest.mark.parametrize("cond", ["hidden", "attention"])
def test_ce_skips_unlabeled_rows_feature_terms_use_all(monkeypatch, cond):
    out, aux, base = _fake(cond)
    loss_fn = _loss_fn(monkeypatch, cond, alpha=0.0)
    total, parts = loss_fn(out, base, aux)
    mask = base.labeled
    want = F.cross_entropy(out.logits[mask], base.labels[mask])
    assert parts["loss_ce"].item() == pytest.approx(want.item(), rel=1e-6)
    t2, p2 = loss_fn(out, replace(base, labels=torch.tensor([0, 2, 2, 1])), aux)  # junk gold
    assert t2 == total and p2["loss_ce"] == parts["loss_ce"]
    # Alpha 0: logits of unlabeled rows get no gradient (CE is their only logit term) ...
    total.backward()
    assert torch.all(out.logits.grad[~mask] == 0) and torch.any(out.logits.grad[mask] != 0)
    # ... while the feature term reads every row: change an unlabeled row's teacher features.
    feat = f"teacher_{cond}"
    other = getattr(base, feat).clone()
    other[3] = other[3].flip(-1)  # row 3: unlabeled, 3 content keys (row 1 keeps only one)
    t3, p3 = loss_fn(out, replace(base, **{feat: other}), aux)
    assert p3[f"loss_{cond}"] != parts[f"loss_{cond}"] and p3["loss_ce"] == parts["loss_ce"]
    # A batch of transfer rows only: CE contributes 0 (not NaN), the feature term still trains.
    t4, p4 = loss_fn(out, replace(base, labeled=torch.zeros(4, dtype=torch.bool)), aux)
    assert p4["loss_ce"].item() == 0.0 and math.isfinite(t4.item()) and t4.item() > 0


@pytest.mark.unit
@pytest.mark.parametrize("cond", ["hidden", "attention"])
def test_soft_term_of_feature_conditions_uses_unlabeled_rows(monkeypatch, cond):
    out, aux, base = _fake(cond)
    loss_fn = _loss_fn(monkeypatch, cond, alpha=0.5)
    _, parts = loss_fn(out, base, aux)
    teacher = base.teacher_logits.clone()
    teacher[1] = -teacher[1]  # an unlabeled row's teacher logits
    _, p2 = loss_fn(out, replace(base, teacher_logits=teacher), aux)
    assert p2["loss_kd"] != parts["loss_kd"] and p2["loss_ce"] == parts["loss_ce"]


# ---------------------------------------------------------------- rows of different padded length
def _attention_maps(mask: torch.Tensor, layers: int = 2) -> np.ndarray:
    """Head-averaged-like maps [N, L, S, S]: softmax rows with exact 0 on padded keys."""
    n, s = mask.shape
    logits = torch.randn(n, layers, s, s)
    logits = logits.masked_fill(~mask.bool()[:, None, None, :], float("-inf"))
    return logits.softmax(-1).numpy().astype(np.float16)


def _tokens(lengths: list[int], width: int) -> dict[str, torch.Tensor]:
    mask = torch.tensor([[1] * n + [0] * (width - n) for n in lengths], dtype=torch.int8)
    ids = (torch.arange(width) + 100).repeat(len(lengths), 1).to(torch.int32) * mask
    return {"input_ids": ids, "attention_mask": mask}


@pytest.mark.unit
def test_feature_rows_mix_train_and_transfer_of_different_lengths():
    """Train rows padded to 8, transfer rows to 5: a mixed batch is trimmed to its longest real
    row, shorter parts are zero-padded on masked positions only, and the losses per row are
    those of each source on its own."""
    torch.manual_seed(1)
    train_tok = {**_tokens([3, 7, 4], 8), "labels": torch.tensor([0, 1, 2])}
    tr_tok = _tokens([5, 2], 5)
    att_train, att_tr = (
        _attention_maps(train_tok["attention_mask"]),
        _attention_maps(tr_tok["attention_mask"]),
    )
    hid_train = np.random.default_rng(0).standard_normal((3, 2, 8, 4)).astype(np.float16)
    hid_tr = np.random.default_rng(1).standard_normal((2, 2, 5, 4)).astype(np.float16)
    train = {
        **train_tok,
        "teacher_hidden": FeatureRows((hid_train,), square=False),
        "teacher_attention": FeatureRows((att_train,), square=True),
    }
    transfer = {**tr_tok, "teacher_hidden": hid_tr, "teacher_attention": att_tr}
    mixed = _append_transfer(train, transfer)
    assert len(mixed["teacher_attention"]) == 5 and mixed["labeled"].tolist() == [1, 1, 1, 0, 0]
    assert mixed["input_ids"].shape == (5, 8)  # transfer tokens padded (mask 0) to train's 8
    assert torch.equal(mixed["attention_mask"][3:, :5], tr_tok["attention_mask"])
    assert not mixed["attention_mask"][3:, 5:].any()

    # Train row 0 (3 tokens) + transfer row 0 (5 tokens): trimmed to 5 < train's 8.
    b = _batch(mixed, torch.tensor([0, 3]), torch.device("cpu"))
    assert b.teacher_attention.shape == (2, 2, 5, 5) and b.teacher_hidden.shape == (
        2,
        2,
        5,
        4,
    )
    assert np.array_equal(b.teacher_attention[1].numpy(), att_tr[0].astype(np.float32))
    # Train row 1 (7 tokens) + transfer row 1 (2 tokens): trimmed to 7 > transfer's 5.
    b = _batch(mixed, torch.tensor([4, 1]), torch.device("cpu"))
    att, hid, mask = b.teacher_attention, b.teacher_hidden, b.attention_mask
    assert att.shape == (2, 2, 7, 7) and hid.shape == (2, 2, 7, 4)
    assert np.array_equal(att[0, :, :5, :5].numpy(), att_tr[1].astype(np.float32))
    assert torch.all(att[0, :, 5:] == 0) and torch.all(att[0, :, :, 5:] == 0)
    assert torch.all(hid[0, :, 5:] == 0)
    real = mask.bool()
    sums = att[:, 0][real].sum(-1)  # every real query row is still a distribution
    torch.testing.assert_close(sums, torch.ones_like(sums), atol=1e-2, rtol=0)

    # The losses over the mixed batch equal the per-row losses at each source's own width.
    student_att = torch.from_numpy(_attention_maps(mask.to(torch.int8))[:, 0].astype(np.float32))
    student_hid = torch.randn(2, 7, 4)
    mixed_att = attention_kd_loss(student_att, att[:, 0], mask)
    mixed_hid = hidden_mse_loss(student_hid, hid[:, 0], mask)
    t_att = torch.from_numpy(att_tr[1:2, 0].astype(np.float32))
    t_hid = torch.from_numpy(hid_tr[1:2, 0].astype(np.float32))
    tr_mask = tr_tok["attention_mask"][1:2].long()
    sep_att = (
        attention_kd_loss(student_att[:1, :5, :5], t_att, tr_mask) * 2
        + attention_kd_loss(student_att[1:], att[1:, 0], mask[1:]) * 7
    ) / 9  # the batch mean is over real query rows: 2 + 7
    torch.testing.assert_close(mixed_att, sep_att)
    sep_hid = (
        hidden_mse_loss(student_hid[:1, :5], t_hid, tr_mask) * 2
        + hidden_mse_loss(student_hid[1:], hid[1:, 0], mask[1:]) * 7
    ) / 9
    torch.testing.assert_close(mixed_hid, sep_hid)


@pytest.mark.trial
def test_feature_rows_without_a_transfer_set_are_the_train_memmap(small_text):
    """No transfer set: one part, read exactly as before (rows trimmed to the batch)."""
    data = prepare_text(TextConfig.from_dict(small_text), log=lambda m: None)
    feats = data.teacher.features("dev", "attention", [1], data.tokens["dev"])
    rows = FeatureRows((feats[:10],), square=True)
    idx = np.array([7, 2, 5])
    got = rows.take(idx, 6)
    assert np.array_equal(got.numpy(), feats[idx][:, :, :6, :6].astype(np.float32))
