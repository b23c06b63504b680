"""The pieces wired into every sweep: the majority-class floor, the tie warning of the summary,
the live status surviving Tune's pickling of its callbacks, the scheduler chosen by --seeds."""

from __future__ import annotations

import dataclasses
import io
import pickle
import types

import pytest
import torch

from driver.cli import build_parser, build_plan
from driver.group_asha import GroupASHA
from driver.progress import LiveProgress
from driver.summary import _tie_warnings
from driver.tuner import make_scheduler
from trainables.text.loop import majority_rate

pytestmark = pytest.mark.unit


def test_majority_rate_is_the_most_frequent_training_label_on_eval():
    train = torch.tensor([2, 2, 2, 0, 1])
    assert majority_rate(train, torch.tensor([2, 0, 2, 1])) == pytest.approx(0.5)
    assert majority_rate(train, torch.tensor([0, 1])) == 0.0


def test_summary_warns_when_all_configs_tie_and_not_otherwise():
    space = types.SimpleNamespace(varied=["temperature", "seed"])
    rows = [
        {"condition": "soft", "temperature": t, "seed": s, "status": "finished", "m": 0.5}
        for t in (1, 2)
        for s in (0, 1, 2, 3)
    ]
    (w,) = _tie_warnings(rows, space, "m")
    assert "tie" in w
    for r, v in zip(rows, (0.1, 0.12, 0.11, 0.13, 0.9, 0.91, 0.92, 0.93), strict=True):
        r["m"] = v
    assert _tie_warnings(rows, space, "m") == []  # 4 seeds each: Kruskal-Wallis p < .05


def test_live_progress_survives_tunes_pickling_of_callbacks():
    cb = LiveProgress("acc", "max", 3, describe=str, stream=io.StringIO(), tty=False)
    cb.maybe_print([])
    revived = pickle.loads(pickle.dumps(cb))  # Tuner.restore brings back this copy
    assert revived._t0 is None and revived.stream is not None


def test_seeds_choose_the_group_scheduler(tmp_path):
    args = build_parser("temperature", None).parse_args(["--smoke", "--seeds", "3"])
    plan = build_plan("temperature", args)
    sched = make_scheduler(dataclasses.replace(plan, storage=tmp_path))
    assert isinstance(sched, GroupASHA)
    one = build_parser("temperature", None).parse_args(["--smoke"])
    assert not isinstance(make_scheduler(build_plan("temperature", one)), GroupASHA)
