"""Keep bench/ from rotting: import every benchmark and run its tiniest piece (no timings).

The real benchmarks (`python bench/run_all.py`) take minutes and print ratios; here each module
is imported and its building blocks run on a few examples of the session's small config.
"""

from __future__ import annotations

import importlib
import json
import re
import shutil
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.infra

BENCH = Path(__file__).resolve().parents[1] / "bench"
NAMES = ["common", "kd_overhead", "memory", "orchestration", "asha_vs_grid", "peer_hf_trainer"]


def _import(name: str):
    if str(BENCH) not in sys.path:
        sys.path.insert(0, str(BENCH))
    return importlib.import_module(name)


@pytest.fixture()
def tiny(small_text) -> dict:
    """The session's small data/teacher; a tiny L2-H128 soft-KD trial (1 epoch, 32 examples)."""
    return {
        **small_text,
        "condition": "soft",
        "student": "L2-H128",
        "student_init": "random",
        "lr": 1e-3,
        "epochs": 1,
        "data_subset": 32,
        "eval_subset": 24,
        "attribution_examples": 0,
        "alpha": 0.9,
        "temperature": 2.0,
    }


def test_bench_modules_import_and_run_tiny(tiny, tmp_path, capsys, monkeypatch):
    mods = {n: _import(n) for n in [*NAMES, "gpu", "run_all"]}
    common = mods["common"]
    monkeypatch.setattr(common, "setup_env", lambda: None)  # keep this process's env as is

    # kd_overhead: the cached soft trial; memory: the naive trial (teacher in the loop) + RSS
    res = mods["kd_overhead"].run_variant("soft", tiny)
    assert res["epoch_seconds"] > 0 and 0 <= res["dev_accuracy"] <= 1
    mods["memory"].child("naive", tiny)
    assert float(capsys.readouterr().out.split("PEAK_RSS_MB")[1].split()[0]) > 0

    # orchestration: one slot of the plain loop
    mods["orchestration"].plain_worker(tiny, [4.0], tmp_path / "plain.json")
    assert json.loads((tmp_path / "plain.json").read_text())[0]["temperature"] == 4.0

    # asha_vs_grid: its grid YAML + the sweep overrides validate against the typed configs
    from driver.space import load_space, parse_overrides

    am = mods["asha_vs_grid"]
    space_file = am.write_space(tmp_path / "grid.yaml", am.TEMPS, am.ALPHAS, 1, 3)
    overrides = parse_overrides(common.sweep_overrides(tiny, skip=("alpha",)))
    space = load_space(str(space_file), overrides)
    assert space.grid_size() == 16 and space.asha["reduction_factor"] == 3

    # peer_hf_trainer: the DistillationTrainer (teacher forward in compute_loss) trains 1 epoch
    trainer = mods["peer_hf_trainer"].make_trainer(tiny, tmp_path)
    trainer.train()
    assert 0 <= trainer.evaluate()["eval_accuracy"] <= 1

    # gpu: skips cleanly without CUDA; run_all's table
    if not mods["gpu"].cuda_available():
        rows = mods["gpu"].run(quick=True)
        assert rows[0].detail == mods["gpu"].SKIP
    table = common.format_table(
        [common.Result("kd_overhead", "soft / independent", 1.02, "<= 1.10x", True)]
    )
    assert "PASS" in table and "1.02x" in table


@pytest.mark.infra
@pytest.mark.skipif(
    shutil.which("espeak-ng") is None or shutil.which("flite") is None,
    reason="espeak-ng/flite not installed",
)
def test_scale_quick_measures_private_memory_per_condition(
    cache_dir, tmp_path, capsys, monkeypatch
):
    """bench/scale.py --quick (speech, 1x/4x): every condition trained in a child, its memory
    sampled, and the last line in the agreed shape; the text trial configs validate."""
    scale = _import("scale")
    common = _import("common")
    monkeypatch.setattr(common, "setup_env", lambda: None)
    monkeypatch.setattr(common, "BENCH_HOME", str(tmp_path))
    monkeypatch.setenv("KDSWEEP_HOME", str(cache_dir))

    scale.main(["--quick", "--tasks", "asr", "--json", str(tmp_path / "scale.json")])
    out = capsys.readouterr().out.strip().splitlines()
    m = re.fullmatch(r"scale: rss_ratio=([0-9.]+) time_ratio=([0-9.]+)", out[-1])
    assert m and float(m[1]) > 0 and float(m[2]) > 0
    for cond in scale.CONDITIONS["asr"]:
        assert any(line.startswith(f"  asr/{cond} 4x/1x: rss_anon") for line in out)
    rows = json.loads((tmp_path / "scale.json").read_text())
    assert [r["passed"] is not None for r in rows] == [True, True]

    from trainables.registry import config_for

    configs = scale.trial_configs("text", True)
    assert {c["cfg"]["condition"] for c in configs} == set(scale.CONDITIONS["text"])
    subsets = sorted({config_for(c["cfg"]).data_subset for c in configs})
    assert subsets == [scale.TEXT_BASE["quick"] * k for k in scale.QUICK_SCALES]
