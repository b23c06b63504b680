"""The rung decision of GroupASHA over plain numbers (driver/rungs.py) and its saved state
(driver/group_asha_state.py): no Ray, no trials, no controller."""

from __future__ import annotations

import pickle
import subprocess
import sys
from pathlib import Path

import pytest

from driver import group_asha_state
from driver.group_asha_state import SavedState
from driver.rungs import Rungs, RungState

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[1]


def rungs(**kw) -> Rungs:
    return Rungs(**{"max_t": 8, "grace_period": 1, "reduction_factor": 2, "num_seeds": 2, **kw})


def seeds(r: Rungs, key: str, *values: float, t: float = 1, floor: float | None = None):
    """Group `key`'s seeds (trial ids key0, key1, ...) report `values` at time `t`."""
    for i, v in enumerate(values):
        r.add(f"{key}{i}", key)
        r.observe(f"{key}{i}", t, v, floor)


def test_the_decision_imports_no_ray():
    code = "import sys, driver.rungs, driver.group_asha_state; print('ray' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert out.stdout.strip() == "False", out.stderr[-2000:]


def test_rungs_as_in_ashas_bracket():
    assert rungs().milestones == [1, 2, 4]
    assert rungs(grace_period=2, reduction_factor=3, max_t=20).milestones == [2, 6, 18]
    with pytest.raises(ValueError, match="grace_period"):
        rungs(grace_period=9)


def test_a_group_is_judged_once_all_its_seeds_passed_the_rung_and_stopped_as_one():
    r = rungs()
    seeds(r, "a", 0.8, 0.7)
    assert r.judge_ready("a") is False  # first group at rung 1: kept
    r.add("b0", "b")
    r.add("b1", "b")
    r.observe("b0", 1, 0.5, None)
    assert r.judge_ready("b") is False and r.state.decided["b"] == []  # b1 not there yet
    r.observe("b1", 1, 0.4, None)
    assert r.judge_ready("b") is True  # mean 0.45 < cut 0.75
    assert r.reason_for("b0") == r.reason_for("b1")
    assert r.reason_for("b0") == (
        "rung 1 (epoch 1): group mean best 0.4500 over 2 seed(s) < cut 0.7500 (2 groups)"
    )
    assert r.state.history[-1] | {"reason": ""} == {
        "group": "b", "rung": 1, "milestone": 1.0, "value": pytest.approx(0.45),
        "cut": pytest.approx(0.75), "groups": 2, "floor": None, "action": "stop", "reason": "",
    }  # fmt: skip
    assert r.reason_for("a0") == "running"


def test_the_groups_mean_decides_not_its_best_seed():
    r = rungs()
    seeds(r, "a", 0.6, 0.6)
    r.judge_ready("a")
    seeds(r, "b", 0.9, 0.2)  # one seed above the cut, the mean below
    assert r.judge_ready("b") is True
    seeds(r, "c", 0.3, 0.95)
    assert r.judge_ready("c") is False


def test_value_at_a_rung_is_the_best_so_far():
    r = rungs(grace_period=2)
    seeds(r, "a", 0.6, 0.6, t=2)
    r.judge_ready("a")
    seeds(r, "b", 0.9, 0.9, t=1)
    seeds(r, "b", 0.3, 0.3, t=2)  # a dip at the rung: judged on 0.9
    assert r.judge_ready("b") is False
    assert r.state.history[-1]["value"] == pytest.approx(0.9)


def test_min_epochs_and_the_floor_keep_a_group():
    r = rungs(min_epochs=2)
    seeds(r, "a", 0.8, 0.8)
    r.judge_ready("a")
    seeds(r, "b", 0.1, 0.1)
    assert r.judge_ready("b") is False
    assert "kept, before min_epochs 2" in r.state.history[-1]["reason"]
    assert r.undecided_rung("b", 1) is None and r.undecided_rung("b", 2) == 1

    r = rungs()
    seeds(r, "a", 0.7, 0.7, floor=0.5)
    r.judge_ready("a")
    seeds(r, "b", 0.5, 0.5, floor=0.5)
    assert r.judge_ready("b") is False
    assert "not separated from floor 0.5000" in r.state.history[-1]["reason"]


def test_seeds_that_left_and_a_forced_judgement():
    r = rungs(num_seeds=3)
    seeds(r, "a", 0.8, 0.8, 0.8)
    r.judge_ready("a")
    seeds(r, "b", 0.1, 0.1)  # the third seed was never created
    assert r.judge_ready("b") is False  # waits for it
    assert r.judge_ready("b", force=True) is True  # a stall: judged on the two it has
    assert "over 2 seed(s) (the others could not start)" in r.reason_for("b0")

    r = rungs()
    seeds(r, "a", 0.8, 0.8)
    r.judge_ready("a")
    seeds(r, "c", 0.1)
    r.add("c1", "c")
    r.leave("c1", "error")  # errored before reporting: the other seed decides
    assert r.judge_ready("c") is True and "over 1 seed(s)" in r.reason_for("c1")


def test_mode_min_and_finished_trials():
    r = rungs(mode="min", max_t=2)
    seeds(r, "a", 0.2, 0.2)
    r.judge_ready("a")
    seeds(r, "b", 0.6, 0.6)
    assert r.judge_ready("b") is True and "> cut 0.2000" in r.reason_for("b0")
    r.observe("a0", 2, 0.1, None)
    assert r.reason_for("a0") == "finished"
    r.observe("a1", 1.5, 0.1, None)
    r.leave("a1", "complete")
    assert r.reason_for("a1") == "ended by the trial at epoch 1.5"


def test_saved_state_round_trip_and_older_files(tmp_path):
    r = rungs()
    seeds(r, "a", 0.8, 0.8)
    r.judge_ready("a")
    seeds(r, "b", 0.1, 0.1)
    r.judge_ready("b")
    path = tmp_path / group_asha_state.STATE_FILE
    group_asha_state.save(path, SavedState("tok", r.state, {"x": 1}, r.params))
    back = group_asha_state.load(path)
    assert back is not None and back.token == "tok" and back.waiting == {"x": 1}
    assert back.rungs == r.state  # int rung keys come back as ints
    again = Rungs(**back.params)
    again.state = back.rungs
    assert again.reason_for("b1") == r.reason_for("b1")
    assert not list(tmp_path.glob(".*tmp"))  # written atomically, nothing left behind

    path.write_bytes(pickle.dumps({"_token": "old", "_group_of": {}}))  # kdsweep <= 0.2
    assert group_asha_state.load(path) is None
    assert group_asha_state.load(tmp_path / "missing.state") is None
    assert RungState.from_dict({"stopped": {"g": "why"}, "unknown": 1}).stopped == {"g": "why"}
    with pytest.raises(ValueError, match="stale copy"):
        group_asha_state.check_path(tmp_path / "group_asha.json")
