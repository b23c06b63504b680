"""Shared fixtures (a small real data config, a session-wide cache with its teacher), the TTS
skip mark, the tiny ASR preset, and the rule that every test carries one cost marker."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parents[1]

# Small but real: 40 fortunes per topic (192/24/24), a MiniLM teacher fine-tuned 3 quick epochs,
# a 3-layer student initialized from teacher layers. A trial epoch takes ~2 s on 2 cores.
SMALL_TEXT = {
    "task": "text",
    "per_class": 40,
    "max_len": 32,
    "teacher_epochs": 3,
    "teacher_lr": 2e-4,
    "student": "L3-H384",
    "student_init": "teacher",
    "lr": 2e-4,
    "batch_size": 16,
    "epochs": 2,
}

HAS_TTS = shutil.which("espeak-ng") is not None and shutil.which("flite") is not None
needs_tts = pytest.mark.skipif(not HAS_TTS, reason="espeak-ng/flite not installed")

# ~40 synthetic utterances (32/4/4), a 1-layer 32-unit student, tiny teachers: seconds per trial.
SMALL_ASR = {
    "n_utterances": 40,
    "layers": 1,
    "hidden": 32,
    "teacher_layers": 2,
    "teacher_hidden": 32,
    "teacher_epochs": 2,
    "epochs": 2,
    "batch_size": 8,
    "beam_width": 8,
    "threads": 1,
}


# Registered in pyproject.toml; plain `pytest` (= `make test-fast`) runs unit + trial.
COST_MARKERS = ("unit", "trial", "e2e", "infra")


@pytest.hookimpl(tryfirst=True)  # before `-m` deselects: every collected test is checked
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Stop the run if a test has no cost marker or more than one (module + test both count)."""
    bad = []
    for item in items:
        costs = sorted({m.name for m in item.iter_markers() if m.name in COST_MARKERS})
        if len(costs) != 1:
            bad.append(f"{item.nodeid} ({', '.join(costs) or 'none'})")
    if bad:
        raise pytest.UsageError(
            f"each test needs exactly one cost marker of {', '.join(COST_MARKERS)}"
            " (pytestmark = pytest.mark.<cost> or a decorator); got: " + "; ".join(bad)
        )


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory) -> Path:
    """One cache (tokens + teacher) for the whole session: the teacher is trained once."""
    return tmp_path_factory.mktemp("kdsweep-cache")


@pytest.fixture(scope="session")
def small_text(cache_dir) -> dict:
    """The small text config with its teacher already in the store."""
    from trainables.text.config import TextConfig
    from trainables.text.loop import prepare_text

    cfg = {**SMALL_TEXT, "cache_dir": str(cache_dir)}
    prepare_text(TextConfig.from_dict(cfg), log=lambda m: None)
    return cfg
