"""Speech corpora (synthetic TTS, user manifests, LibriSpeech folders, CMU clips) and features.

Everything here runs offline on CPU: audio comes from espeak-ng / flite (Debian packages) or from
files on disk, sentences from templates or the Debian ``fortunes`` files. No ray, no mlflow.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
import torchaudio
from torch import Tensor, nn

from kdsweep.errors import KDSweepError

SAMPLE_RATE = 16_000
MANIFEST_COLUMNS = ("id", "path", "seconds", "transcript", "voice", "split")
# Bump when the synthesis recipe changes so cached corpora are rebuilt instead of reused.
CORPUS_VERSION = 1
FEATURE_VERSION = 1

FORTUNES_DIR = Path("/usr/share/games/fortunes")
CMU_DATA_DIR = Path("/usr/share/pocketsphinx/test/data")

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


# --------------------------------------------------------------------------------------------
# Text normalization and vocabulary
# --------------------------------------------------------------------------------------------

_ONES = (
    "zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten",
    "eleven", "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen",
    "nineteen",
)  # fmt: skip
_TENS = ("", "", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety")


def number_to_words(n: int) -> str:
    """Spell a non-negative integer in English words ("one hundred five")."""
    if n < 0:
        raise ValueError(f"number_to_words: negative number {n}")
    if n < 20:
        return _ONES[n]
    if n < 100:
        tens, ones = divmod(n, 10)
        return _TENS[tens] + ("" if ones == 0 else " " + _ONES[ones])
    if n < 1000:
        hundreds, rest = divmod(n, 100)
        return _ONES[hundreds] + " hundred" + ("" if rest == 0 else " " + number_to_words(rest))
    for value, name in ((10**9, "billion"), (10**6, "million"), (1000, "thousand")):
        if n >= value:
            head, rest = divmod(n, value)
            tail = "" if rest == 0 else " " + number_to_words(rest)
            return number_to_words(head) + " " + name + tail
    raise AssertionError("unreachable")


def _spell_number_token(match: re.Match[str]) -> str:
    digits = match.group(0)
    if len(digits) > 9:  # long ids / phone numbers: read digit by digit
        return " ".join(_ONES[int(d)] for d in digits)
    return " " + number_to_words(int(digits)) + " "


def normalize_text(text: str) -> str:
    """Lowercase, spell out digits, keep only a-z, apostrophe and single spaces.

    Apostrophes survive only inside words ("don't"); quote marks around words are dropped.
    """
    text = text.replace("\u2019", "'").replace("`", "'").lower()
    text = re.sub(r"\d+", _spell_number_token, text)
    text = re.sub(r"[^a-z' ]+", " ", text)
    text = re.sub(r"(?<![a-z])'|'(?![a-z])", " ", text)
    return " ".join(text.split())


class CharVocab:
    """Character vocabulary for CTC: index 0 = blank, then space, apostrophe, a-z (29 symbols)."""

    blank: int = 0

    def __init__(self) -> None:
        self.symbols: list[str] = ["<blank>", " ", "'"] + [chr(c) for c in range(97, 123)]
        self._index = {s: i for i, s in enumerate(self.symbols) if i != self.blank}

    def __len__(self) -> int:
        return len(self.symbols)

    @property
    def labels(self) -> list[str]:
        """Labels for ``pyctcdecode.build_ctcdecoder``: blank is "" and space is " "."""
        return [""] + self.symbols[1:]

    def encode(self, text: str) -> list[int]:
        """Map a normalized transcript to label ids; raises on characters outside the vocab."""
        try:
            return [self._index[ch] for ch in text]
        except KeyError as exc:
            raise KDSweepError(
                f"transcript {text!r}: character {exc.args[0]!r} is not in the vocabulary "
                "(run normalize_text first)"
            ) from None

    def decode(self, ids: Iterable[int]) -> str:
        """Map label ids back to text, skipping blanks (no CTC collapsing: see decoding.py)."""
        return "".join(self.symbols[i] for i in ids if i != self.blank)


# --------------------------------------------------------------------------------------------
# Sentence sources
# --------------------------------------------------------------------------------------------

_CARD_RANKS = (
    "ace", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "jack",
    "queen", "king",
)  # fmt: skip
_CARD_SUITS = ("hearts", "spades", "clubs", "diamonds")
_ROOMS = (
    "kitchen", "bedroom", "living room", "bathroom", "garage", "office", "hallway",
    "dining room", "basement", "garden",
)  # fmt: skip
_DEVICES = ("lights", "heater", "fan", "radio", "television", "music", "oven", "lamp")
_DIRECTIONS = ("forward", "backward", "left", "right", "up", "down")
_UNITS = ("meters", "steps", "minutes", "seconds", "degrees", "percent")
_GENRES = ("jazz", "rock", "classical music", "the news", "some blues", "country music")
_CITIES = ("boston", "paris", "london", "berlin", "tokyo", "madrid", "chicago", "denver")
_DAYS = ("today", "tomorrow", "tonight", "on monday", "on friday", "this weekend")
_PEOPLE = ("mom", "dad", "alice", "bob", "the office", "my sister", "grandma", "the doctor")


def _small_number(rng: np.random.Generator) -> str:
    return number_to_words(int(rng.integers(1, 100)))


def _command_sentence(rng: np.random.Generator) -> str:
    """One sentence of the narrow "commands" domain (digits, cards, home/navigation commands)."""

    def pick(options: Sequence[str]) -> str:
        return options[int(rng.integers(len(options)))]

    kind = int(rng.integers(8))
    if kind == 0:  # digit strings
        return " ".join(_ONES[int(d)] for d in rng.integers(0, 10, size=int(rng.integers(3, 8))))
    if kind == 1:  # one to three playing cards
        cards = [f"{pick(_CARD_RANKS)} of {pick(_CARD_SUITS)}" for _ in range(rng.integers(1, 4))]
        return " ".join(cards) if rng.random() < 0.5 else " and ".join(cards)
    if kind == 2:
        state = pick(("on", "off"))
        dev = pick(_DEVICES)
        if rng.random() < 0.5:
            return f"turn the {dev} {state} in the {pick(_ROOMS)}"
        return f"turn {state} the {dev} in the {pick(_ROOMS)}"
    if kind == 3:
        return pick(
            (
                f"set the thermostat to {_small_number(rng)} degrees",
                f"set a timer for {_small_number(rng)} {pick(('minutes', 'seconds'))}",
                f"set the volume to {_small_number(rng)} percent",
                f"dim the lights in the {pick(_ROOMS)} to {_small_number(rng)} percent",
            )
        )
    if kind == 4:
        return f"go {pick(_DIRECTIONS)} {_small_number(rng)} {pick(_UNITS[:2])}"
    if kind == 5:
        return pick(
            (
                f"play {pick(_GENRES)} in the {pick(_ROOMS)}",
                f"what is the weather in {pick(_CITIES)} {pick(_DAYS)}",
                f"call {pick(_PEOPLE)} {pick(_DAYS)}",
                f"remind me to call {pick(_PEOPLE)} {pick(_DAYS)}",
            )
        )
    if kind == 6:
        return pick(
            (
                f"open the {pick(('garage door', 'front door', 'window', 'blinds'))}",
                f"close the {pick(('garage door', 'front door', 'window', 'blinds'))}",
                f"stop the {pick(_DEVICES)}",
                f"is the {pick(_DEVICES)} on in the {pick(_ROOMS)}",
            )
        )
    # kind 7: mixed digits and cards, like the CMU "cards" test clips
    return f"{pick(_ONES[1:11])} {pick(_CARD_RANKS)} of {pick(_CARD_SUITS)}"


def command_sentences(n: int, seed: int = 0) -> list[str]:
    """``n`` sentences of the "commands" domain, unique where the template space allows."""
    rng = np.random.default_rng(seed)
    out: list[str] = []
    seen: set[str] = set()
    attempts = 0
    while len(out) < n:
        s = _command_sentence(rng)
        attempts += 1
        # Prefer unique sentences; after many collisions accept repeats (tiny template space).
        if s not in seen or attempts > 50 * n:
            out.append(s)
            seen.add(s)
    return out


# Categories skipped: pictures, code, one-record files, untranslated text.
_FORTUNE_SKIP = {"ascii-art", "art", "perl", "pratchett", "translate-me"}
_ABBREV = re.compile(r"\b(mr|mrs|ms|dr|st|jr|sr|vs|etc|prof|gen|col|lt|no|co|inc)\.", re.I)
_ALLOWED = re.compile(r"^[A-Za-z0-9 '\u2019.,;:!?\"()-]+$")


def fortune_records(fortunes_dir: Path = FORTUNES_DIR) -> Iterator[tuple[str, str]]:
    """Yield (category, record text) from the Debian fortunes files (records split by ``%``)."""
    if not fortunes_dir.is_dir():
        raise KDSweepError(f"fortunes_dir: {fortunes_dir} not found (apt-get install fortunes)")
    for f in sorted(fortunes_dir.iterdir()):
        if f.suffix or not f.is_file() or f.name in _FORTUNE_SKIP:
            continue  # skip .dat/.u8 indexes
        text = f.read_bytes().decode("latin-1")
        text = re.sub(r".\x08", "", text)  # nroff overstrike (bold/underline) -> plain text
        for record in re.split(r"^%\s*$", text, flags=re.M):
            lines = [ln for ln in record.splitlines() if not ln.strip().startswith("--")]
            body = " ".join(ln.strip() for ln in lines).strip()
            if body:
                yield f.name, body


def fortune_sentences(
    min_words: int = 3, max_words: int = 14, fortunes_dir: Path = FORTUNES_DIR
) -> list[str]:
    """Short single-sentence fortunes, normalized (sorted, unique: deterministic)."""
    out: set[str] = set()
    for _, body in fortune_records(fortunes_dir):
        # single sentence: at most one terminal punctuation mark, at the very end
        if not _ALLOWED.match(body) or _ABBREV.search(body):
            continue
        if re.search(r"[.!?]\S*\s+\S", body):
            continue
        if re.search(r"\b[A-Z]{2,}\b", body):  # acronyms: TTS would spell them out
            continue
        s = normalize_text(body)
        words = s.split()
        if any(len(w) > 1 and not re.search("[aeiouy]", w) for w in words):
            continue  # txt-speak ("u cn rd ths") is unpronounceable as written
        if min_words <= len(words) <= max_words:
            out.add(s)
    return sorted(out)


def open_sentences(n: int, seed: int = 0) -> list[str]:
    """``n`` sentences of the "open" domain (fortunes); repeats only if the pool is smaller."""
    pool = fortune_sentences()
    if not pool:
        raise KDSweepError(f"fortunes_dir: no usable sentences in {FORTUNES_DIR}")
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(pool))
    return [pool[order[i % len(pool)]] for i in range(n)]


# --------------------------------------------------------------------------------------------
# Synthetic corpus
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Utterance:
    """One manifest row; ``path`` is absolute, ``seconds`` is the audio duration."""

    id: str
    path: Path
    seconds: float
    transcript: str
    voice: str
    split: str


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


def read_audio(path: str | Path, sample_rate: int = SAMPLE_RATE) -> Tensor:
    """Read an audio file with soundfile as mono float32 [N], resampled to ``sample_rate``."""
    try:
        data, sr = sf.read(str(path), dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError) as exc:
        raise KDSweepError(f"path: cannot read audio file {path}: {exc}") from None
    wave = torch.from_numpy(data.mean(axis=1))
    if sr != sample_rate:
        wave = _resample(wave, sr, sample_rate)
    return wave


def _resample(wave: Tensor, sr: int, target_sr: int) -> Tensor:
    """torchaudio resample with the input zero-padded to a multiple of 200 ms.

    The resampler's conv caches one oneDNN primitive (~1 MB) per input length; bucketing the
    length bounds that cache (measured: +0.7 MB RSS per utterance otherwise). Resampling already
    zero-pads the edges, so trailing zeros leave the kept samples unchanged.
    """
    n = wave.shape[-1]
    bucket = max(1, sr // 5)
    padded = nn.functional.pad(wave, (0, (-n) % bucket))
    out_len = -(-n * target_sr // sr)  # ceil(n * target / sr), torchaudio's own output length
    return torchaudio.functional.resample(padded, sr, target_sr)[..., :out_len]


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
    sf.write(str(out), wave.clamp(-1.0, 1.0).numpy(), SAMPLE_RATE, subtype="PCM_16")
    return wave.numel() / SAMPLE_RATE


@contextmanager
def _torch_threads(n: int) -> Iterator[None]:
    """Temporarily set torch's intra-op thread count.

    Small per-utterance ops gain nothing from 2 threads, and on a busy 2-core machine OpenMP
    spin-waiting made them up to ~100x slower (measured), so data preparation uses one.
    """
    prev = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(prev)


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
    `.partial` folder and renamed into place: a half-built corpus is never mistaken for cached."""
    tmp_dir = corpus_dir.with_name(corpus_dir.name + ".partial")
    shutil.rmtree(tmp_dir, ignore_errors=True)
    (tmp_dir / "wav").mkdir(parents=True)

    def run(job: tuple) -> float:
        uid, text, voice, wpm, pitch, snr, noise_seed = job
        return _synthesize(text, voice, wpm, pitch, snr, noise_seed, tmp_dir / "wav" / f"{uid}.wav")

    # TTS runs in subprocesses, so threads are enough to keep both cores busy; one torch thread
    # per worker avoids oversubscription during resampling.
    workers = num_workers or min(4, (os.cpu_count() or 2) + 1)
    with _torch_threads(1), ThreadPoolExecutor(max_workers=workers) as pool:
        seconds = list(pool.map(run, jobs))

    with open(tmp_dir / "manifest.tsv", "w", newline="") as f:
        w = csv.writer(f, delimiter="\t", lineterminator="\n")
        w.writerow(MANIFEST_COLUMNS)
        for (uid, text, voice, *_), sec in zip(jobs, seconds):
            w.writerow([uid, f"wav/{uid}.wav", f"{sec:.4f}", text, voice, split_of(text)])
    if params is not None:
        (tmp_dir / "params.json").write_text(json.dumps(params, indent=1, sort_keys=True))
    shutil.rmtree(corpus_dir, ignore_errors=True)
    tmp_dir.rename(corpus_dir)


# --------------------------------------------------------------------------------------------
# Manifests and user corpora
# --------------------------------------------------------------------------------------------


def _read_table(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    if not path.is_file():
        raise KDSweepError(f"manifest: file not found: {path}")
    with open(path, newline="", encoding="utf-8") as f:
        first = f.readline()
        f.seek(0)
        delim = "\t" if "\t" in first else ","
        reader = csv.DictReader(f, delimiter=delim)
        rows = list(reader)
        return list(reader.fieldnames or []), rows


def _resolve(audio: str, base: Path) -> Path:
    p = Path(audio).expanduser()
    return p if p.is_absolute() else (base / p)


def load_manifest(path: str | Path) -> list[Utterance]:
    """Load a kdsweep manifest (TSV or CSV with id, path, seconds, transcript, voice, split).

    Relative audio paths are resolved against the manifest's folder. Every row is validated.
    """
    path = Path(path)
    columns, rows = _read_table(path)
    missing = [c for c in MANIFEST_COLUMNS if c not in columns]
    if missing:
        raise KDSweepError(f"{path}: missing column(s) {missing}; found {columns}")
    vocab = CharVocab()
    out = []
    for i, row in enumerate(rows, start=2):  # line 1 is the header
        where = f"{path}: line {i}"
        audio = _resolve(row["path"] or "", path.parent)
        if not row["path"] or not audio.is_file():
            raise KDSweepError(f"{where}: field 'path': audio file not found: {audio}")
        try:
            seconds = float(row["seconds"])
        except (TypeError, ValueError):
            msg = f"{where}: field 'seconds': not a number: {row['seconds']!r}"
            raise KDSweepError(msg) from None
        transcript = row["transcript"] or ""
        try:
            vocab.encode(transcript)
        except KDSweepError as exc:
            raise KDSweepError(f"{where}: field 'transcript': {exc}") from None
        out.append(Utterance(row["id"], audio, seconds, transcript, row["voice"], row["split"]))
    if not out:
        raise KDSweepError(f"{path}: manifest has no rows")
    return out


def load_user_manifest(
    path: str | Path,
    audio_column: str = "path",
    text_column: str = "transcript",
    split: str = "train",
) -> list[Utterance]:
    """Load a user CSV/TSV with an audio-path column and a transcript column.

    Transcripts are normalized; optional columns ``id``, ``voice``/``speaker`` and ``split`` are
    used when present; durations come from the audio headers.
    """
    path = Path(path)
    columns, rows = _read_table(path)
    for col, name in ((audio_column, "audio_column"), (text_column, "text_column")):
        if col not in columns:
            raise KDSweepError(f"{path}: {name} {col!r} is not a column; found {columns}")
    out = []
    for i, row in enumerate(rows, start=2):
        audio = _resolve(row[audio_column] or "", path.parent)
        if not row[audio_column] or not audio.is_file():
            raise KDSweepError(f"{path}: line {i}: field {audio_column!r}: not found: {audio}")
        try:
            seconds = sf.info(str(audio)).duration
        except (sf.LibsndfileError, RuntimeError) as exc:
            raise KDSweepError(f"{path}: line {i}: cannot read audio {audio}: {exc}") from None
        voice = row.get("voice") or row.get("speaker") or "unknown"
        uid = row.get("id") or audio.stem
        text = normalize_text(row[text_column] or "")
        out.append(Utterance(uid, audio, seconds, text, voice, row.get("split") or split))
    if not out:
        raise KDSweepError(f"{path}: manifest has no rows")
    return out


def load_librispeech_dir(root: str | Path, split: str = "test") -> list[Utterance]:
    """Load a LibriSpeech-style folder: ``*.trans.txt`` files ("ID TEXT") beside ID.flac/.wav."""
    root = Path(root)
    trans_files = sorted(root.rglob("*.trans.txt"))
    if not trans_files:
        raise KDSweepError(f"root: no *.trans.txt files under {root}")
    out = []
    for tf in trans_files:
        for n, line in enumerate(tf.read_text(encoding="utf-8").splitlines(), start=1):
            if not line.strip():
                continue
            uid, _, text = line.strip().partition(" ")
            audio = next(
                (tf.parent / f"{uid}{ext}" for ext in (".flac", ".wav")
                 if (tf.parent / f"{uid}{ext}").is_file()),
                None,
            )  # fmt: skip
            if audio is None:
                raise KDSweepError(f"{tf}: line {n}: no audio file {uid}.flac/.wav beside it")
            out.append(
                Utterance(uid, audio, sf.info(str(audio)).duration, normalize_text(text),
                          uid.split("-")[0], split)
            )  # fmt: skip
    return out


def _read_sphinx_transcripts(path: Path) -> dict[str, str]:
    """Parse ``<s> words </s> (id)`` lines."""
    out = {}
    for n, line in enumerate(path.read_text().splitlines(), start=1):
        m = re.match(r"^\s*(?:<s>)?(.*?)(?:</s>)?\s*\(([^()\s]+)\)\s*$", line)
        if not m:
            if line.strip():
                raise KDSweepError(f"{path}: line {n}: expected '<s> words </s> (id)': {line!r}")
            continue
        out[m.group(2)] = normalize_text(m.group(1))
    return out


def load_cmu_clips(data_dir: str | Path = CMU_DATA_DIR) -> list[Utterance]:
    """Real recordings from Debian pocketsphinx-testdata, for out-of-domain evaluation.

    Five LibriVox "Sense and Sensibility" sentences (voice ``cmu-librivox``, split ``ood``) and
    five "cards" clips (voice ``cmu-cards``, split ``ood-cards``: matches the commands domain).
    """
    data_dir = Path(data_dir)
    sets = (
        ("librivox", "transcription", "cmu-librivox", "ood"),
        ("cards", "cards.transcription", "cmu-cards", "ood-cards"),
    )
    out = []
    for sub, trans_name, voice, split in sets:
        trans = data_dir / sub / trans_name
        if not trans.is_file():
            raise KDSweepError(
                f"data_dir: {trans} not found (apt-get install pocketsphinx-testdata)"
            )
        for uid, text in sorted(_read_sphinx_transcripts(trans).items()):
            audio = data_dir / sub / f"{uid}.wav"
            if not audio.is_file():
                raise KDSweepError(f"{trans}: id {uid}: audio file not found: {audio}")
            out.append(Utterance(f"{sub}-{uid}", audio, sf.info(str(audio)).duration, text,
                                 voice, split))  # fmt: skip
    return out


# --------------------------------------------------------------------------------------------
# Features
# --------------------------------------------------------------------------------------------


class LogMel(nn.Module):
    """80-bin log-mel filterbank, 25 ms window / 10 ms hop at 16 kHz, per-utterance CMVN."""

    def __init__(self, n_mels: int = 80, sample_rate: int = SAMPLE_RATE, eps: float = 1e-6):
        super().__init__()
        self.n_mels, self.sample_rate, self.eps = n_mels, sample_rate, eps
        win = int(0.025 * sample_rate)  # 400 samples
        hop = int(0.010 * sample_rate)  # 160 samples -> 100 frames/s
        self.mel = torchaudio.transforms.MelSpectrogram(
            sample_rate=sample_rate, n_fft=win, win_length=win, hop_length=hop, n_mels=n_mels
        )

    def config(self) -> dict[str, float]:
        """Settings that determine the features (part of the feature cache key)."""
        return {"n_mels": self.n_mels, "sample_rate": self.sample_rate, "eps": self.eps}

    def forward(self, wave: Tensor) -> Tensor:
        """wave [N] -> features [T, n_mels] with T = N // hop + 1."""
        # eps=1e-6 floors log power at -13.8 (about -60 dB below unit power): silence and digital
        # zeros stay finite without dominating the per-utterance statistics.
        feats = torch.log(self.mel(wave) + self.eps).transpose(0, 1)
        mean = feats.mean(dim=0, keepdim=True)
        # unbiased=False so a 1-frame clip gives std 0 (then clamped) instead of NaN
        std = feats.std(dim=0, keepdim=True, unbiased=False).clamp_min(1e-5)
        return (feats - mean) / std


class SpecAugment(nn.Module):
    """SpecAugment (frequency + time masks) on a batch [B, T, F]; identity in eval mode."""

    def __init__(
        self, freq_mask: int = 15, time_mask: int = 25, n_freq_masks: int = 2, n_time_masks: int = 2
    ):
        super().__init__()
        self.freq = nn.ModuleList(
            torchaudio.transforms.FrequencyMasking(freq_mask, iid_masks=True)
            for _ in range(n_freq_masks)
        )
        self.time = nn.ModuleList(
            torchaudio.transforms.TimeMasking(time_mask, iid_masks=True)
            for _ in range(n_time_masks)
        )

    def forward(self, feats: Tensor) -> Tensor:
        """Masked copy of ``feats``; masks fill with 0, the per-utterance mean after CMVN."""
        if not self.training:
            return feats
        x = feats.transpose(1, 2).unsqueeze(1)  # [B, 1, F, T] as torchaudio expects
        for m in (*self.freq, *self.time):
            x = m(x)
        return x.squeeze(1).transpose(1, 2)


@dataclass
class FeatureSet(torch.utils.data.Dataset):
    """Cached features: per-utterance log-mels [T, 80] and label ids, plus metadata."""

    ids: list[str]
    feats: list[Tensor]
    targets: list[Tensor]
    transcripts: list[str]
    voices: list[str]
    splits: list[str]
    lengths: list[int] = field(init=False)

    def __post_init__(self) -> None:
        self.lengths = [int(f.shape[0]) for f in self.feats]

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor]:
        return self.feats[i], self.targets[i]

    def select(self, split: str | Iterable[str]) -> FeatureSet:
        """Subset by split name(s), e.g. ``fs.select("train")``."""
        wanted = {split} if isinstance(split, str) else set(split)
        idx = [i for i, s in enumerate(self.splits) if s in wanted]
        fields = ("ids", "feats", "targets", "transcripts", "voices", "splits")
        return FeatureSet(*([getattr(self, a)[i] for i in idx] for a in fields))

    def batches(
        self, batch_size: int, shuffle: bool = True, seed: int = 0, pad_targets: bool = False
    ) -> Iterator[tuple[Tensor, Tensor, Tensor, Tensor]]:
        """Length-bucketed, collated batches (see ``bucket_batches`` and ``pad_collate``).

        Pass the epoch number as ``seed`` for a new order each epoch.
        """
        for _, batch in self.indexed_batches(batch_size, shuffle, seed, pad_targets):
            yield batch

    def indexed_batches(
        self, batch_size: int, shuffle: bool = False, seed: int = 0, pad_targets: bool = False
    ) -> Iterator[tuple[list[int], tuple[Tensor, Tensor, Tensor, Tensor]]]:
        """Like ``batches`` but yields (utterance indices, batch): for matching hypotheses to
        ``transcripts`` in evaluation (unshuffled batches are sorted by length)."""
        for idx in bucket_batches(self.lengths, batch_size, shuffle=shuffle, seed=seed):
            yield idx, pad_collate([self[i] for i in idx], pad_targets=pad_targets)


def _file_digest(path: Path) -> str:
    h = hashlib.sha1()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def featurize(
    utterances: Sequence[Utterance],
    cache_dir: str | Path,
    logmel: LogMel | None = None,
    vocab: CharVocab | None = None,
) -> FeatureSet:
    """Compute log-mel features once and cache them in ``cache_dir/feats-<hash>.pt``.

    The key hashes the audio bytes, transcripts, ids, splits and the feature settings, so a
    changed corpus or setting never reuses stale features.
    """
    if not utterances:
        raise KDSweepError("utterances: empty list, nothing to featurize")
    logmel = logmel or LogMel()
    vocab = vocab or CharVocab()
    h = hashlib.sha1(json.dumps({"v": FEATURE_VERSION, **logmel.config()}, sort_keys=True).encode())
    for u in utterances:
        if not Path(u.path).is_file():
            raise KDSweepError(f"utterance {u.id}: field 'path': audio file not found: {u.path}")
        h.update(f"{u.id}\t{u.transcript}\t{u.voice}\t{u.split}\t".encode())
        h.update(_file_digest(Path(u.path)).encode())
    cache = Path(cache_dir) / f"feats-{h.hexdigest()[:16]}.pt"

    if cache.exists():
        blob = torch.load(cache, weights_only=True)
    else:
        feats = []
        with torch.no_grad(), _torch_threads(1):
            for u in utterances:
                feats.append(logmel(read_audio(u.path, logmel.sample_rate)))
        lens = torch.tensor([0] + [f.shape[0] for f in feats])
        blob = {
            # float16 on disk halves the cache; after CMVN values are O(1), and fp16's ~1e-3
            # relative precision is far below the features' own noise. Loaded back as float32.
            "feats": torch.cat(feats).to(torch.float16),
            "offsets": torch.cumsum(lens, 0),
            "ids": [u.id for u in utterances],
            "transcripts": [u.transcript for u in utterances],
            "voices": [u.voice for u in utterances],
            "splits": [u.split for u in utterances],
        }
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_suffix(f".tmp{os.getpid()}")
        torch.save(blob, tmp)
        tmp.replace(cache)
    allf = blob["feats"].float()
    off = blob["offsets"].tolist()
    feats = [allf[off[i] : off[i + 1]] for i in range(len(off) - 1)]
    targets = [torch.tensor(vocab.encode(t), dtype=torch.long) for t in blob["transcripts"]]
    meta = blob["ids"], blob["transcripts"], blob["voices"], blob["splits"]
    return FeatureSet(meta[0], feats, targets, *meta[1:])


def pad_collate(
    batch: Sequence[tuple[Tensor, Tensor]], pad_targets: bool = False
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Collate (feat [T, F], target [L]) pairs.

    Returns feats [B, Tmax, F] (zero-padded), feat_lens [B], targets (concatenated 1-D, or
    [B, Lmax] zero-padded when ``pad_targets``) and target_lens [B]. Both target layouts are
    accepted by ``torch.nn.functional.ctc_loss``.
    """
    feats = [b[0] for b in batch]
    tgts = [b[1] for b in batch]
    feat_lens = torch.tensor([f.shape[0] for f in feats], dtype=torch.long)
    tgt_lens = torch.tensor([t.shape[0] for t in tgts], dtype=torch.long)
    x = nn.utils.rnn.pad_sequence(feats, batch_first=True)
    if pad_targets:
        y = nn.utils.rnn.pad_sequence(tgts, batch_first=True) if tgts else torch.zeros(0, 0)
    else:
        y = torch.cat(tgts) if tgts else torch.zeros(0, dtype=torch.long)
    return x, feat_lens, y.long(), tgt_lens


def bucket_batches(
    lengths: Sequence[int],
    batch_size: int,
    shuffle: bool = True,
    seed: int = 0,
    chunk_batches: int = 20,
) -> list[list[int]]:
    """Batches of indices with similar lengths: shuffle, cut into chunks of ``chunk_batches``
    batches, sort each chunk by length, split into batches, shuffle the batch order.

    Similar lengths mean little padding (faster LSTMs); chunking keeps batches random across
    epochs. Without ``shuffle`` the result is fully sorted by length (good for evaluation).
    """
    if batch_size < 1:
        raise KDSweepError(f"batch_size: must be >= 1, got {batch_size}")
    n = len(lengths)
    if not shuffle:
        order = sorted(range(n), key=lambda i: lengths[i])
        return [order[i : i + batch_size] for i in range(0, n, batch_size)]
    rng = np.random.default_rng(seed)
    idx = rng.permutation(n).tolist()
    chunk = batch_size * chunk_batches
    batches: list[list[int]] = []
    for c in range(0, n, chunk):
        part = sorted(idx[c : c + chunk], key=lambda i: lengths[i])
        batches += [part[i : i + batch_size] for i in range(0, len(part), batch_size)]
    order = rng.permutation(len(batches))
    return [batches[i] for i in order]
