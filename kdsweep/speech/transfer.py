"""Speech transfer sets: extra untranscribed utterances that the teacher labels for the student.

A speech transfer set (`transfer_set`) is one of
    "synthetic"              N extra utterances synthesized like the shipped corpus (same TTS
                             recipe, train voices only) from sentences of the corpus's domain that
                             occur in none of its train/dev/test splits
    <folder>                 every .wav/.flac under it (recursively)
    <list>.txt / .lst        one audio path per line (relative to the list's folder)
    <manifest>.csv / .tsv    an `audio_column` column of audio paths
No transcripts are read: transfer utterances are unlabeled (their transcript is ""). Files with
the same audio bytes as a dev/test utterance are dropped, like dev/test texts for text transfer.
No ray, no mlflow.
"""

from __future__ import annotations

import csv
import hashlib
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

from kdsweep.errors import KDSweepError
from kdsweep.filelock import locked
from kdsweep.speech.data import (
    CORPUS_VERSION,
    FeatureSet,
    Utterance,
    _command_sentence,
    _file_digest,
    draw_tts_job,
    fortune_sentences,
    synthesize_jobs,
    voices_by_split,
)

SYNTHETIC = "synthetic"
AUDIO_SUFFIXES = (".wav", ".flac")
LIST_SUFFIXES = (".txt", ".lst")
TABLE_SUFFIXES = (".csv", ".tsv")
FIELD = "field 'transfer_set'"
# The shipped corpus's recipe (build_synthetic_corpus defaults): same speaking rates, pitch,
# noise and flite share, so transfer audio differs from the labeled audio only in its sentences.
WPM_RANGE = (120, 220)
NOISE_SNR_DB = (20.0, 40.0)
FLITE_FRAC = 0.25


def check_source(source: str) -> None:
    """Config-time check: '' (none), 'synthetic', or an existing folder / list / manifest."""
    if source in ("", SYNTHETIC):
        return
    path = Path(source).expanduser()
    if path.is_dir():
        return
    if path.suffix.lower() not in LIST_SUFFIXES + TABLE_SUFFIXES:
        raise KDSweepError(
            f"{FIELD}: unknown source {source!r} (no such folder); use '' (none), 'synthetic', "
            f"a folder of {'/'.join(AUDIO_SUFFIXES)} files or a "
            f"{'/'.join(LIST_SUFFIXES + TABLE_SUFFIXES)} list of audio paths"
        )
    if not path.is_file():
        raise KDSweepError(f"{FIELD}: file not found: {source}")


# ------------------------------------------------------------------------ synthetic transfer
def transfer_sentences(domain: str, n: int, exclude: set[str], seed: int) -> list[str]:
    """`n` sentences of `domain` ("commands" | "open") outside `exclude` (the corpus's own
    sentences), unique where the domain allows; deterministic in `seed`.

    The generator's seed differs from the corpus's (an extra SeedSequence word), so the draw
    does not replay the corpus's sentence sequence.
    """
    rng = np.random.default_rng([seed, 0x7472])
    if domain == "commands":
        out: list[str] = []
        seen: set[str] = set()
        attempts = 0
        while len(out) < n:
            attempts += 1
            if attempts > 200 * n + 1000:
                raise KDSweepError(
                    f"{FIELD} 'synthetic': found only {len(out)} of {n} commands sentences "
                    "outside the corpus; lower transfer_size"
                )
            s = _command_sentence(rng)
            # Never a corpus sentence; prefer unseen ones, but accept repeats (new voice, new
            # audio) once the small template space makes new sentences rare.
            if s in exclude or (s in seen and attempts < 50 * n):
                continue
            out.append(s)
            seen.add(s)
        return out
    pool = [s for s in fortune_sentences() if s not in exclude]
    if not pool:
        raise KDSweepError(f"{FIELD} 'synthetic': no fortunes sentences left outside the corpus")
    order = rng.permutation(len(pool))
    return [pool[order[i % len(pool)]] for i in range(n)]


def build_synthetic_transfer(
    out_dir: str | Path, domain: str, n: int, exclude: Sequence[str], seed: int = 0
) -> list[Utterance]:
    """Synthesize `n` unlabeled utterances once (cached by a content key, published
    atomically under a lock) and return them with transcript "" and split "transfer".

    The manifest keeps each sentence for inspection; nothing trains on it.
    """
    voices = voices_by_split()["train"]  # never a dev/test voice: those stay held out
    params = {
        "version": CORPUS_VERSION, "domain": domain, "n": n, "seed": seed,
        "exclude": hashlib.sha1("\n".join(sorted(set(exclude))).encode()).hexdigest(),
        "wpm": list(WPM_RANGE), "noise": list(NOISE_SNR_DB), "flite_frac": FLITE_FRAC,
        "voices": voices,
    }  # fmt: skip
    key = hashlib.sha1(json.dumps(params, sort_keys=True).encode()).hexdigest()[:10]
    corpus_dir = Path(out_dir) / f"{domain}-transfer-n{n}-seed{seed}-{key}"
    manifest = corpus_dir / "manifest.tsv"
    if not manifest.is_file():
        with locked(Path(out_dir) / f"{corpus_dir.name}.lock"):
            if not manifest.is_file():
                _synthesize_all(corpus_dir, domain, n, set(exclude), seed, voices)
    with open(manifest, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    return [
        Utterance(r["id"], corpus_dir / r["path"], float(r["seconds"]), "", r["voice"], "transfer")
        for r in rows
    ]


def _synthesize_all(
    corpus_dir: Path, domain: str, n: int, exclude: set[str], seed: int, voices: list[str]
) -> None:
    sentences = transfer_sentences(domain, n, exclude, seed)
    rng = np.random.default_rng([seed, 0x7472, 1])
    # all random choices drawn here, in order: the audio depends on the seed only
    jobs = [
        draw_tts_job(
            rng, f"tr{domain[:3]}{i:06d}", text, voices, FLITE_FRAC, WPM_RANGE, NOISE_SNR_DB,
            seed * 7_000_003 + i,
        )
        for i, text in enumerate(sentences)
    ]  # fmt: skip
    synthesize_jobs(jobs, corpus_dir, lambda text: "transfer")


# ------------------------------------------------------------------------ user audio
def load_audio_source(
    source: str, audio_column: str, exclude_digests: set[str], size: int, seed: int
) -> list[Utterance]:
    """Unlabeled utterances of a folder / list / manifest: every file checked readable (a
    corrupt one is named), duplicates and dev/test audio (`exclude_digests`) dropped, shuffled
    deterministically by `seed` and cut to `size` (0 = all)."""
    path = Path(source).expanduser()
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.suffix.lower() in AUDIO_SUFFIXES)
        if not files:
            raise KDSweepError(f"{FIELD}: no {'/'.join(AUDIO_SUFFIXES)} files under {source}")
        where = [f"{FIELD}: {source}"] * len(files)
    else:
        files, where = _list_files(path, audio_column)
    kept: list[Path] = []
    seen: set[str] = set()
    for f, w in zip(files, where):
        if not f.is_file():
            raise KDSweepError(f"{w}: audio file not found: {f}")
        _check_audio(f, w)
        digest = _file_digest(f)
        if digest not in exclude_digests and digest not in seen:
            seen.add(digest)
            kept.append(f)
    if not kept:
        raise KDSweepError(f"{FIELD}: {source}: no audio left after removing duplicates and "
                           "dev/test utterances")  # fmt: skip
    order = np.random.default_rng([seed, 0x7472]).permutation(len(kept))
    kept = [kept[i] for i in order][: size or None]
    return [
        Utterance(f"tr{i:06d}-{f.stem}", f.resolve(), sf.info(str(f)).duration, "", "unknown",
                  "transfer")
        for i, f in enumerate(kept)
    ]  # fmt: skip


def _list_files(path: Path, audio_column: str) -> tuple[list[Path], list[str]]:
    """Audio paths of a .txt/.lst list or a .csv/.tsv manifest, each with where it came from."""
    where = f"{FIELD}: {path}"
    try:
        with path.open(encoding="utf-8", newline="") as f:
            if path.suffix.lower() in LIST_SUFFIXES:
                items = [(n, ln.strip()) for n, ln in enumerate(f, start=1)]
                items = [(n, s) for n, s in items if s and not s.startswith("#")]
            else:
                delim = "\t" if path.suffix.lower() == ".tsv" else ","
                reader = csv.DictReader(f, delimiter=delim)
                rows = list(reader)
                cols = list(reader.fieldnames or [])
                if audio_column not in cols:
                    raise KDSweepError(
                        f"{where}: no column {audio_column!r} (audio_column); columns are {cols}"
                    )
                items = [(n, (r[audio_column] or "").strip()) for n, r in enumerate(rows, 2)]
    except (UnicodeDecodeError, csv.Error) as e:
        raise KDSweepError(f"{where}: cannot parse: {e}") from None
    if not items:
        raise KDSweepError(f"{where}: lists no audio files")
    files = [_resolve(s, path.parent) for _, s in items]
    return files, [f"{where}: line {n}" for n, _ in items]


def _resolve(audio: str, base: Path) -> Path:
    p = Path(audio).expanduser()
    return p if p.is_absolute() else base / p


def _check_audio(path: Path, where: str) -> None:
    """Header check: a corrupt, unsupported or empty file fails here, naming the file."""
    try:
        info = sf.info(str(path))
    except (sf.LibsndfileError, RuntimeError) as e:
        raise KDSweepError(f"{where}: corrupt or unreadable audio file {path}: {e}") from None
    if info.frames == 0:
        raise KDSweepError(f"{where}: audio file {path} has no samples")


def file_digests(utterances: Sequence[Utterance]) -> set[str]:
    """Content digests of utterances' audio (to keep dev/test audio out of a transfer set)."""
    return {_file_digest(Path(u.path)) for u in utterances}


# ------------------------------------------------------------------------ rows of an epoch
def concat_features(a: FeatureSet, b: FeatureSet) -> FeatureSet:
    """Rows of `a` then rows of `b` (the labeled split, then the transfer set)."""
    return a.concat(b)


def take_rows(fs: FeatureSet, rows: Sequence[int]) -> FeatureSet:
    """The utterances `rows` of `fs`, in that order (tensors shared, not copied)."""
    return fs.take(rows)


def features_key(fs: FeatureSet) -> str:
    """Content key of a featurized transfer set (names its cached teacher outputs)."""
    h = hashlib.sha1(json.dumps(fs.ids).encode())
    for f in fs.feats:
        h.update(f.to(torch.float16).numpy().tobytes())
    return h.hexdigest()[:16]
