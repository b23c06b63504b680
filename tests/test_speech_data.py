"""Synthetic corpus, manifests, user corpora, CMU clips, vocabulary and features."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import soundfile as sf
import torch
import torchaudio
from conftest import HAS_TTS, needs_tts

from kdsweep.errors import KDSweepError
from kdsweep.speech.data import (
    CMU_DATA_DIR,
    CharVocab,
    LogMel,
    SpecAugment,
    _resample,
    bucket_batches,
    build_synthetic_corpus,
    featurize,
    load_cmu_clips,
    load_librispeech_dir,
    load_manifest,
    load_user_manifest,
    normalize_text,
    pad_collate,
    synthesis,
    voices_by_split,
)

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not HAS_TTS:
        pytest.skip("espeak-ng/flite not installed")
    return build_synthetic_corpus(tmp_path_factory.mktemp("corpus"), 20, seed=3)


def test_normalize_text() -> None:
    assert normalize_text("Don't PANIC: 42 towels!") == "don't panic forty two towels"
    assert normalize_text("'quoted' words -- and 1999") == (
        "quoted words and one thousand nine hundred ninety nine"
    )
    assert normalize_text("  ") == ""


def test_vocab_roundtrip_and_labels() -> None:
    v = CharVocab()
    assert len(v) == 29 and v.blank == 0
    assert v.labels[0] == "" and v.labels[1] == " " and v.labels[2] == "'"
    text = "queen of hearts don't"
    assert v.decode(v.encode(text)) == text
    assert 0 not in v.encode(text)
    with pytest.raises(KDSweepError, match="vocabulary"):
        v.encode("Queen")


@needs_tts
def test_corpus_is_deterministic_and_cached(corpus: Path, tmp_path: Path) -> None:
    again = build_synthetic_corpus(tmp_path, 20, seed=3)
    assert again.parent.name == corpus.parent.name  # same content key
    assert again.read_text() == corpus.read_text()  # same ids, transcripts, voices, durations
    mtime = again.stat().st_mtime_ns
    assert build_synthetic_corpus(tmp_path, 20, seed=3) == again
    assert again.stat().st_mtime_ns == mtime  # served from cache, not rebuilt
    other = build_synthetic_corpus(tmp_path, 20, seed=4)
    assert other.parent != again.parent
    assert [u.transcript for u in load_manifest(other)] != [
        u.transcript for u in load_manifest(again)
    ]


@needs_tts
def test_manifest_matches_audio(corpus: Path) -> None:
    utts = load_manifest(corpus)
    assert len(utts) == 20
    with open(corpus, newline="") as f:
        assert next(csv.reader(f, delimiter="\t")) == [
            "id", "path", "seconds", "transcript", "voice", "split"
        ]  # fmt: skip
    for u in utts:
        info = sf.info(str(u.path))
        assert info.samplerate == 16000 and info.channels == 1
        assert abs(info.duration - u.seconds) < 1e-3
        assert 0.3 < u.seconds < 15
        assert u.transcript == normalize_text(u.transcript) and u.transcript


@needs_tts
def test_held_out_voices_and_sentences_are_disjoint(corpus: Path) -> None:
    utts = load_manifest(corpus)
    splits = {u.split for u in utts}
    assert splits == {"train", "dev", "test"}
    by = {s: [u for u in utts if u.split == s] for s in splits}
    train_voices = {u.voice for u in by["train"]}
    train_text = {u.transcript for u in by["train"]}
    for held in ("dev", "test"):
        assert not {u.voice for u in by[held]} & train_voices
        assert not {u.transcript for u in by[held]} & train_text
    assert not {u.transcript for u in by["dev"]} & {u.transcript for u in by["test"]}
    pools = voices_by_split()
    assert not set(pools["train"]) & (set(pools["dev"]) | set(pools["test"]))
    assert not set(pools["dev"]) & set(pools["test"])
    variants = {s: {v.split("+")[-1] for v in pools[s] if v.startswith("espeak:")} for s in pools}
    assert not variants["train"] & (variants["dev"] | variants["test"])


@needs_tts
def test_open_domain_corpus(tmp_path: Path) -> None:
    utts = load_manifest(build_synthetic_corpus(tmp_path, 12, seed=1, domain="open"))
    assert len(utts) == 12 and all(len(u.transcript.split()) >= 3 for u in utts)


def test_bad_domain_and_size(tmp_path: Path) -> None:
    with pytest.raises(KDSweepError, match="domain"):
        build_synthetic_corpus(tmp_path, 12, domain="news")
    with pytest.raises(KDSweepError, match="n_utterances"):
        build_synthetic_corpus(tmp_path, 2)


@needs_tts
def test_load_manifest_errors_name_field_and_file(corpus: Path, tmp_path: Path) -> None:
    rows = corpus.read_text().splitlines()
    bad = tmp_path / "bad.tsv"
    bad.write_text("\n".join([rows[0], rows[1].replace(".wav", ".missing.wav")]) + "\n")
    with pytest.raises(KDSweepError, match=r"bad\.tsv: line 2: field 'path'"):
        load_manifest(bad)
    nocol = tmp_path / "nocol.tsv"
    nocol.write_text("id\tpath\n")
    with pytest.raises(KDSweepError, match=r"nocol\.tsv: missing column"):
        load_manifest(nocol)
    badtext = tmp_path / "badtext.tsv"
    header, first = rows[0], rows[1].split("\t")
    first[1] = str(corpus.parent / first[1])
    first[3] = "Hello World!"
    badtext.write_text(header + "\n" + "\t".join(first) + "\n")
    with pytest.raises(KDSweepError, match="field 'transcript'"):
        load_manifest(badtext)


@needs_tts
def test_user_csv_and_librispeech_folder(corpus: Path, tmp_path: Path) -> None:
    utts = load_manifest(corpus)[:3]
    csv_path = tmp_path / "mine.csv"
    with open(csv_path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["audio", "text", "speaker"])
        for u in utts:
            w.writerow([str(u.path), u.transcript.upper() + ".", "spk1"])
    mine = load_user_manifest(csv_path, audio_column="audio", text_column="text")
    assert [m.transcript for m in mine] == [u.transcript for u in utts]
    assert all(m.voice == "spk1" and m.split == "train" for m in mine)
    with pytest.raises(KDSweepError, match="text_column"):
        load_user_manifest(csv_path, audio_column="audio", text_column="transcript")

    chapter = tmp_path / "ls" / "19" / "198"
    chapter.mkdir(parents=True)
    lines = []
    for i, u in enumerate(utts):
        uid = f"19-198-{i:04d}"
        data, sr = sf.read(str(u.path))
        sf.write(str(chapter / f"{uid}.flac"), data, sr)
        lines.append(f"{uid} {u.transcript.upper()}")
    (chapter / "19-198.trans.txt").write_text("\n".join(lines) + "\n")
    ls = load_librispeech_dir(tmp_path / "ls")
    assert [x.transcript for x in ls] == [u.transcript for u in utts]
    assert all(x.voice == "19" and x.seconds > 0 for x in ls)
    (chapter / "19-198-0000.flac").unlink()
    with pytest.raises(KDSweepError, match="19-198-0000"):
        load_librispeech_dir(tmp_path / "ls")


@pytest.mark.skipif(not CMU_DATA_DIR.is_dir(), reason="pocketsphinx-testdata not installed")
def test_cmu_clips_load_with_transcripts() -> None:
    clips = load_cmu_clips()
    assert len(clips) == 10
    texts = {c.id: c.transcript for c in clips}
    assert texts["cards-001"] == "ten of clubs"
    assert texts["librivox-sense_and_sensibility_01_austen_64kb-0880"] == (
        "he was not an ill disposed young man"
    )
    assert all(c.seconds > 0.5 and c.path.is_file() for c in clips)
    assert {c.split for c in clips} == {"ood", "ood-cards"}


@needs_tts
def test_interrupted_synthesis_continues_and_equals_an_uninterrupted_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ref = build_synthetic_corpus(tmp_path / "ref", 8, seed=5, num_workers=1)
    real, calls = synthesis._synthesize, []

    def killed_after_three(*args):
        if len(calls) == 3:
            raise KeyboardInterrupt("killed")
        calls.append(args[-1].name)
        return real(*args)

    monkeypatch.setattr(synthesis, "_synthesize", killed_after_three)
    with pytest.raises(KeyboardInterrupt):
        build_synthetic_corpus(tmp_path / "run", 8, seed=5, num_workers=1)
    (partial,) = (tmp_path / "run").glob("*.partial")
    assert sorted(p.name for p in (partial / "wav").iterdir()) == sorted(calls)

    done, calls = list(calls), []
    monkeypatch.setattr(synthesis, "_synthesize", lambda *a: calls.append(a[-1].name) or real(*a))
    manifest = build_synthetic_corpus(tmp_path / "run", 8, seed=5, num_workers=1)
    assert len(calls) == 5 and not set(calls) & set(done)  # only the missing files
    assert manifest.read_text() == ref.read_text()
    assert sorted(p.name for p in manifest.parent.iterdir()) == [
        "manifest.tsv",
        "params.json",
        "wav",
    ]
    for wav in (ref.parent / "wav").iterdir():
        assert (manifest.parent / "wav" / wav.name).read_bytes() == wav.read_bytes()


@needs_tts
def test_featurize_cached_and_collate(corpus: Path, tmp_path: Path) -> None:
    utts = load_manifest(corpus)
    fs = featurize(utts, tmp_path / "cache")
    files = sorted(p.name for p in (tmp_path / "cache").iterdir())
    assert len(files) == 2 and files[1] == files[0] + ".lock"  # one cache folder + its lock
    assert (tmp_path / "cache" / files[0] / "feats.npy").is_file()
    fs2 = featurize(utts, tmp_path / "cache")  # from cache
    assert torch.equal(fs.feats[0], fs2.feats[0]) and fs.ids == fs2.ids
    n = sf.info(str(utts[0].path)).frames
    assert fs.feats[0].shape == (n // 160 + 1, 80)
    assert abs(float(fs.feats[0].mean())) < 0.05  # per-utterance CMVN
    assert CharVocab().decode(fs.targets[0].tolist()) == utts[0].transcript

    train = fs.select("train")
    assert set(train.splits) == {"train"} and len(train) < len(fs)
    x, xl, y, yl = pad_collate([fs[i] for i in range(4)])
    assert x.shape == (4, int(xl.max()), 80) and y.ndim == 1 and int(yl.sum()) == y.numel()
    assert float(x[int(xl.argmin()), int(xl.min()) :].abs().sum()) == 0.0  # zero padding
    _, _, yp, _ = pad_collate([fs[i] for i in range(4)], pad_targets=True)
    assert yp.shape == (4, int(yl.max()))
    seen = []
    for idx, (bx, bxl, _, byl) in fs.indexed_batches(6):
        assert bxl.tolist() == [fs.lengths[i] for i in idx] and bx.shape[0] == len(idx)
        assert byl.tolist() == [len(fs.targets[i]) for i in idx]
        seen += idx
    assert sorted(seen) == list(range(len(fs)))
    assert sum(1 for _ in fs.batches(6, seed=1)) == len(seen) // 6 + (len(seen) % 6 > 0)


def test_resample_bucketing_is_exact() -> None:
    for n in (1, 4409, 4410, 4411, 33333):
        x = torch.randn(n)
        for sr in (8000, 22050):
            ref = torchaudio.functional.resample(x, sr, 16000)
            assert torch.allclose(_resample(x, sr, 16000), ref, atol=1e-6)


def test_bucket_batches_cover_everything_once() -> None:
    lengths = [((i * 37) % 101) + 1 for i in range(103)]
    batches = bucket_batches(lengths, 8, shuffle=True, seed=1, chunk_batches=4)
    flat = [i for b in batches for i in b]
    assert sorted(flat) == list(range(103))
    assert batches == bucket_batches(lengths, 8, shuffle=True, seed=1, chunk_batches=4)
    spread = sum(max(lengths[i] for i in b) - min(lengths[i] for i in b) for b in batches)
    assert spread < 0.5 * sum(100 for _ in batches)  # bucketing keeps similar lengths together
    plain = bucket_batches(lengths, 8, shuffle=False)
    assert [lengths[i] for b in plain for i in b] == sorted(lengths)


def test_logmel_and_specaugment() -> None:
    wave = torch.randn(16000)
    feats = LogMel()(wave)
    assert feats.shape == (101, 80) and torch.isfinite(feats).all()
    assert torch.isfinite(LogMel()(torch.zeros(800))).all()  # digital silence stays finite
    aug = SpecAugment(freq_mask=10, time_mask=10)
    batch = torch.randn(3, 100, 80)
    aug.eval()
    assert torch.equal(aug(batch), batch)
    aug.train()
    torch.manual_seed(0)
    out = aug(batch)
    assert out.shape == batch.shape and (out == 0).any() and not torch.equal(out, batch)
