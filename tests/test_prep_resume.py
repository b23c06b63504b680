"""Preparation progress output and per-epoch resume pieces (issue 17 items 4-5)."""

import io
import re

import pytest
import torch

from kdsweep.epoch_resume import EpochResume
from kdsweep.progress import Progress

pytestmark = pytest.mark.unit

CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")  # anything but tab and newline


def _run_bar(total: int) -> str:
    out = io.StringIO()
    t = iter(float(i) for i in range(10_000))
    with Progress(
        total=total, desc="features", every_s=5.0, stream=out, clock=lambda: next(t)
    ) as bar:
        for _ in range(total):
            bar.update(1, info="loss 0.5")
    return out.getvalue()


def test_progress_to_a_file_is_plain_lines_with_eta(monkeypatch):
    monkeypatch.delenv("KDSWEEP_QUIET", raising=False)
    text = _run_bar(20)
    assert text.strip(), "a file gets progress lines"
    assert not CONTROL.search(text), repr(text)
    assert "features" in text and "20/20" in text


def test_progress_is_silent_under_kdsweep_quiet(monkeypatch):
    monkeypatch.setenv("KDSWEEP_QUIET", "1")
    assert _run_bar(20) == ""


def test_epoch_resume_round_trip(tmp_path):
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    want = {k: v.clone() for k, v in model.state_dict().items()}
    er = EpochResume(tmp_path / "resume")
    assert er.load(model) is None
    er.save(1, model, {"opt": "x"})
    torch.nn.init.zeros_(model.weight)
    got = er.load(model)
    assert got is not None
    for k, v in model.state_dict().items():
        assert torch.equal(v, want[k]), k


def test_epoch_resume_skips_a_truncated_newest_epoch(tmp_path):
    model = torch.nn.Linear(3, 2)
    er = EpochResume(tmp_path / "resume")
    er.save(1, model, {})
    er.save(2, model, {})
    (tmp_path / "resume" / "epoch-2" / "model.safetensors").write_bytes(b"trunc")
    state = er.load(model)
    assert state is not None and state["epoch"] == 1
