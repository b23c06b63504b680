"""Speech trainables under a local session: every condition, resume, teacher store, schedules."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
import torch
from conftest import SMALL_ASR, needs_tts
from safetensors.torch import load_file

import kdsweep.speech.store as asr_store
import kdsweep.speech.teacher as asr_teacher
from kdsweep.errors import KDSweepError
from kdsweep.speech.store import ASRTeacherStore
from kdsweep.speech.teacher import ASRTeacherRecipe, NonFiniteLossError
from trainables.registry import evaluate_checkpoint
from trainables.speech.config import ASRConfig, ASRHiddenConfig, ASRSoftConfig, SelfDistillConfig
from trainables.speech.loop import prepare_asr, run_asr_trial
from trainables.speech.trainable import ASR_CONFIGS, ASR_TRAINABLES
from trainables.tune_io import local_session

pytestmark = needs_tts


@pytest.fixture(scope="session")
def small_asr(cache_dir) -> dict:
    """The small speech config; corpus, features, LM, teacher and twin built once."""
    torch.set_num_threads(1)
    cfg = {**SMALL_ASR, "cache_dir": str(cache_dir)}
    prepare_asr(ASRSoftConfig.from_dict(cfg), log=lambda m: None)
    prepare_asr(SelfDistillConfig.from_dict(cfg), log=lambda m: None)
    return cfg


def _run(condition: str, config: dict, root: Path, restore: Path | None = None):
    with local_session(root, restore_from=restore) as s:
        ASR_TRAINABLES[condition](dict(config))
    return s


@pytest.mark.trial
@pytest.mark.parametrize("condition", sorted(ASR_TRAINABLES))
def test_every_condition_reports_wer_every_epoch(tmp_path, small_asr, condition):
    s = _run(condition, small_asr, tmp_path)
    assert [r["epoch"] for r in s.results] == [1, 2]
    for r in s.results:
        assert r["dev_cer"] >= 0 and r["dev_wer"] >= 0, r
        assert r["loss"] == r["loss"] and r["params"] > 0  # finite, counted
    first, last = s.results
    assert "dev_wer_beam" not in first  # beam search only at the end (beam_every = 0)
    for key in ("dev_wer_beam", "dev_cer_beam", "ood_wer", "ood_cer", "ood_wer_beam"):
        assert key in last, key
    assert (s.last_checkpoint / "model.safetensors").is_file()
    if condition != "independent":
        assert "loss_kd" in last or "loss_hidden" in last
        assert "teacher_dev_wer" in last


@pytest.mark.trial
def test_evaluate_checkpoint_on_test(tmp_path, small_asr):
    s = _run("independent", small_asr, tmp_path)
    config = {"task": "asr", "condition": "independent", **small_asr}
    m = evaluate_checkpoint(config, s.last_checkpoint, "test")
    for key in ("test_wer", "test_cer", "test_wer_beam", "test_cer_beam", "ood_wer"):
        assert key in m and m[key] >= 0, (key, m)


@pytest.mark.trial
def test_resume_continues_at_the_right_epoch_with_identical_weights(tmp_path, small_asr):
    # SpecAugment + dropout consume RNG: identical weights need the RNG state restored too.
    config = {**small_asr, "specaugment": True, "dropout": 0.2}
    full = _run("soft", config, tmp_path / "full")
    resumed = _run("soft", config, tmp_path / "resumed", restore=full.checkpoints[0])
    assert [r["epoch"] for r in resumed.results] == [2]
    a = load_file(str(full.last_checkpoint / "model.safetensors"))
    b = load_file(str(resumed.last_checkpoint / "model.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert resumed.results[0]["dev_wer"] == full.results[1]["dev_wer"]


@pytest.mark.trial
def test_teacher_store_hit_and_kd_trials_never_run_the_teacher(tmp_path, small_asr, monkeypatch):
    data = prepare_asr(ASRSoftConfig.from_dict(small_asr), log=lambda m: None)
    assert data.teacher_hit  # trained by the fixture, reused here
    entry = data.teacher.path
    for name in ("model.safetensors", "meta.json", "posteriors_train.rows", "posteriors_dev.rows"):
        assert (entry / name).exists(), name
    assert {"dev_wer", "dev_cer", "test_wer", "test_cer"} <= set(data.teacher.metrics)
    assert data.teacher.meta["train_seconds"] > 0

    def no_teacher(*a, **k):
        raise AssertionError("the teacher model must not run in soft/hard trials")

    monkeypatch.setattr(asr_store.StoredASRTeacher, "load_model", no_teacher)
    monkeypatch.setattr(asr_teacher, "train_model", no_teacher)
    for condition in ("soft", "hard"):
        s = _run(condition, small_asr, tmp_path / condition)
        assert len(s.results) == 2


@pytest.mark.trial
def test_concurrent_callers_train_a_missing_teacher_once(tmp_path, small_asr, monkeypatch):
    data = prepare_asr(ASRConfig.from_dict(small_asr), log=lambda m: None, with_teacher=False)
    calls = []
    real = asr_teacher.train_model

    def counted(*a, **k):
        calls.append(1)
        return real(*a, **k)

    monkeypatch.setattr(asr_teacher, "train_model", counted)
    store = ASRTeacherStore(tmp_path / "store")
    recipe = ASRTeacherRecipe(layers=1, hidden=8, epochs=1, batch_size=16)
    hits = []

    def get():
        hits.append(store.get_or_train(recipe, data.fingerprint, data.feats, log=lambda m: None)[1])

    threads = [threading.Thread(target=get) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1 and sorted(hits) == [False, True, True]
    assert not [p for p in (tmp_path / "store").iterdir() if ".tmp" in p.name]


@pytest.mark.trial
def test_hidden_states_cached_lazily_per_layer_set(small_asr):
    data = prepare_asr(ASRHiddenConfig.from_dict(small_asr), log=lambda m: None)
    train = data.feats["train"]
    rows = data.teacher.hidden("train", [2], train)
    assert (data.teacher.path / "hidden_train_2.rows").is_dir()
    assert len(rows) == len(train) and rows[0].shape[1:] == (1, 2 * SMALL_ASR["teacher_hidden"])
    logits = data.teacher.logits("train", train.ids)
    assert all(h.shape[0] == lg.shape[0] for h, lg in zip(rows, logits))


@pytest.mark.trial
def test_self_temperature_follows_scaled_milestones(tmp_path, small_asr):
    # milestones 30,70 of 80 -> 1,3 of 3 epochs: T = 4.0 at epoch 1, then 3.5 (3.0 never reached)
    config = {**small_asr, "epochs": 3}
    cfg = SelfDistillConfig.from_dict(config)
    assert cfg.scaled_milestones() == [1, 3]
    s = _run("self", config, tmp_path)
    assert [r["temperature"] for r in s.results] == [4.0, 3.5, 3.5]
    ten = SelfDistillConfig.from_dict({**small_asr, "epochs": 10})
    assert [ten.temperature_at(e) for e in range(10)] == [4.0] * 4 + [3.5] * 5 + [3.0]


@pytest.mark.trial
def test_non_finite_loss_stops_the_trial(tmp_path, small_asr):
    cfg = ASRConfig.from_dict(small_asr)

    def nan_loss(out, batch, aux):
        loss = out.logits.sum() * float("nan")
        return loss, {"loss_ctc": loss}

    with local_session(tmp_path), pytest.raises(NonFiniteLossError, match="epoch 1 step 0"):
        run_asr_trial(cfg, nan_loss)


@pytest.mark.unit
@pytest.mark.parametrize(
    "condition, override, needle",
    [
        ("independent", {"hiden": 64}, "did you mean 'hidden'"),
        ("soft", {"alpha": 1.5}, "'alpha'"),
        ("self", {"alpha": -0.1}, "'alpha'"),
        ("hidden", {"layer_map": "5"}, "'layer_map'"),
        ("hidden", {"layers": 2, "layer_map": "a,b"}, "'layer_map'"),
        ("independent", {"corpus": "/nonexistent/manifest.tsv"}, "/nonexistent/manifest.tsv"),
        ("self", {"temperatures": "4,3"}, "temperatures"),
        ("self", {"milestones": "70,30", "temperatures": "4,3,2"}, "milestones"),
        ("independent", {"hidden": 0}, "'hidden'"),
        ("independent", {"lm_weight": "heavy"}, "'lm_weight'"),
    ],
)
def test_config_errors_name_the_field(condition, override, needle):
    with pytest.raises(KDSweepError) as e:
        ASR_CONFIGS[condition].from_dict({**SMALL_ASR, **override})
    assert needle in str(e.value)


@pytest.mark.unit
def test_missing_manifest_names_field_and_file():
    with pytest.raises(KDSweepError, match=r"field 'corpus'.*/no/such/corpus\.csv"):
        ASRConfig.from_dict({"corpus": "/no/such/corpus.csv"})


@pytest.mark.trial
def test_gradient_accumulation_steps_every_second_batch(tmp_path, small_asr):
    """grad_accum=2: the effective batch is reported, the optimizer steps every second batch."""
    from kdsweep.speech.teacher import steps_per_epoch

    s = _run("soft", {**small_asr, "grad_accum": 2}, tmp_path)
    assert [r["effective_batch_size"] for r in s.results] == [2 * small_asr["batch_size"]] * 2
    assert all(r["loss"] == r["loss"] for r in s.results)  # finite
    state = torch.load(s.last_checkpoint / "state.pt", weights_only=False)
    train = prepare_asr(ASRConfig.from_dict(small_asr), with_teacher=False).feats["train"]
    batches = steps_per_epoch(train, small_asr["batch_size"])
    assert state["scheduler"]["last_epoch"] == 2 * -(-batches // 2) < 2 * batches
    # reported for the report's equal-budget check: the steps the optimizer took per epoch
    assert {r["steps_per_epoch"] for r in s.results} == {state["scheduler"]["last_epoch"] / 2}
