"""`--gpus-per-trial auto` and the check of an explicit share, through the CLI, on a simulated
device: the probe's result and the card's memory are given, Ray is never started."""

from __future__ import annotations

import os

import pytest
import torch

import driver.packing as packing
import driver.run as run_mod
from driver.cli import build_parser, build_plan, main
from driver.plan import max_failures
from driver.space import load_space
from driver.tuner import resolve_resources
from kdsweep.errors import KDSweepError

pytestmark = pytest.mark.unit

GiB = 2**30


class Stop(Exception):
    """Raised where the sweep would start Ray: the test has seen what it needs."""


@pytest.fixture
def sweep(monkeypatch, tmp_path):
    """run(argv, gpus=1, peak=..., free=..., total=...) -> (res handed to Ray, probes, out)."""
    seen: dict = {"probes": []}

    def fake_fit(plan, ray, *a, **k):
        seen["res"] = ray.res
        raise Stop

    def fake_measure(config):
        seen["probes"].append(config)
        return seen["memory"]

    def no_ray(*a, **k):
        raise AssertionError("Ray was started")

    monkeypatch.setattr(run_mod, "prepare", lambda space: {})
    monkeypatch.setattr(run_mod, "open_journal", lambda *a, **k: (None, None))
    monkeypatch.setattr(run_mod, "fit", fake_fit)
    monkeypatch.setattr(run_mod, "init_ray", no_ray)
    monkeypatch.setattr(run_mod.ray_auth, "configure", lambda address: None)
    monkeypatch.setattr(packing, "measure", fake_measure)
    monkeypatch.setattr(os, "cpu_count", lambda: 16)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)

    def run(*argv: str, gpus: int = 1, peak=2 * GiB, free=24 * GiB, total=24 * GiB):
        monkeypatch.setattr(torch.cuda, "device_count", lambda: gpus)
        seen["memory"] = (peak, free, total)
        seen.pop("res", None)
        with pytest.raises(Stop):
            main("temperature", None, [*argv, "--storage", str(tmp_path / "runs")])
        return seen["res"], seen["probes"]

    return run


def test_auto_picks_as_many_trials_as_fit(sweep, capsys):
    # 24 GiB card, 10 % margin: 21.6 GiB usable / 6 GiB a trial = 3 trials at a time
    res, probes = sweep("--gpus-per-trial", "auto", peak=6 * GiB)
    out = capsys.readouterr().out
    assert "[kdsweep] 3 trials x 6.0 GiB on a 24 GiB card: --gpus-per-trial 0.3333" in out
    assert res["gpu"] == pytest.approx(0.3333) and res["cpu"] == 1.0
    assert len(probes) == 1 and probes[0]["batch_size"] == 32  # the trial's own batch
    assert probes[0]["task"] == "text" and probes[0]["condition"] == "soft"


def test_auto_is_capped_by_the_trials_of_the_sweep(sweep, capsys):
    res, _ = sweep("--gpus-per-trial", "auto", peak=1 * GiB)  # 21 would fit; 4 trials exist
    assert res["gpu"] == 0.25
    assert "4 trials x 1.0 GiB on a 24 GiB card: --gpus-per-trial 0.25" in capsys.readouterr().out


def test_explicit_share_that_fits_is_kept(sweep, capsys):
    res, probes = sweep("--gpus-per-trial", "0.25", peak=5 * GiB)
    assert res["gpu"] == 0.25 and len(probes) == 1
    assert "4 trial(s) x 5.0 GiB fit the card at --gpus-per-trial 0.25" in capsys.readouterr().out


def test_explicit_share_that_cannot_fit_is_one_error_line_before_ray(sweep, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        sweep("--gpus-per-trial", "0.25", peak=8 * GiB)  # 4 x 8 GiB > 21.6 GiB usable
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("error: --gpus-per-trial 0.25: 4 trial(s)")
    assert "--gpus-per-trial auto" in err
    assert not (tmp_path / "runs").exists()  # nothing written


def test_auto_when_not_even_one_trial_fits(sweep, capsys):
    with pytest.raises(SystemExit) as e:
        sweep("--gpus-per-trial", "auto", peak=30 * GiB)
    assert e.value.code == 2
    assert "one trial needs 30.0 GiB" in capsys.readouterr().err


def test_no_gpu_falls_back_to_cpu_in_one_line(sweep, capsys):
    for flag in ("auto", "0.5"):
        res, probes = sweep("--gpus-per-trial", flag, gpus=0)
        assert res["gpu"] == 0.0 and probes == []  # nothing to measure
        assert f"no GPU found: running trials on CPU (asked for gpu={flag}" in (
            capsys.readouterr().out
        )


def _args(*argv: str):
    return build_parser("temperature", None).parse_args(list(argv))


def _plan(*argv: str):
    return build_plan("temperature", _args(*argv))


def test_flag_values(monkeypatch, capsys):
    assert _args("--gpus-per-trial", "auto").gpus_per_trial == "auto"
    assert _args("--gpus-per-trial", "0.25").gpus_per_trial == 0.25
    assert _args("--gpus-per-trial", "2").gpus_per_trial == 2.0
    with pytest.raises(SystemExit):
        _args("--gpus-per-trial", "half")
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    for bad in ("1.5", "-1"):
        with pytest.raises(KDSweepError, match="gpu must be auto, a share <= 1 or whole GPUs"):
            resolve_resources(_plan("--gpus-per-trial", bad))
    assert resolve_resources(_plan("--gpus-per-trial", "auto"))["gpu"] == "auto"
    # On a cluster the driver cannot measure the nodes' cards: one GPU per trial, said once.
    res = resolve_resources(_plan("--gpus-per-trial", "auto", "--address", "h:6379"))
    assert res["gpu"] == 1.0 and "auto on a cluster" in capsys.readouterr().out


def test_probe_config_is_the_heaviest_trial():
    space = load_space("temperature")
    space.dists["batch_size"] = ("grid", [8, 64, 16])
    space.dists["student"] = ("grid", ["L4-H256", "L2-H128"])
    space.conditions = ["soft", "attention"]
    cfg = packing.probe_config(space)
    assert cfg["batch_size"] == 64 and cfg["student"] == "L4-H256"
    assert cfg["condition"] == "attention"  # reads attention maps: more memory than soft KD


def test_retries_allow_every_halving_of_the_batch():
    space = load_space("temperature")  # batch_size 32: 32 -> 16 -> 8 -> 4 -> 2 -> 1
    assert max_failures(space) == 1 + 5
    space.dists["batch_size"] = ("grid", [8, 64])
    assert max_failures(space) == 1 + 6
