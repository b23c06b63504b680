"""Speech features on disk: float16 memory map read lazily, resumable build, bad caches rebuilt."""

from __future__ import annotations

import json
import os
import pickle
import warnings
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from kdsweep.speech.data import LogMel, Utterance, feature_store, features, featurize, read_audio
from kdsweep.speech.data.feature_store import MappedFeatures

pytestmark = pytest.mark.unit


def _clips(folder: Path, n: int, seed: int = 0) -> list[Utterance]:
    """``n`` short noise clips of different lengths (some at 8 kHz: resampled on read)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        sr = 8000 if i % 3 == 0 else 16000
        wave = (0.1 * rng.standard_normal(int(sr * (0.05 + 0.03 * i)))).astype(np.float32)
        path = folder / f"u{i}.wav"
        sf.write(str(path), wave, sr, subtype="PCM_16")
        out.append(Utterance(f"u{i}", path, len(wave) / sr, "a b", "v", ("train", "dev")[i % 2]))
    return out


def _cache(cache_dir: Path) -> Path:
    (folder,) = [p for p in cache_dir.iterdir() if p.is_dir()]
    return folder


def test_rows_are_the_fp16_log_mels_read_lazily(tmp_path: Path) -> None:
    utts = _clips(tmp_path / "wav", 5)
    fs = featurize(utts, tmp_path / "cache")
    assert isinstance(fs.feats, MappedFeatures) and len(fs.feats) == 5
    logmel = LogMel()
    with torch.no_grad():
        want = [logmel(read_audio(u.path)).to(torch.float16).float() for u in utts]
    assert all(torch.equal(a, b) for a, b in zip(fs.feats, want))
    assert fs.lengths == [w.shape[0] for w in want]
    assert np.load(_cache(tmp_path / "cache") / "feats.npy", mmap_mode="r").dtype == np.float16


def test_select_take_concat_and_pickle_stay_on_disk(tmp_path: Path) -> None:
    a = featurize(_clips(tmp_path / "a", 4), tmp_path / "cache")
    b = featurize(_clips(tmp_path / "b", 3, seed=1), tmp_path / "cache")
    dev = a.select("dev")
    assert isinstance(dev.feats, MappedFeatures) and dev.ids == ["u1", "u3"]
    assert torch.equal(dev.feats[1], a.feats[3]) and dev.lengths == [a.lengths[1], a.lengths[3]]
    both = a.concat(b)
    assert isinstance(both.feats, MappedFeatures) and len(both) == 7
    assert torch.equal(both.feats[5], b.feats[1]) and both.lengths == a.lengths + b.lengths
    picked = both.take([6, 0, 6])
    assert [t.shape for t in picked.feats] == [b.feats[2].shape, a.feats[0].shape, b.feats[2].shape]
    assert len(both.take([])) == 0
    again = pickle.loads(pickle.dumps(picked))
    assert all(torch.equal(x, y) for x, y in zip(again.feats, picked.feats))
    with pytest.raises(IndexError):
        a.feats[4]


def test_interrupted_build_continues_and_equals_an_uninterrupted_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    utts = _clips(tmp_path / "wav", 10)
    reference = featurize(utts, tmp_path / "ref", chunk=3)

    real_save, saved = feature_store._save_chunk, []

    def save_then_die(path, feats):  # killed after two of the four chunks
        if len(saved) == 2:
            raise KeyboardInterrupt("killed")
        real_save(path, feats)
        saved.append(path.name)

    monkeypatch.setattr(feature_store, "_save_chunk", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        featurize(utts, tmp_path / "cache", chunk=3)
    (partial,) = (tmp_path / "cache").glob("*.partial")
    assert sorted(p.name for p in partial.glob("chunk-*")) == ["chunk-00000.npz", "chunk-00001.npz"]
    monkeypatch.setattr(feature_store, "_save_chunk", real_save)

    real_read, reads = features.read_audio, []
    monkeypatch.setattr(features, "read_audio", lambda p, sr: reads.append(p) or real_read(p, sr))
    resumed = featurize(utts, tmp_path / "cache", chunk=3)
    assert reads == [u.path for u in utts[6:]]  # only the two unsaved chunks are computed
    assert not list((tmp_path / "cache").glob("*.partial"))
    for name in ("feats.npy", "offsets.npy", "meta.json"):
        ref_bytes = (_cache(tmp_path / "ref") / name).read_bytes()
        assert (_cache(tmp_path / "cache") / name).read_bytes() == ref_bytes
    assert all(torch.equal(x, y) for x, y in zip(resumed.feats, reference.feats))


def test_partial_build_of_other_content_is_discarded(tmp_path: Path) -> None:
    utts = _clips(tmp_path / "wav", 4)
    first = featurize(utts, tmp_path / "cache", chunk=2)
    folder = _cache(tmp_path / "cache")
    # a leftover partial folder of a different chunking is not reused
    stale = folder.with_name(folder.name + ".partial")
    stale.mkdir()
    (stale / "plan.json").write_text(json.dumps({"chunk": 99}))
    np.savez(stale / "chunk-00000.npz", feats=np.zeros((1, 80), np.float16), lens=np.ones(1))
    os.rename(folder, folder.with_name("moved"))
    again = featurize(utts, tmp_path / "cache", chunk=2)
    assert all(torch.equal(x, y) for x, y in zip(again.feats, first.feats))


@pytest.mark.parametrize("damage", ["truncate", "append", "foreign_meta", "no_meta", "offsets"])
def test_damaged_or_foreign_cache_is_rebuilt_not_read(tmp_path: Path, damage: str) -> None:
    utts = _clips(tmp_path / "wav", 4)
    good = [t.clone() for t in featurize(utts, tmp_path / "cache").feats]
    folder = _cache(tmp_path / "cache")
    feats_file = folder / "feats.npy"
    if damage == "truncate":
        os.truncate(feats_file, feats_file.stat().st_size - 100)
    elif damage == "append":
        with open(feats_file, "ab") as f:
            f.write(b"\0" * 160)
    elif damage == "foreign_meta":
        meta = json.loads((folder / "meta.json").read_text())
        meta["transcripts"][0] = "something else"
        (folder / "meta.json").write_text(json.dumps(meta))
    elif damage == "no_meta":
        (folder / "meta.json").unlink()
    else:
        np.save(folder / "offsets.npy", np.array([0, 1, 2]))
    with pytest.warns(UserWarning, match="features cache .*rebuilding"):
        fs = featurize(utts, tmp_path / "cache")
    assert all(torch.equal(x, y) for x, y in zip(fs.feats, good))
    with warnings.catch_warnings():  # the rebuilt cache is reused, silently
        warnings.simplefilter("error")
        assert len(featurize(utts, tmp_path / "cache")) == 4
