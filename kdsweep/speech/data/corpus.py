"""Speech corpora on disk: the manifest format, user manifests, LibriSpeech folders, CMU clips.

Every loader returns a list of `Utterance` rows, validated with one clear error per bad row.
"""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass
from pathlib import Path

import soundfile as sf

from kdsweep.errors import KDSweepError
from kdsweep.speech.data.text import CharVocab, normalize_text

MANIFEST_COLUMNS = ("id", "path", "seconds", "transcript", "voice", "split")
CMU_DATA_DIR = Path("/usr/share/pocketsphinx/test/data")


@dataclass(frozen=True)
class Utterance:
    """One manifest row; ``path`` is absolute, ``seconds`` is the audio duration."""

    id: str
    path: Path
    seconds: float
    transcript: str
    voice: str
    split: str


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
