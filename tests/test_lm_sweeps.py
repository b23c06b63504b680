"""LM sweeps through their public entry points on the tiny teacher: seeds, confirm, report,
resume; every shipped LM space validates."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from sweep_helpers import ROOT, run_sweep_script, sweep_env

from driver.space import load_space
from tests.lm_helpers import tiny_lm  # noqa: F401 - fixture


@pytest.mark.unit
def test_lm_spaces_validate():
    for name in ("lm_divergence", "lm_compression", "lm_data"):
        space = load_space(name)
        assert space.task == "lm" and space.conditions
    assert load_space("lm_divergence").grid_size() == 8  # 4 divergences x 2 temperatures
    assert load_space("lm_data").conditions == ["independent", "kd", "seqkd", "on_policy"]


def _rows(path: Path) -> list[dict]:
    import csv

    with path.open() as fh:
        return list(csv.DictReader(fh))


def _common(tiny: dict) -> list[str]:
    return [f"teacher={tiny['teacher']}", "max_docs=120"]  # overrides first: argparse


@pytest.mark.e2e
def test_divergence_smoke_with_seeds_confirm_report_and_rerun(tmp_path, tiny_lm):  # noqa: F811
    cache = tmp_path / "cache"
    args = [*_common(tiny_lm), "divergence={grid: [forward_kl, reverse_kl]}", "temperature=1",
            "--quiet", "--seeds", "2", "--confirm", "1", "--confirm-seeds", "2"]  # fmt: skip
    res = run_sweep_script("lm_divergence", tmp_path, cache, *args, timeout=2400)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "bytes/token" in res.stdout and "[baseline]" in res.stdout
    sweep = tmp_path / "runs" / "lm_divergence-lm-fortunes-smoke"
    rows = _rows(sweep / "trials.csv")
    assert len(rows) == 4 and {r["status"] for r in rows} == {"finished"}
    assert json.loads((sweep / "best.json").read_text())["test"]["test_perplexity"] > 1
    assert "independent" in (sweep / "confirm.md").read_text()
    report = run_report(tmp_path, "lm_divergence-lm-fortunes-smoke")
    assert report.returncode == 0, report.stderr[-2000:]
    text = next((tmp_path / "runs").rglob("report.md")).read_text()
    assert "perplexity" in text
    # the same command again: nothing left to run (resumed / reused, no new trial)
    again = run_sweep_script("lm_divergence", tmp_path, cache, *args, timeout=2400)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "reused" in again.stdout


def run_report(tmp: Path, sweep: str):

    return subprocess.run(
        [
            sys.executable,
            str(ROOT / "sweeps" / "report.py"),
            sweep,
            "--mlflow-uri",
            f"sqlite:///{tmp / 'mlruns.db'}",
            "--out",
            str(tmp / "runs" / sweep / "report"),
        ],  # fmt: skip
        env=sweep_env(tmp / "cache"),
        capture_output=True,
        text=True,
        timeout=600,
        cwd=tmp,
    )


@pytest.mark.e2e
def test_data_and_compression_smoke(tmp_path, tiny_lm):  # noqa: F811
    cache = tmp_path / "cache"
    res = run_sweep_script("lm_data", tmp_path, cache, *_common(tiny_lm), "prompt_tokens=8",
                           "new_tokens=8", "--quiet", timeout=2400)  # fmt: skip
    assert res.returncode == 0, res.stderr[-3000:]
    rows = _rows(tmp_path / "runs" / "lm_data-lm-fortunes-smoke" / "trials.csv")
    assert {r["condition"] for r in rows} == {"independent", "kd", "seqkd", "on_policy"}
    assert {r["status"] for r in rows} == {"finished"}
    res = run_sweep_script("lm_compression", tmp_path, cache, *_common(tiny_lm),
                           "student_layers={grid: [1, 2]}", "--quiet", timeout=2400)  # fmt: skip
    assert res.returncode == 0, res.stderr[-3000:]
    rows = _rows(tmp_path / "runs" / "lm_compression-lm-fortunes-smoke" / "trials.csv")
    assert len(rows) == 4 and {r["status"] for r in rows} == {"finished"}


@pytest.mark.unit
@pytest.mark.parametrize("name", ["lm_divergence", "lm_compression", "lm_data"])
def test_smoke_preset_fits_every_lm_space(name):
    from driver.cli import build_parser, space_from_args
    from driver.plan import SMOKE_PRESET, USER

    args = build_parser(name, None).parse_args(["--smoke"])
    space, sources = space_from_args(name, args)
    assert space.task == "lm"
    assert space.fixed["data_subset"] == 64 and space.fixed["block_size"] == 32
    assert space.fixed["epochs"] == 2
    assert sources["block_size"] == sources["data_subset"] == SMOKE_PRESET
    # a size the user gives wins over the preset, even where the YAML fixes it
    args = build_parser(name, None).parse_args(["--smoke", "block_size=48"])
    space, sources = space_from_args(name, args)
    assert space.fixed["block_size"] == 48 and sources["block_size"] == USER
