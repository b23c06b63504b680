"""Every LM condition through its trainable with a config: reports, checkpoints, resume."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest
import torch

from tests.lm_helpers import tiny_lm  # noqa: F401 - fixture
from trainables.lm.loop import evaluate_lm_checkpoint, load_checkpoint_student, prepare_lm
from trainables.registry import config_for, run_trial
from trainables.tune_io import local_session

pytestmark = pytest.mark.trial

EPOCH_KEYS = {"dev_perplexity", "dev_kl", "dev_top1_agreement", "tokens_per_second", "loss"}
EXTRA = {
    "independent": {},
    "kd": {"divergence": "jsd", "beta": 0.3, "temperature": 2.0},
    "seqkd": {"prompt_tokens": 8, "new_tokens": 8},
    "on_policy": {"lmbda": 1.0, "prompt_tokens": 8, "new_tokens": 8},
}


@pytest.mark.parametrize("condition", list(EXTRA))
def test_each_condition_trains_reports_and_checkpoints(condition, tiny_lm, tmp_path):  # noqa: F811
    cfg = {**tiny_lm, "condition": condition, **EXTRA[condition]}
    with local_session(tmp_path / "trial") as session:
        run_trial(cfg)
    assert [r["epoch"] for r in session.results] == [1, 2]
    for r in session.results:
        assert set(r) >= EPOCH_KEYS, condition
        assert math.isfinite(r["dev_perplexity"]) and r["dev_perplexity"] > 1
        assert r["dev_kl"] >= 0 and 0 <= r["dev_top1_agreement"] <= 1
    last = session.last_checkpoint
    assert (last / "continuations.md").read_text().count("- student:") == 3
    if condition == "on_policy":  # every batch sampled (lmbda = 1): cost is measured
        assert session.results[0]["on_policy_batch"] == 1.0
        assert session.results[0]["teacher_seconds"] > 0
    if condition == "kd":
        assert session.results[0]["loss_kd"] > 0
    typed = config_for(cfg)
    test = evaluate_lm_checkpoint(typed, last, "test")
    assert math.isfinite(test["test_perplexity"]) and test["teacher_test_perplexity"] > 1


def test_training_lowers_dev_perplexity_and_resume_continues(tiny_lm, tmp_path):  # noqa: F811
    cfg = {**tiny_lm, "condition": "kd", "epochs": 3, "divergence": "forward_kl"}
    with local_session(tmp_path / "a") as full:
        run_trial(cfg)
    ppl = [r["dev_perplexity"] for r in full.results]
    assert ppl[-1] < ppl[0]
    # a fresh session restored from the epoch-2 checkpoint: only epoch 3 runs, same numbers
    with local_session(tmp_path / "b", restore_from=full.checkpoints[1]) as resumed:
        run_trial(cfg)
    assert [r["epoch"] for r in resumed.results] == [3]
    assert resumed.results[0]["dev_perplexity"] == pytest.approx(ppl[-1], rel=1e-5)


def test_student_from_teacher_layers_starts_near_the_teacher(tiny_lm):  # noqa: F811
    from kdsweep.lm.models import student_from_teacher

    data = prepare_lm(config_for({**tiny_lm, "condition": "independent"}), log=lambda m: None)
    teacher, _ = data.teacher.load()
    full = student_from_teacher(teacher, teacher.config.num_hidden_layers)
    ids = data.blocks["dev"][:2].long()
    with torch.no_grad():  # every layer kept: the same model
        assert torch.allclose(full(input_ids=ids).logits, teacher(input_ids=ids).logits, atol=1e-5)
    half = student_from_teacher(teacher, 2)
    assert half.config.num_hidden_layers == 2
    assert torch.equal(
        half.model.layers[1].mlp.up_proj.weight, teacher.model.layers[3].mlp.up_proj.weight
    )


def test_checkpoint_round_trip_keeps_tied_weights(tiny_lm, tmp_path):  # noqa: F811
    cfg = {**tiny_lm, "condition": "independent", "epochs": 1}
    with local_session(tmp_path / "t") as s:
        run_trial(cfg)
    student = load_checkpoint_student(s.last_checkpoint)
    assert student.lm_head.weight.data_ptr() == student.get_input_embeddings().weight.data_ptr()


@pytest.mark.parametrize("condition", ["kd", "on_policy"])
def test_gpu_packing_probe_step_runs_an_lm_step(condition, tiny_lm):  # noqa: F811
    from trainables.probe import probe_step

    cfg = {**tiny_lm, "condition": condition, "device": "cpu"}
    if condition == "on_policy":
        cfg.update(prompt_tokens=8, new_tokens=8)
    step = probe_step(cfg)
    before = [p.detach().clone() for p in step.model.parameters()]
    step()
    assert any(not torch.equal(a, b) for a, b in zip(before, step.model.parameters(), strict=True))


def test_gpu_probe_configs_pick_the_heaviest_lm_shapes(tiny_lm):  # noqa: F811
    """An LM space varying the student is probed at the causal-LM student with the most
    parameters (counted in the teacher's architecture, not as a BERT classifier)."""
    from driver import packing
    from driver.space import load_space

    space = load_space("lm_data")
    space.fixed["teacher"] = tiny_lm["teacher"]
    space.dists["student"] = ("grid", ["L1-H32-A2", "L2-H64-A2", "L1-H16-A2"])
    space.dists["block_size"] = ("grid", [32, 48])
    cfgs = packing.probe_configs(space)
    assert [c["condition"] for c in cfgs] == ["independent", "kd", "seqkd", "on_policy"]
    assert all(c["student"] == "L2-H64-A2" and c["block_size"] == 48 for c in cfgs)
    count = packing.lm_student_parameters
    assert count("L2-H64-A2", tiny_lm["teacher"]) > count("L1-H32-A2", tiny_lm["teacher"])


class _Killed(BaseException):
    """Stands in for SIGKILL: nothing after the raise runs (not an Exception: no handler)."""


def test_a_killed_cache_build_resumes_at_its_last_batch(tiny_lm, tmp_path, monkeypatch):  # noqa: F811
    import kdsweep.lm.cache as cache_mod

    # seqkd: the top-k cache and the teacher continuations are both built before any trial
    cfg = config_for({**tiny_lm, "condition": "seqkd", **EXTRA["seqkd"], "data_subset": 24})
    fresh = prepare_lm(replace(cfg, cache_dir=str(tmp_path / "fresh")), log=lambda m: None)

    real_topk, real_generate, calls = cache_mod.teacher_topk, cache_mod.generate, []

    def dies_on_batch(n: int, real):
        def run(*args, **kwargs):
            calls.append(real.__name__)
            if calls.count(real.__name__) == n:
                raise _Killed
            return real(*args, **kwargs)

        return run

    again = replace(cfg, cache_dir=str(tmp_path / "killed"))
    monkeypatch.setattr(cache_mod, "teacher_topk", dies_on_batch(3, real_topk))
    with pytest.raises(_Killed):  # train is 3 batches of 8 blocks: dies on the third
        prepare_lm(again, log=lambda m: None)
    monkeypatch.setattr(cache_mod, "teacher_topk", dies_on_batch(0, real_topk))
    monkeypatch.setattr(cache_mod, "generate", dies_on_batch(2, real_generate))
    lines: list[str] = []
    with pytest.raises(_Killed):  # the top-k cache is published; seqkd dies on batch 2 of 3
        prepare_lm(again, log=lines.append)
    assert any("top-8 (train): resuming at block 16 of 24" in m for m in lines), lines
    assert calls.count("teacher_topk") == 3 + 1 + 1 + 1  # killed run, then train 1, dev, test
    calls.clear()
    monkeypatch.setattr(cache_mod, "generate", dies_on_batch(0, real_generate))
    lines.clear()
    resumed = prepare_lm(again, log=lines.append)

    assert calls == ["generate", "generate"]  # seqkd resumed at batch 2: no top-k pass again
    assert any("resuming at prompt 8 of 24" in m for m in lines), lines
    for split in ("train", "dev", "test"):
        for a, b in zip(resumed.cache.rows(split), fresh.cache.rows(split), strict=True):
            assert np.array_equal(np.asarray(a), np.asarray(b)), split
    for key in ("teacher_train_perplexity", "teacher_dev_perplexity"):
        assert resumed.cache.meta[key] == pytest.approx(fresh.cache.meta[key], rel=1e-6)
    assert np.array_equal(np.asarray(resumed.seqkd), np.asarray(fresh.seqkd))
    assert not list((tmp_path / "killed").rglob("*.partial*"))  # resume files are gone
