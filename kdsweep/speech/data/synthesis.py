"""Synthetic speech corpora: espeak-ng / flite voices, TTS jobs drawn from a seed, synthesis.

TTS runs the Debian ``espeak-ng`` and ``flite`` binaries offline; a corpus is cached by a key
of its recipe and built in a ``.partial`` folder, renamed into place when complete.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

from kdsweep.errors import KDSweepError
from kdsweep.progress import progress
from kdsweep.speech.data.audio import SAMPLE_RATE, _torch_threads, read_audio
from kdsweep.speech.data.corpus import MANIFEST_COLUMNS
from kdsweep.speech.data.text import command_sentences, open_sentences

# Bump when the synthesis recipe changes so cached corpora are rebuilt instead of reused.
CORPUS_VERSION = 1

# espeak-ng accents (phonemization rules) and voice variants (speaker-like timbre settings).
# MBROLA voices are excluded: the mbrola binary is not installed.
ESPEAK_ACCENTS = (
    "en-us", "en-gb", "en-gb-scotland", "en-gb-x-gbclan", "en-gb-x-rp",
    "en-gb-x-gbcwmd", "en-029", "en-us-nyc",
)  # fmt: skip
# Human-sounding variants only (no whisper/robot/croak effects), 40 of them.
ESPEAK_VARIANTS = (
    "m1", "m2", "m3", "m4", "m5", "m6", "m7", "m8", "f1", "f2", "f3", "f4", "f5",
    "adam", "Alex", "Alicia", "Andrea", "Andy", "Annie", "aunty", "belinda", "benjamin",
    "caleb", "david", "ed", "edward", "iven", "john", "linda", "max", "Michael", "paul",
    "quincy", "rob", "robert", "steph", "zac", "klatt", "klatt3", "grandma",
)  # fmt: skip
FLITE_VOICES = ("kal", "kal16", "awb", "rms", "slt")
# Held-out variants / flite voices: dev and test voices never occur in train.
DEV_VARIANTS = ("m4", "f3", "Andy", "linda")
TEST_VARIANTS = ("m6", "f4", "david", "steph")
DEV_FLITE = ("slt",)
TEST_FLITE = ("rms",)


def _held_out_split(name: str, dev: Sequence[str], test: Sequence[str]) -> str:
    return "dev" if name in dev else "test" if name in test else "train"


def voices_by_split() -> dict[str, list[str]]:
    """Synthetic voice names per split; dev/test voices are disjoint from train (and each other).

    A voice is ``espeak:<accent>+<variant>`` or ``flite:<voice>``. Held-out splits use variants
    (speaker timbres) that never appear in train under any accent.
    """
    out: dict[str, list[str]] = {"train": [], "dev": [], "test": []}
    for variant in ESPEAK_VARIANTS:
        split = _held_out_split(variant, DEV_VARIANTS, TEST_VARIANTS)
        out[split] += [f"espeak:{acc}+{variant}" for acc in ESPEAK_ACCENTS]
    for v in FLITE_VOICES:
        split = _held_out_split(v, DEV_FLITE, TEST_FLITE)
        out[split].append(f"flite:{v}")
    return out


def _synthesize(
    text: str, voice: str, wpm: int, pitch: int, noise_snr_db: float | None, seed: int, out: Path
) -> float:
    """Render ``text`` with one TTS voice to a 16 kHz mono PCM16 wav; returns its seconds."""
    engine, name = voice.split(":", 1)
    with tempfile.TemporaryDirectory(prefix="kdtts") as tmp:
        raw = Path(tmp) / "raw.wav"
        if engine == "espeak":
            cmd = ["espeak-ng", "-v", name, "-s", str(wpm), "-p", str(pitch), "-w", str(raw), text]
        else:
            # flite has no wpm option: stretch durations relative to its ~175 wpm default.
            stretch = f"{175.0 / wpm:.3f}"
            cmd = ["flite", "-voice", name, "--setf", f"duration_stretch={stretch}",
                   "-t", text, "-o", str(raw)]  # fmt: skip
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        if proc.returncode != 0 or not raw.exists():
            raise KDSweepError(f"voice: {voice} failed for {out.name}: {proc.stderr.strip()[:200]}")
        wave = read_audio(raw)
    peak = float(wave.abs().max())
    if peak > 0:
        wave = wave * (0.8 / peak)  # fixed peak level; noise is added relative to signal power
    if noise_snr_db is not None:
        gen = torch.Generator().manual_seed(seed)
        power = float(wave.pow(2).mean())
        noise_std = (power / 10 ** (noise_snr_db / 10)) ** 0.5
        wave = wave + noise_std * torch.randn(wave.shape, generator=gen)
    # Written under a temporary name and renamed: a wav file exists only when complete.
    tmp = out.with_name(f"{out.name}.tmp{os.getpid()}-{threading.get_ident()}")
    sf.write(str(tmp), wave.clamp(-1.0, 1.0).numpy(), SAMPLE_RATE, "PCM_16", format="WAV")
    os.replace(tmp, out)
    return wave.numel() / SAMPLE_RATE


def _split_sentences(
    sentences: list[str], rng: np.random.Generator, dev_frac: float, test_frac: float
) -> dict[str, str]:
    """Assign each unique sentence to one split (so held-out sentences never occur in train)."""
    unique = sorted(set(sentences))
    order = rng.permutation(len(unique))
    n_dev = max(1, round(dev_frac * len(unique))) if dev_frac > 0 else 0
    n_test = max(1, round(test_frac * len(unique))) if test_frac > 0 else 0
    if n_dev + n_test >= len(unique):
        raise KDSweepError(
            f"n_utterances: only {len(unique)} unique sentences, too few for dev/test splits"
        )
    split_of = {}
    for rank, idx in enumerate(order):
        split = "dev" if rank < n_dev else "test" if rank < n_dev + n_test else "train"
        split_of[unique[idx]] = split
    return split_of


def build_synthetic_corpus(
    out_dir: str | Path,
    n_utterances: int,
    seed: int = 0,
    domain: str = "commands",
    dev_frac: float = 0.1,
    test_frac: float = 0.1,
    wpm_range: tuple[int, int] = (120, 220),
    noise_snr_db: tuple[float, float] | None = (20.0, 40.0),
    flite_frac: float = 0.25,
    num_workers: int | None = None,
) -> Path:
    """Synthesize a TTS corpus and return its manifest path (cached by a content key).

    ``domain`` is "commands" (digits, cards, short home commands: learnable on CPU in minutes)
    or "open" (short fortunes). Dev/test hold out both sentences and voices. ``flite_frac`` of
    the utterances use flite (few, but real-speaker voices), the rest espeak-ng (many
    accent x variant voices). ``noise_snr_db`` draws a white-noise SNR per utterance (None: off).
    The result lives in ``out_dir/<domain>-n<N>-seed<S>-<key>/manifest.tsv``; an
    existing manifest is returned as is.
    """
    if domain not in ("commands", "open"):
        raise KDSweepError(f"domain: expected 'commands' or 'open', got {domain!r}")
    if n_utterances < 3:
        raise KDSweepError(f"n_utterances: need at least 3 (train/dev/test), got {n_utterances}")
    params = {
        "version": CORPUS_VERSION, "n": n_utterances, "seed": seed, "domain": domain,
        "dev_frac": dev_frac, "test_frac": test_frac, "wpm": list(wpm_range),
        "noise": None if noise_snr_db is None else list(noise_snr_db), "flite_frac": flite_frac,
        "voices": voices_by_split(),
    }  # fmt: skip
    key = hashlib.sha1(json.dumps(params, sort_keys=True).encode()).hexdigest()[:10]
    corpus_dir = Path(out_dir) / f"{domain}-n{n_utterances}-seed{seed}-{key}"
    manifest = corpus_dir / "manifest.tsv"
    if manifest.exists():
        return manifest

    rng = np.random.default_rng(seed)
    if domain == "commands":
        sentences = command_sentences(n_utterances, seed=int(rng.integers(2**31)))
    else:
        sentences = open_sentences(n_utterances, seed=int(rng.integers(2**31)))
    split_of = _split_sentences(sentences, rng, dev_frac, test_frac)
    voices = voices_by_split()
    # All random choices are drawn here, in order, so the corpus depends on the seed only.
    jobs = [
        draw_tts_job(
            rng, f"{domain[:3]}{i:06d}", text, voices[split_of[text]], flite_frac, wpm_range,
            noise_snr_db, seed * 1_000_003 + i,
        )
        for i, text in enumerate(sentences)
    ]  # fmt: skip
    synthesize_jobs(jobs, corpus_dir, split_of.__getitem__, params, num_workers)
    return manifest


def draw_tts_job(
    rng: np.random.Generator,
    uid: str,
    text: str,
    voices: list[str],
    flite_frac: float,
    wpm_range: tuple[int, int],
    noise_snr_db: tuple[float, float] | None,
    noise_seed: int,
) -> tuple:
    """One utterance's TTS settings (engine, voice, rate, pitch, noise), drawn from `rng` in a
    fixed order so a corpus depends on its seed only."""
    engine = "flite:" if rng.random() < flite_frac else "espeak:"
    pool = [v for v in voices if v.startswith(engine)]
    voice = pool[int(rng.integers(len(pool)))]
    wpm = int(rng.integers(wpm_range[0], wpm_range[1] + 1))
    pitch = int(rng.integers(30, 71))  # espeak pitch 0-99, default 50
    snr = None if noise_snr_db is None else float(rng.uniform(*noise_snr_db))
    return (uid, text, voice, wpm, pitch, snr, noise_seed)


def synthesize_jobs(
    jobs: list[tuple],
    corpus_dir: Path,
    split_of: Callable[[str], str],
    params: dict | None = None,
    num_workers: int | None = None,
) -> None:
    """Synthesize `jobs` (from `draw_tts_job`) into `corpus_dir`/wav + manifest.tsv, built in a
    `.partial` folder and renamed into place: a half-built corpus is never mistaken for cached.

    Resumable: each wav file appears only when complete, and a rerun with the same jobs keeps
    the `.partial` folder's finished files and synthesizes the rest (same result: every job's
    settings, noise seed included, are fixed in `jobs`).
    """
    tmp_dir = corpus_dir.with_name(corpus_dir.name + ".partial")
    plan = json.loads(json.dumps({"jobs": jobs, "params": params}))
    plan_file = tmp_dir / "plan.json"
    if not plan_file.is_file() or json.loads(plan_file.read_text()) != plan:
        shutil.rmtree(tmp_dir, ignore_errors=True)
        (tmp_dir / "wav").mkdir(parents=True)
        plan_file.write_text(json.dumps(plan))

    def run(job: tuple) -> float:
        uid, text, voice, wpm, pitch, snr, noise_seed = job
        out = tmp_dir / "wav" / f"{uid}.wav"
        if out.is_file():  # finished before an interruption
            try:
                return sf.info(str(out)).frames / SAMPLE_RATE
            except (sf.LibsndfileError, RuntimeError):
                pass  # unreadable: synthesize it again
        return _synthesize(text, voice, wpm, pitch, snr, noise_seed, out)

    # TTS runs in subprocesses, so threads are enough to keep both cores busy; one torch thread
    # per worker avoids oversubscription during resampling.
    workers = num_workers or min(4, (os.cpu_count() or 2) + 1)
    with _torch_threads(1), ThreadPoolExecutor(max_workers=workers) as pool:
        done = progress(pool.map(run, jobs), total=len(jobs), desc=f"synthesis {corpus_dir.name}")
        seconds = list(done)

    with open(tmp_dir / "manifest.tsv", "w", newline="") as f:
        w = csv.writer(f, delimiter="\t", lineterminator="\n")
        w.writerow(MANIFEST_COLUMNS)
        for (uid, text, voice, *_), sec in zip(jobs, seconds):
            w.writerow([uid, f"wav/{uid}.wav", f"{sec:.4f}", text, voice, split_of(text)])
    if params is not None:
        (tmp_dir / "params.json").write_text(json.dumps(params, indent=1, sort_keys=True))
    for leftover in (tmp_dir / "wav").glob("*.tmp*"):  # from a killed writer
        leftover.unlink()
    plan_file.unlink()
    shutil.rmtree(corpus_dir, ignore_errors=True)
    tmp_dir.rename(corpus_dir)
