"""Speech transfer sets: untranscribed audio the ASR teacher labels once, mixed into soft, hard
and self-distillation trials (CTC on gold transcripts over labeled rows only)."""

from __future__ import annotations

import math
import shutil
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import soundfile as sf
import torch
from conftest import HAS_TTS, SMALL_ASR, needs_tts
from safetensors.torch import load_file

import kdsweep.speech.store as asr_store
import kdsweep.speech.teacher as asr_teacher
import trainables.speech.loop as asr_loop
import trainables.speech.trainable as asr_mod
from kdsweep.errors import KDSweepError
from kdsweep.speech.data import voices_by_split
from kdsweep.speech.losses import ctc_loss
from kdsweep.speech.transfer import load_audio_source, transfer_sentences
from trainables.registry import config_for, run_trial
from trainables.speech.config import (
    ASRConfig,
    ASRHardConfig,
    ASRHiddenConfig,
    ASRSoftConfig,
    SelfDistillConfig,
)
from trainables.speech.loop import SpeechBatch, prepare_asr
from trainables.speech.trainable import ASR_TRAINABLES
from trainables.tune_io import local_session

# 12 extra synthetic utterances; 0.25 per labeled row (32) = 8 of them drawn each epoch.
TRANSFER = {"transfer_set": "synthetic", "transfer_size": 12, "transfer_ratio": 0.25}


# ---------------------------------------------------------------- CTC on labeled rows only
def _ctc_batch(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(4, 12, 6, generator=g, requires_grad=True)
    in_lens = torch.tensor([12, 10, 12, 9])
    tgt_lens = torch.tensor([3, 2, 4, 1])
    targets = torch.randint(1, 6, (int(tgt_lens.sum()),), generator=g)
    return logits, targets, in_lens, tgt_lens


@pytest.mark.unit
def test_masked_ctc_skips_unlabeled_rows():
    logits, targets, in_lens, tgt_lens = _ctc_batch()
    mask = torch.tensor([True, False, True, False])
    a = ctc_loss(logits, targets, in_lens, tgt_lens, labeled=mask)
    # The unlabeled rows' targets are never read: other lengths and labels change nothing.
    junk = torch.cat([targets[:3], torch.tensor([5, 5, 5, 5, 5]), targets[5:9], torch.tensor([])])
    b = ctc_loss(logits, junk.long(), in_lens, torch.tensor([3, 5, 4, 0]), labeled=mask)
    assert a.item() == pytest.approx(b.item(), abs=1e-6)
    # ... and the value is the plain CTC of the labeled rows alone (mean over them).
    sub = ctc_loss(logits[mask], torch.cat([targets[:3], targets[5:9]]), in_lens[mask],
                   tgt_lens[mask])  # fmt: skip
    assert a.item() == pytest.approx(sub.item(), abs=1e-6)
    a.backward()
    assert torch.all(logits.grad[~mask] == 0) and torch.all(logits.grad[mask].abs().sum((1, 2)) > 0)
    # Padded [B, L] targets select the same rows.
    padded = torch.nn.utils.rnn.pad_sequence(list(targets.split(tgt_lens.tolist())), True)
    c = ctc_loss(logits, padded, in_lens, tgt_lens, labeled=mask)
    assert c.item() == pytest.approx(a.item(), abs=1e-6)
    full = ctc_loss(logits, targets, in_lens, tgt_lens)
    assert ctc_loss(logits, targets, in_lens, tgt_lens, labeled=torch.ones(4, dtype=bool)) == full


@pytest.mark.unit
def test_masked_ctc_without_labeled_rows_is_zero_not_nan():
    logits, targets, in_lens, tgt_lens = _ctc_batch(1)
    loss = ctc_loss(logits, targets, in_lens, tgt_lens, labeled=torch.zeros(4, dtype=bool))
    assert loss.item() == 0.0
    loss.backward()  # still part of the graph, with a zero (not NaN) gradient
    assert torch.all(logits.grad == 0)


def _captured_loss_fn(monkeypatch, condition: str, config: dict):
    captured = []
    monkeypatch.setattr(asr_mod, "run_asr_trial", lambda cfg, fn, *a, **k: captured.append(fn))
    ASR_TRAINABLES[condition](config)
    return captured[0]


@pytest.mark.unit
@pytest.mark.parametrize("condition", ["soft", "hard", "self"])
def test_condition_losses_read_the_mask(monkeypatch, condition):
    """The trainables' own losses: gold targets of unlabeled rows change nothing, the teacher's
    outputs on them do (KD applies to every row); no labeled row = CTC 0, KD still trains."""
    config = {"alpha": 0.5, "layers": 1, "hidden": 4, "epochs": 2}
    loss_fn = _captured_loss_fn(monkeypatch, condition, config)
    logits, targets, in_lens, tgt_lens = _ctc_batch(2)
    g = torch.Generator().manual_seed(3)
    hidden = torch.randn(4, 12, 8, generator=g)
    out = SimpleNamespace(logits=logits, out_lens=in_lens, hidden_states=[hidden])
    mask = torch.tensor([True, False, True, False])
    batch = SpeechBatch(
        targets=targets, target_lens=tgt_lens, idx=[0, 1, 2, 3], epoch=0, labeled=mask,
        teacher_logits=torch.randn(4, 12, 6, generator=g),
        teacher_targets=torch.tensor([1, 2, 3, 4, 5, 1]),
        teacher_target_lens=torch.tensor([2, 1, 2, 1]),
        teacher_hidden=torch.randn(4, 12, 1, 8, generator=g),
    )  # fmt: skip
    t1, p1 = loss_fn(out, batch, None)
    regold = replace(batch, targets=torch.cat([targets[:3], torch.tensor([4, 4]), targets[5:]]))
    t2, p2 = loss_fn(out, regold, None)
    assert t1.item() == pytest.approx(t2.item()) and p1["loss_ctc"] == p2["loss_ctc"]
    if condition == "hard":  # teacher transcripts are the unlabeled rows' targets
        other = replace(batch, teacher_targets=torch.tensor([1, 2, 5, 4, 5, 1]))
    else:  # teacher posteriors of an unlabeled row
        tl = batch.teacher_logits.clone()
        tl[1] = -tl[1]
        other = replace(batch, teacher_logits=tl)
    assert loss_fn(out, other, None)[0].item() != pytest.approx(t1.item())
    t4, p4 = loss_fn(out, replace(batch, labeled=torch.zeros(4, dtype=bool)), None)
    assert p4["loss_ctc"].item() == 0.0 and math.isfinite(t4.item()) and t4.item() > 0


# ---------------------------------------------------------------- configs and sources
@pytest.mark.unit
@pytest.mark.parametrize(
    "cls, extra, needle",
    [
        (ASRConfig, {"transfer_set": "synthetic"}, "ASRConfig cannot use a transfer set"),
        (ASRHiddenConfig, {"transfer_set": "synthetic"}, "ASRHiddenConfig cannot"),
        (ASRSoftConfig, {"transfer_set": "synthtic"}, "unknown source 'synthtic'"),
        (ASRSoftConfig, {"transfer_set": "/no/such/list.txt"}, "file not found: /no/such/list"),
        (ASRHardConfig, {"transfer_ratio": -1}, "transfer_ratio"),
        (SelfDistillConfig, {"transfer_size": -5}, "transfer_size"),
    ],
)
def test_bad_transfer_configs_name_the_field(cls, extra, needle):
    with pytest.raises(KDSweepError, match=needle) as e:
        cls.from_dict(extra)
    assert "transfer_" in str(e.value)


@pytest.mark.unit
def test_synthetic_needs_a_synthetic_corpus(tmp_path):
    (tmp_path / "corpus.tsv").write_text("path\ttranscript\n")
    with pytest.raises(KDSweepError, match="'synthetic' needs a synthetic corpus"):
        ASRSoftConfig.from_dict(
            {"corpus": str(tmp_path / "corpus.tsv"), "transfer_set": "synthetic"}
        )
    ok = SelfDistillConfig.from_dict({"transfer_set": str(tmp_path), "transfer_ratio": 2})
    assert ok.transfer_ratio == 2 and ok.transfer_hidden_layers() == (1, 2)


def _wav(path: Path, seconds: float = 0.5, seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    noise = np.random.default_rng(seed).normal(0, 0.1, int(16_000 * seconds)).astype(np.float32)
    sf.write(str(path), noise, 16_000)
    return path


@pytest.mark.unit
def test_bad_audio_sources_name_the_file(tmp_path):
    def load(source: Path | str):
        return load_audio_source(str(source), "path", set(), 0, 0)

    (tmp_path / "empty").mkdir()
    with pytest.raises(KDSweepError, match=r"field 'transfer_set'.*no \.wav/\.flac files"):
        load(tmp_path / "empty")
    good = _wav(tmp_path / "audio" / "good.wav")
    corrupt = tmp_path / "audio" / "corrupt.wav"
    corrupt.write_bytes(b"RIFF\x00\x00\x00\x00WAVEnot really audio at all")
    with pytest.raises(KDSweepError, match=r"corrupt or unreadable audio file .*corrupt\.wav"):
        load(tmp_path / "audio")
    silent = tmp_path / "silent" / "silent.wav"
    silent.parent.mkdir()
    sf.write(str(silent), np.zeros(0, dtype=np.float32), 16_000)
    with pytest.raises(KDSweepError, match=r"silent\.wav has no samples"):
        load(silent.parent)
    lst = tmp_path / "list.txt"
    lst.write_text(f"{good}\n\nmissing.flac\n")
    with pytest.raises(KDSweepError, match=r"list\.txt: line 3: audio file not found: .*missing"):
        load(lst)
    table = tmp_path / "files.csv"
    table.write_text(f"file\n{good}\n")
    with pytest.raises(KDSweepError, match=r"no column 'path' \(audio_column\)"):
        load(table)
    assert len(load_audio_source(str(table), "file", set(), 0, 0)) == 1


@pytest.mark.unit
def test_audio_sources_dedupe_exclude_and_cut(tmp_path):
    a = _wav(tmp_path / "d" / "a.wav", seed=1)
    _wav(tmp_path / "d" / "sub" / "b.flac", seed=2)
    shutil.copy(a, tmp_path / "d" / "a_copy.wav")  # same bytes: kept once
    held = _wav(tmp_path / "d" / "dev.wav", seed=3)
    from kdsweep.speech.transfer import file_digests

    dev = [SimpleNamespace(path=held)]
    utts = load_audio_source(str(tmp_path / "d"), "path", file_digests(dev), 0, 0)
    assert len(utts) == 2 and {u.transcript for u in utts} == {""}
    assert {u.split for u in utts} == {"transfer"} and len({u.id for u in utts}) == 2
    assert [u.id for u in utts] == [
        u.id for u in load_audio_source(str(tmp_path / "d"), "path", file_digests(dev), 0, 0)
    ]
    assert len(load_audio_source(str(tmp_path / "d"), "path", set(), 1, 0)) == 1


@pytest.mark.unit
def test_transfer_sentences_avoid_the_corpus():
    corpus = set(transfer_sentences("commands", 50, set(), seed=9))
    out = transfer_sentences("commands", 30, corpus, seed=9)
    assert len(out) == 30 and not corpus & set(out)
    assert out == transfer_sentences("commands", 30, corpus, seed=9)  # deterministic


# ---------------------------------------------------------------- the teacher's cached outputs
@pytest.fixture(scope="module")
def small_asr(cache_dir) -> dict:
    if not HAS_TTS:
        pytest.skip("espeak-ng/flite not installed")
    torch.set_num_threads(1)
    return {**SMALL_ASR, "cache_dir": str(cache_dir)}


def _counting_load_model(monkeypatch) -> list[int]:
    calls: list[int] = []
    real = asr_store.StoredASRTeacher.load_model

    def counted(self, *a, **k):
        calls.append(1)
        return real(self, *a, **k)

    monkeypatch.setattr(asr_store.StoredASRTeacher, "load_model", counted)
    return calls


@pytest.mark.trial
@needs_tts
def test_transfer_outputs_come_from_the_cache(small_asr, monkeypatch):
    config = {**small_asr, **TRANSFER, "transfer_size": 6}  # a set no other test labels
    calls = _counting_load_model(monkeypatch)
    data = prepare_asr(ASRSoftConfig.from_dict(config), log=lambda m: None)
    tr = data.transfer
    assert calls == [1]  # the teacher ran once, on the transfer set only (it was stored)
    assert len(tr.feats) == 6 and set(tr.feats.transcripts) == {""}
    assert (data.teacher.path / f"posteriors_transfer_{tr.key}.rows").is_dir()
    assert set(tr.feats.voices) <= set(voices_by_split()["train"])  # held-out voices stay out
    # Synthesized from sentences in none of the corpus's splits.
    manifest = next(Path(small_asr["cache_dir"], "speech", "transfer").glob("*n6-*/manifest.tsv"))
    sentences = [ln.split("\t")[3] for ln in manifest.read_text().splitlines()[1:]]
    corpus = {t for fs in data.feats.values() for t in fs.transcripts}
    assert len(sentences) == 6 and not corpus & set(sentences)
    # The cached rows are the teacher's own outputs (float16 on disk).
    fresh, _ = asr_teacher.predict(data.teacher.load_model(), tr.feats, torch.device("cpu"))
    for a, b in zip(tr.logits, fresh):
        assert a.shape == b.shape and torch.allclose(a, b, atol=2e-2, rtol=1e-2)

    def no_teacher(*a, **k):
        raise AssertionError("a prepared transfer set must not run the teacher again")

    monkeypatch.setattr(asr_store.StoredASRTeacher, "load_model", no_teacher)
    again = prepare_asr(ASRSoftConfig.from_dict(config), log=lambda m: None)
    assert again.transfer.key == tr.key
    assert all(torch.equal(a, b) for a, b in zip(again.transfer.logits, tr.logits))


@pytest.mark.trial
@needs_tts
def test_self_caches_twin_hidden_states_for_the_transfer_set(small_asr):
    data = prepare_asr(SelfDistillConfig.from_dict({**small_asr, **TRANSFER}), log=lambda m: None)
    tr = data.transfer
    assert (data.teacher.path / f"hidden_transfer_{tr.key}_1.rows").is_dir()
    assert len(tr.hidden) == len(tr.feats) == 12
    assert all(h.shape[0] == lg.shape[0] for h, lg in zip(tr.hidden, tr.logits))


@pytest.mark.trial
@needs_tts
def test_corrupt_file_in_a_transfer_folder_is_named(small_asr, tmp_path):
    _wav(tmp_path / "unlabeled" / "ok.wav")
    (tmp_path / "unlabeled" / "broken.flac").write_bytes(b"fLaC garbage")
    cfg = ASRHardConfig.from_dict({**small_asr, "transfer_set": str(tmp_path / "unlabeled")})
    with pytest.raises(KDSweepError, match=r"transfer_set.*broken\.flac"):
        prepare_asr(cfg, log=lambda m: None)


# ---------------------------------------------------------------- trials through the entry point
@pytest.mark.trial
@needs_tts
@pytest.mark.parametrize("condition", ["soft", "hard", "self"])
def test_trial_with_a_transfer_set(tmp_path, small_asr, monkeypatch, condition):
    config = {"task": "asr", "condition": condition, **small_asr, **TRANSFER}
    prepare_asr(config_for(config), log=lambda m: None)  # the sweep driver's prepare step
    seen: list[tuple[int, int]] = []
    real = asr_loop.train_epoch

    def spy(model, fs, *a, **k):
        flags = [bool(k["extras"]([i], 1)["labeled"][0]) for i in range(len(fs))]
        seen.append((sum(flags), len(flags) - sum(flags)))
        return real(model, fs, *a, **k)

    def no_teacher(*a, **k):
        raise AssertionError("trials read the teacher's cached outputs, never run it")

    monkeypatch.setattr(asr_loop, "train_epoch", spy)
    monkeypatch.setattr(asr_store.StoredASRTeacher, "load_model", no_teacher)
    with local_session(tmp_path) as s:
        run_trial(config)
    # Every epoch: the 32 labeled rows + 8 of the 12 transfer rows (0.25 per labeled row).
    assert seen == [(32, 8), (32, 8)]
    assert [r["epoch"] for r in s.results] == [1, 2]
    for r in s.results:
        assert math.isfinite(r["loss"]) and math.isfinite(r["loss_kd"]) and r["dev_wer"] >= 0


@pytest.mark.trial
@needs_tts
def test_resume_with_a_transfer_set_gives_identical_weights(tmp_path, small_asr):
    # The epoch's transfer draw is a pure function of (seed, epoch): a resumed trial sees it too.
    config = {**small_asr, **TRANSFER, "transfer_ratio": 0.2}
    with local_session(tmp_path / "full") as full:
        ASR_TRAINABLES["soft"](dict(config))
    with local_session(tmp_path / "resumed", restore_from=full.checkpoints[0]) as resumed:
        ASR_TRAINABLES["soft"](dict(config))
    a = load_file(str(full.last_checkpoint / "model.safetensors"))
    b = load_file(str(resumed.last_checkpoint / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# ---------------------------------------------------------------- the sweep's space (fast)
@pytest.mark.unit
def test_transfer_sweep_task_asr_picks_the_speech_space_and_smoke_stays_small():
    from driver.cli import build_parser, space_from_args

    args = build_parser("transfer", None).parse_args(["--task", "asr", "--smoke"])
    space = space_from_args("transfer", args)[0]
    assert space.source.endswith("asr_transfer.yaml") and space.conditions == ["soft"]
    assert space.dists["transfer_ratio"] == ("grid", [0.0, 0.5, 1.0])
    # transfer_size 0 = n_utterances: the smoke preset's 40, so synthesis takes seconds
    assert space.fixed["transfer_set"] == "synthetic" and space.fixed["transfer_size"] == 0
    assert space.fixed["n_utterances"] == 40 and space.fixed["epochs"] == 2
    for condition in ("hard", "self"):
        args = build_parser("transfer", None).parse_args(
            ["--task", "asr", f"condition={condition}"]
        )
        assert space_from_args("transfer", args)[0].conditions == [condition]
