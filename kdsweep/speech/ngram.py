"""The n-gram LM for beam search: the user's own (`lm=<file>`) or kdsweep's built-in trigram.

`lm=` accepts
- an ARPA file (`.arpa`, or any file whose first non-blank line is ``\\data\\``): checked in full
  (header counts against the sections, a log-prob and n words on every line) so a corrupt file
  is one clear error before any trial, not a crash inside the decoder;
- a KenLM binary (`lmplz` + `build_binary` output): recognised by its magic header;
- any other file: plain text, one sentence per line, from which an ARPA of order `lm_order` is
  built with kdsweep's own writer (``kdsweep.speech.decoding.write_arpa``), cached by content.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from kdsweep.errors import KDSweepError
from kdsweep.filelock import locked
from kdsweep.speech.decoding import KENLM_MAGIC, write_arpa

LM_TEXT_VERSION = 1


def lm_kind(path: Path) -> str:
    """'arpa', 'kenlm' (binary) or 'text', from the file's first bytes."""
    with open(path, "rb") as f:
        head = f.read(4096)
    if head.startswith(KENLM_MAGIC):
        return "kenlm"
    if path.suffix == ".arpa" or head.lstrip().startswith(b"\\data\\"):
        return "arpa"
    if b"\0" in head:
        raise KDSweepError(f"field 'lm': {path} is a binary file but not a KenLM binary")
    return "text"


def check_arpa(path: Path) -> int:
    """Validate an ARPA file; returns its order. Raises KDSweepError naming file and line."""
    declared: dict[int, int] = {}
    seen: dict[int, int] = {}
    section = None  # "data" | n | "end"
    with open(path, encoding="utf-8", errors="replace") as f:
        for lineno, raw in enumerate(f, 1):
            line = raw.strip()
            where = f"field 'lm': {path} line {lineno}"
            if not line:
                continue
            if line == "\\data\\":
                section = "data"
            elif line == "\\end\\":
                section = "end"
                break
            elif line.startswith("\\") and line.endswith("-grams:"):
                try:
                    section = int(line[1 : -len("-grams:")])
                except ValueError:
                    raise KDSweepError(f"{where}: bad section header {line!r}") from None
                if section not in declared:
                    raise KDSweepError(f"{where}: section {line!r} not declared in \\data\\")
                seen[section] = 0
            elif section == "data":
                if not line.startswith("ngram ") or "=" not in line:
                    raise KDSweepError(f"{where}: expected 'ngram N=count', got {line[:60]!r}")
                n, count = line[len("ngram ") :].split("=", 1)
                declared[int(n)] = int(count)
            elif isinstance(section, int):
                fields = line.split("\t") if "\t" in line else line.split()
                try:
                    float(fields[0])
                except ValueError:
                    raise KDSweepError(f"{where}: {fields[0]!r} is not a log-probability") from None
                words = fields[1].split() if "\t" in line else fields[1 : 1 + section]
                if len(words) != section:
                    raise KDSweepError(f"{where}: a {section}-gram line needs {section} word(s)")
                seen[section] += 1
            elif section is None:
                raise KDSweepError(f"{where}: text before \\data\\ (KenLM rejects it)")
    if section != "end":
        raise KDSweepError(f"field 'lm': {path}: no \\end\\ line (truncated?)")
    if not declared or 1 not in declared:
        raise KDSweepError(f"field 'lm': {path}: no unigrams declared in \\data\\")
    for n, count in declared.items():
        if seen.get(n) != count:
            raise KDSweepError(
                f"field 'lm': {path}: \\data\\ declares {count} {n}-grams, the file has "
                f"{seen.get(n, 0)} (truncated or edited?)"
            )
    return max(declared)


def resolve_lm(spec: str, order: int, cache: Path) -> Path:
    """The LM file the decoder loads for `lm=<spec>` (an ARPA/KenLM path, or a built ARPA)."""
    path = Path(spec).expanduser()
    if not path.is_file():
        raise KDSweepError(f"field 'lm': file not found: {path}")
    kind = lm_kind(path)
    if kind == "arpa":
        check_arpa(path)
        return path.resolve()
    if kind == "kenlm":
        return path.resolve()
    if order < 1 or order > 6:
        raise KDSweepError(f"field 'lm_order': must be 1..6, got {order}")
    data = path.read_bytes()
    digest = hashlib.sha256(data + f"|{order}|{LM_TEXT_VERSION}".encode()).hexdigest()[:12]
    out = cache / "speech" / "lm" / f"user-{path.stem}-{order}gram-{digest}.arpa"
    if out.is_file():
        return out
    with locked(out.with_name(out.name + ".lock")):
        if not out.is_file():
            from kdsweep.speech.data import normalize_text

            lines = data.decode("utf-8", errors="replace").splitlines()
            sentences = [s for s in (normalize_text(x) for x in lines) if s]
            if not sentences:
                raise KDSweepError(f"field 'lm': {path} has no sentences to build an LM from")
            tmp = out.with_name(f".{out.name}.tmp")
            write_arpa(sentences, tmp, order=order)
            tmp.replace(out)
    return out
