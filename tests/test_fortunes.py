"""The shared fortunes reader: record splitting, its two views, one encoding, clear errors."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from kdsweep.errors import KDSweepError
from kdsweep.speech.data import fortune_records as speech_records
from kdsweep.text import fortunes

pytestmark = pytest.mark.unit

PEOPLE = (
    "First line of one\n  second line  \n\n%\n"
    "Be _\x08b_\x08o_\x08l_\x08d, it said.\n\t-- Some Author\n%\n"
    "\n  \n%\n"  # a blank record is dropped
    "Caf\u00e9 au lait\n"  # last record has no trailing %
)


def _dir(tmp_path: Path) -> Path:
    d = tmp_path / "fortunes"
    d.mkdir()
    (d / "people").write_text(PEOPLE, encoding="utf-8")
    (d / "people.dat").write_bytes(b"\x00\x01")  # strfile index: not a category
    (d / "art").write_text("  /\\_/\\\n%\n", encoding="utf-8")
    return d


def test_read_file_splits_records_and_keeps_two_views(tmp_path: Path) -> None:
    recs = fortunes.read_file(_dir(tmp_path) / "people")
    assert [r.category for r in recs] == ["people"] * 3
    assert [r.text for r in recs] == [
        "First line of one second line",
        "Be _\x08b_\x08o_\x08l_\x08d, it said. -- Some Author",
        "Caf\u00e9 au lait",
    ]
    assert [r.prose for r in recs] == [
        "First line of one second line",
        "Be bold, it said.",
        "Caf\u00e9 au lait",
    ]


def test_fortune_records_sorted_categories_skip_and_index_files(tmp_path: Path) -> None:
    d = _dir(tmp_path)
    assert fortunes.categories(d) == ["art", "people"]
    assert [r.category for r in fortunes.fortune_records(d)] == ["art"] + ["people"] * 3
    assert {r.category for r in fortunes.fortune_records(d, skip={"art"})} == {"people"}


def test_speech_side_reads_prose_and_skips_art(tmp_path: Path) -> None:
    assert list(speech_records(_dir(tmp_path))) == [
        ("people", "First line of one second line"),
        ("people", "Be bold, it said."),
        ("people", "Caf\u00e9 au lait"),
    ]


def test_undecodable_bytes_are_replaced_not_fatal(tmp_path: Path) -> None:
    (tmp_path / "odd").write_bytes(b"bad \xff byte\n")
    assert fortunes.read_file(tmp_path / "odd")[0].text == "bad \ufffd byte"


def test_missing_directory_names_the_field_and_the_override(tmp_path: Path) -> None:
    with pytest.raises(KDSweepError, match="fortunes_dir: .*nope not found.*KDSWEEP_FORTUNES_DIR"):
        list(fortunes.fortune_records(tmp_path / "nope"))
    with pytest.raises(KDSweepError, match="fortunes_dir: .*not found"):
        list(speech_records(tmp_path / "nope"))


def test_env_var_overrides_the_folder_for_text_and_speech(tmp_path: Path) -> None:
    from kdsweep.speech import data as speech
    from kdsweep.text import data as text

    assert text.FORTUNES_DIR is fortunes.FORTUNES_DIR is speech.FORTUNES_DIR
    code = "from kdsweep.text import fortunes; print(fortunes.FORTUNES_DIR)"
    env = {**os.environ, "KDSWEEP_FORTUNES_DIR": str(tmp_path)}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.stdout.strip() == str(tmp_path), out.stderr
