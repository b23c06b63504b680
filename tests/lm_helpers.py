"""The tiny LM teacher and the small LM config the LM tests share (built once per session)."""

from __future__ import annotations

from pathlib import Path

import pytest

# A 4-layer random LLaMA (vocab 512) on 120 fortunes: 32-token blocks, 16 train / 4 dev blocks.
SMALL_LM = {
    "task": "lm",
    "max_docs": 120,
    "block_size": 32,
    "data_subset": 16,
    "eval_subset": 4,
    "topk": 8,
    "student": "L1-H32-A2",
    "epochs": 2,
    "batch_size": 8,
    "lr": 3e-3,
    "threads": 1,
    "continuation_tokens": 4,
}


@pytest.fixture(scope="session")
def tiny_lm(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """{'teacher': folder of the tiny teacher, 'cache_dir': a session cache} + SMALL_LM."""
    from kdsweep.lm.tiny import build_tiny_teacher

    root = tmp_path_factory.mktemp("tiny-lm")
    teacher = build_tiny_teacher(Path(root) / "teacher", max_positions=96)
    return {**SMALL_LM, "teacher": str(teacher), "cache_dir": str(Path(root) / "cache")}
