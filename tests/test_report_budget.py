"""The report's fairness pieces and new charts: equal budgets, the teacher's cost amortised,
the gain-over-baseline and attribution-similarity charts, beam WER and the teacher's row."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from driver.reporting import budget, charts, markdown  # noqa: E402
from driver.reporting.budget import Budget, budget_check, trial_budget  # noqa: E402
from driver.reporting.compare import comparisons  # noqa: E402
from driver.reporting.load import INCL_TEACHER, Sweep, Trial, group_trials  # noqa: E402

pytestmark = pytest.mark.unit


def _trial(cond: str, seed: int, metrics: dict, pruned: bool = False, **params) -> Trial:
    return Trial(
        run_id=f"{cond}-{seed}-{params}-{pruned}",
        name=f"{cond} s{seed}",
        condition=cond,
        student="L2",
        seed=seed,
        params={"seed": str(seed), **{k: str(v) for k, v in params.items()}},
        metrics=dict(metrics),
        status="FINISHED",
        pruned=pruned,
    )


def _sweep(trials, pruned=(), task="text", tags=None, varied=()) -> Sweep:
    varied = list(varied)
    groups = group_trials(list(trials), varied)
    return Sweep("s", "0", "kdsweep/s", "p", task, list(trials), {}, varied, groups, tags or {},
                 list(pruned))  # fmt: skip


# ---------------------------------------------------------------- budgets
def test_trial_budget_reads_epochs_and_steps():
    assert trial_budget({"epoch": 3.0, "steps_per_epoch": 75.0}) == Budget(3, 225)
    assert trial_budget({"epoch": 2.0, "optimizer_steps": 140.0}) == Budget(2, 140)
    assert trial_budget({"epoch": 3.0}) == Budget(3, None)
    assert trial_budget({"dev_accuracy": 0.7}) is None
    assert str(Budget(1, 75)) == "1 epoch, 75 steps" and str(Budget(3)) == "3 epochs"


def test_budget_check_equal():
    b = Budget(3, 225)
    configs = {
        "independent": [("independent s0", b, False), ("independent s1", b, False)],
        "soft T=2": [("soft T=2 s0", b, False), ("soft T=2 s1", b, False)],
    }
    assert budget_check(configs, {"soft T=2": "independent"}) == [
        "budgets: equal (3 epochs, 225 steps each)"
    ]
    no_steps = {k: [(n, Budget(3), p) for n, _, p in v] for k, v in configs.items()}
    (line,) = budget_check(no_steps, {"soft T=2": "independent"})
    assert line == "budgets: equal (3 epochs each; optimizer steps not reported by these trials)"


def test_budget_check_lists_each_mismatch():
    base, more = Budget(3, 225), Budget(3, 300)  # a transfer set adds rows to every epoch
    configs = {
        "independent": [("independent s0", base, False), ("independent s1", base, False)],
        "soft transfer": [("soft transfer s0", more, False), ("soft transfer s1", more, False)],
        "soft T=2": [("soft T=2 s0", base, False), ("soft T=2 s1", Budget(2, 150), False)],
        "soft T=8": [("soft T=8 s0", Budget(1, 75), True)],  # pruned by ASHA, not counted
    }
    lines = budget_check(configs, {k: "independent" for k in configs if k != "independent"})
    assert lines[0] == "budgets: not equal (2 mismatch(es)):"
    assert "- soft transfer: 3 epochs, 300 steps; independent: 3 epochs, 225 steps" in lines
    assert "- soft T=2 s1: 2 epochs, 150 steps; the rest of soft T=2: 3 epochs, 225 steps" in lines
    assert lines[-1] == (
        "- soft T=8 s0 (pruned, not counted): ran 1 epoch, 75 steps; independent: 3 epochs, "
        "225 steps"
    )
    # only the pruned trial differs: the counted budgets are equal, the pruned one is named
    only_pruned = {k: v for k, v in configs.items() if k in ("independent", "soft T=8")}
    lines = budget_check(only_pruned, {"soft T=8": "independent"})
    assert lines[0] == "budgets: equal (3 epochs, 225 steps each)" and len(lines) == 2


def test_budget_check_without_a_baseline_and_a_pruned_baseline_trial():
    b3, b1 = Budget(3, 30), Budget(1, 10)
    configs = {
        "independent": [("independent s0", b3, False), ("independent s1", b1, True)],
        "soft": [("soft s0", b3, False)],
        "hard": [("hard s0", Budget(2, 20), False)],  # no baseline of its student
    }
    lines = budget_check(configs, {"soft": "independent"})
    assert lines == [
        "budgets: not equal (1 mismatch(es)):",
        "- hard: 2 epochs, 20 steps; most trials: 3 epochs, 30 steps",
        "- independent s1 (pruned, not counted): ran 1 epoch, 10 steps; the rest of "
        "independent: 3 epochs, 30 steps",
    ]
    assert budget_check({"x": []}, {}) == ["budgets: no trial reported its epochs"]


def test_sweep_budget_lines_pairs_configs_with_their_baseline():
    full = {"epoch": 3.0, "steps_per_epoch": 10.0, "dev_accuracy": 0.7}
    trials = [_trial(c, s, full) for c in ("independent", "soft") for s in (0, 1)]
    pruned = [_trial("soft", 2, {**full, "epoch": 1.0}, pruned=True)]
    lines = budget.sweep_budget_lines(_sweep(trials, pruned))
    assert lines == [
        "budgets: equal (3 epochs, 30 steps each)",
        "- soft s2 (pruned, not counted): ran 1 epoch, 10 steps; independent L2: "
        "3 epochs, 30 steps",
    ]


# ---------------------------------------------------------------- the teacher's cost
def test_amortised_seconds_shares_each_teacher_among_its_trials():
    own = [100.0, 110.0, 120.0, 50.0, 60.0, 70.0]
    kinds = ["", "teacher", "teacher", "teacher", "twin", "twin"]
    got = budget.amortised_seconds(own, kinds, {"teacher": 90.0, "twin": 40.0})
    assert got == pytest.approx([100.0, 140.0, 150.0, 80.0, 80.0, 90.0])
    unknown = budget.amortised_seconds([10.0, 20.0], ["", "teacher"], {})
    assert unknown[0] == 10.0 and math.isnan(unknown[1])


def test_add_teacher_cost_from_the_tag_or_the_store_meta(tmp_path):
    trials = [_trial(c, s, {"train_seconds": 100.0, "dev_accuracy": 0.7}, cache_dir=tmp_path)
              for c in ("independent", "soft") for s in (0, 1)]  # fmt: skip
    pruned = [_trial("soft", 2, {"train_seconds": 40.0}, pruned=True)]
    sweep = _sweep(trials, pruned, tags={"teacher_train_seconds": "60.0", "teacher_id": "abc"})
    cost = budget.add_teacher_cost(sweep)
    assert cost == {"teacher": (60.0, 3)}  # the pruned trial used the teacher too
    assert [t.metrics[INCL_TEACHER] for t in trials] == [100.0, 100.0, 120.0, 120.0]
    assert pruned[0].metrics[INCL_TEACHER] == 60.0
    note = budget.teacher_cost_note(cost)
    assert "the teacher's training (60 s) / 3 trial(s) that used it" in note
    # a sweep from before the tag: the teacher store's meta.json under the trials' cache_dir
    (tmp_path / "teachers" / "abc").mkdir(parents=True)
    (tmp_path / "teachers" / "abc" / "meta.json").write_text(json.dumps({"train_seconds": 30}))
    sweep = _sweep(trials, tags={"teacher_id": "abc"})
    assert budget.add_teacher_cost(sweep) == {"teacher": (30.0, 2)}
    assert trials[2].metrics[INCL_TEACHER] == 115.0
    # recorded nowhere: unknown, not zero
    ((seconds, users),) = budget.add_teacher_cost(_sweep(trials, tags={})).values()
    assert math.isnan(seconds) and users == 2 and math.isnan(trials[2].metrics[INCL_TEACHER])
    assert "unknown seconds (not recorded)" in budget.teacher_cost_note({"teacher": (seconds, 2)})


# ---------------------------------------------------------------- charts
def _compared_sweep(task: str = "text") -> tuple[Sweep, list[dict]]:
    metric = "dev_wer" if task == "asr" else "dev_accuracy"
    gain = -0.05 if task == "asr" else 0.05  # better in both: lower WER, higher accuracy
    trials = []
    for s, noise in enumerate([0.0, 0.01, -0.01, 0.004]):
        base = {metric: 0.5 + noise, "attr_cosine": 0.4 + noise, "attr_spearman": 0.3}
        trials.append(_trial("independent", s, base))
        trials.append(_trial("soft", s, {**base, metric: 0.5 + gain + noise * 1.1}))
    sweep = _sweep(trials, task=task)
    return sweep, comparisons(sweep)


def test_gain_points_sign_better_as_positive():
    sweep, comps = _compared_sweep("asr")
    (p,) = charts.gain_points(comps, "WER")
    assert p["gain"] == pytest.approx(0.05, abs=1e-3) and p["low"] < p["gain"] < p["high"]
    assert p["significant"] and p["low"] > 0  # a WER reduction, shown as a positive gain
    assert "reduction" in charts.gain_axis_label("WER", False)
    assert "gain" in charts.gain_axis_label("accuracy", True)
    _, comps = _compared_sweep("text")
    (p,) = charts.gain_points(comps, "accuracy")
    assert p["gain"] == pytest.approx(0.05, abs=1e-3) and p["low"] > 0


def test_charts_written_and_skipped_without_data(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    sweep, comps = _compared_sweep("text")
    paths = charts.comparison_charts(sweep, comps, tmp_path)
    assert [p.name for p in paths] == ["gain_vs_baseline.png", "attribution_similarity.png"]
    assert all(p.stat().st_size > 5000 for p in paths)
    speech, comps = _compared_sweep("asr")
    for t in speech.trials:  # speech trials report no attribution similarity
        t.metrics.pop("attr_cosine"), t.metrics.pop("attr_spearman")
    out = tmp_path / "asr"
    out.mkdir()
    assert [p.name for p in charts.comparison_charts(speech, comps, out)] == [
        "gain_vs_baseline.png"
    ]
    assert charts.plot_gain([], "WER", False, "s", out / "none.png") is None


# ---------------------------------------------------------------- speech table
def test_speech_table_has_beam_columns_and_the_teacher_rows():
    cols = markdown.metric_columns("asr")
    titles = [t for _, t, _, _ in cols]
    assert titles[:4] == ["WER", "WER beam", "CER", "CER beam"]
    assert "WER beam" not in [t for _, t, _, _ in markdown.metric_columns("text")]
    tags = {"teacher_arch": "L4-H256", "teacher_dev_wer": "0.2100"}
    tags.update(teacher_dev_wer_beam="0.1500", twin_arch="L2-H128", twin_dev_wer="0.4000")
    tags.update(twin_train_seconds="30.0")
    sweep = _sweep([_trial("independent", 0, {"dev_wer": 0.5})], task="asr", tags=tags)
    rows = markdown.teacher_rows(sweep, cols, {"teacher": (300.0, 3)})
    assert [r[:2] for r in rows] == [["L4-H256", "(teacher)"], ["L2-H128", "(twin)"]]
    cell = dict(zip(["student", "condition", "n", *titles], rows[0]))
    assert (cell["WER"], cell["WER beam"], cell["CER"]) == ("0.210", "0.150", "–")
    assert cell["train s"] == "300.0" and cell["train s (incl. teacher)"] == "300.0"
    # no trial used the twin here: its seconds come from its tag
    assert dict(zip(["student", "condition", "n", *titles], rows[1]))["train s"] == "30.0"
    assert markdown.teacher_rows(_sweep(sweep.trials, task="asr"), cols) == []
