"""OOM recovery and the memory probe on the speech trial loop (the same guard as text)."""

from __future__ import annotations

import pytest
import torch
from conftest import SMALL_ASR, needs_tts

import trainables.speech.loop as asr_loop
from trainables.speech.config import ASRConfig
from trainables.speech.loop import prepare_asr
from trainables.speech.trainable import ASR_TRAINABLES
from trainables.tune_io import local_session

pytestmark = [pytest.mark.trial, needs_tts]


@pytest.fixture(scope="module")
def asr_cfg(cache_dir) -> dict:
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    cfg = {**SMALL_ASR, "cache_dir": str(cache_dir), "epochs": 2}
    prepare_asr(ASRConfig.from_dict(cfg), log=lambda m: None)
    yield cfg
    torch.set_num_threads(n)


def test_speech_oom_retries_with_half_the_batch(asr_cfg, tmp_path, monkeypatch):
    bs = asr_cfg.get("batch_size", ASRConfig().batch_size)
    real, seen = asr_loop.train_epoch, []

    def oom_in_epoch_2_at_full_batch(*a, **k):
        seen.append((k["epoch"], k["batch_size"], k["grad_accum"]))
        if k["epoch"] == 1 and k["batch_size"] == bs:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. injected")
        return real(*a, **k)

    monkeypatch.setattr(asr_loop, "train_epoch", oom_in_epoch_2_at_full_batch)
    trial = tmp_path / "trial"
    with (
        local_session(tmp_path / "a1", trial_dir=trial) as first,
        pytest.raises(torch.cuda.OutOfMemoryError),
    ):
        ASR_TRAINABLES["independent"](dict(asr_cfg))
    with local_session(tmp_path / "a2", restore_from=first.last_checkpoint, trial_dir=trial) as s:
        ASR_TRAINABLES["independent"](dict(asr_cfg))
    assert seen == [(0, bs, 1), (1, bs, 1), (1, bs // 2, 2)]
    (r,) = s.results
    assert r["epoch"] == 2 and (r["oom_batch_size"], r["oom_grad_accum"]) == (bs // 2, 2)
    assert r["effective_batch_size"] == bs


def test_speech_probe_step_trains_the_student(asr_cfg):
    from trainables.probe import probe_step

    step = probe_step({**asr_cfg, "task": "asr", "condition": "independent", "device": "cpu"})
    before = {k: v.clone() for k, v in step.model.state_dict().items()}
    step()
    after = step.model.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)
