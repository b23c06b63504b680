"""The Debian ``fortunes`` files as records: one reader for the text and the speech data.

A category file (``/usr/share/games/fortunes/<category>``) holds records separated by lines
that are just ``%``. One policy for every consumer: files are read as UTF-8 (Debian ships them
so; an undecodable byte becomes U+FFFD), the ``.dat``/``.u8`` index files are not categories,
and ``KDSWEEP_FORTUNES_DIR`` overrides the folder. A record offers two views: ``text`` (every
line, as text classification uses it) and ``prose`` (without nroff overstrike and attribution
lines, as speech synthesis and the LM corpus use it).
"""

from __future__ import annotations

import os
import re
from collections.abc import Collection, Iterator
from dataclasses import dataclass
from pathlib import Path

from kdsweep.errors import KDSweepError

FORTUNES_DIR = Path(os.environ.get("KDSWEEP_FORTUNES_DIR", "/usr/share/games/fortunes"))
ENCODING = "utf-8"
_OVERSTRIKE = re.compile(r".\x08")  # nroff bold/underline: "_\x08a" or "a\x08a" -> "a"


@dataclass(frozen=True)
class Fortune:
    """One record: its category (the file name) and its raw lines."""

    category: str
    lines: tuple[str, ...]

    @property
    def text(self) -> str:
        """All non-blank lines, stripped, joined by single spaces (attributions included)."""
        return " ".join(s.strip() for s in self.lines if s.strip())

    @property
    def prose(self) -> str:
        """Like ``text`` but without overstrike and without "-- Author" attribution lines."""
        plain = (_OVERSTRIKE.sub("", s).strip() for s in self.lines)
        return " ".join(s for s in plain if s and not s.startswith("--"))


def check_dir(directory: Path, field: str) -> Path:
    """``directory`` if it is a folder, else a clear error naming ``field``."""
    if not directory.is_dir():
        raise KDSweepError(
            f"{field}: {directory} not found; install the Debian package `fortunes` "
            "(make setup does) or set KDSWEEP_FORTUNES_DIR"
        )
    return directory


def categories(directory: Path) -> list[str]:
    """Sorted category names in ``directory`` (plain files without a suffix)."""
    return sorted(f.name for f in directory.iterdir() if f.is_file() and not f.suffix)


def read_file(path: Path) -> list[Fortune]:
    """The records of one category file, in file order; blank records are dropped."""
    records: list[Fortune] = []
    current: list[str] = []
    for line in path.read_text(encoding=ENCODING, errors="replace").splitlines():
        if line.strip() == "%":
            records.append(Fortune(path.name, tuple(current)))
            current = []
        else:
            current.append(line)
    records.append(Fortune(path.name, tuple(current)))
    return [r for r in records if r.text]


def fortune_records(
    directory: Path = FORTUNES_DIR, skip: Collection[str] = (), field: str = "fortunes_dir"
) -> Iterator[Fortune]:
    """Every record of every category in ``directory`` (sorted by category), minus ``skip``."""
    check_dir(directory, field)
    for name in categories(directory):
        if name not in skip:
            yield from read_file(directory / name)
