"""The confirm stage's pure pieces: the answer table from given per-seed numbers, verdicts,
Holm's order, which configs are confirmed, the fresh seeds, and bad `--confirm` input."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from driver.confirm import confirm_seeds, n_configs, top_configs
from driver.confirm_table import confirm_answer, format_answer, markdown_answer, verdict
from kdsweep.errors import KDSweepError

pytestmark = pytest.mark.unit

BASE = [0.50, 0.52, 0.49, 0.51, 0.50]


def test_clear_gain_is_better_and_a_clear_loss_worse():
    test = {
        "independent": BASE,
        "soft T=4": [v + 0.10 + 0.003 * i for i, v in enumerate(BASE)],
        "soft T=8": [v - 0.10 - 0.002 * i for i, v in enumerate(BASE)],
    }
    ans = confirm_answer(test, "independent", higher_is_better=True)
    by = {c["label"]: c for c in ans["comparisons"]}
    assert by["soft T=4"]["verdict"] == "better"
    assert by["soft T=8"]["verdict"] == "worse"
    gain = by["soft T=4"]
    assert gain["mean_diff"] == pytest.approx(0.106)
    assert gain["low"] > 0 and gain["d_z"] > 5
    assert math.isnan(gain["boot_low"])  # 5 pairs: no bootstrap CI (format_answer says why)
    # lower is better (WER): the same numbers flip
    ans = confirm_answer(test, "independent", higher_is_better=False)
    assert {c["label"]: c["verdict"] for c in ans["comparisons"]}["soft T=4"] == "worse"


def test_identical_numbers_are_a_tie():
    ans = confirm_answer({"independent": BASE, "soft T=2": list(BASE)}, "independent", True)
    (c,) = ans["comparisons"]
    assert c["mean_diff"] == 0 and c["p"] == 1.0
    assert c["verdict"] == "not distinguishable from independent"


def test_noise_is_not_distinguishable():
    noisy = [0.55, 0.47, 0.53, 0.46, 0.51]  # mean +0.004, spread ~0.04
    ans = confirm_answer({"independent": BASE, "soft": noisy}, "independent", True)
    assert ans["comparisons"][0]["verdict"] == "not distinguishable from independent"


def test_holm_order_and_values_against_scipy():
    rng = np.random.default_rng(0)
    base = rng.normal(0.5, 0.02, 6)
    test = {"independent": list(base)}
    for name, shift in (("a", 0.03), ("b", 0.001), ("c", 0.06)):
        test[name] = list(base + shift + rng.normal(0, 0.02, 6))
    ans = confirm_answer(test, "independent", True)
    raw = {n: stats.ttest_rel(test[n], base).pvalue for n in "abc"}
    order = sorted(raw, key=raw.get)  # smallest p first: times 3, then 2, then 1
    expect, running = {}, 0.0
    for rank, name in enumerate(order):
        running = max(running, min(1.0, (3 - rank) * raw[name]))
        expect[name] = running
    got = {c["label"]: c for c in ans["comparisons"]}
    for name in "abc":
        assert got[name]["p"] == pytest.approx(raw[name])
        assert got[name]["p_holm"] == pytest.approx(expect[name])
    holm_in_order = [got[n]["p_holm"] for n in order]
    assert holm_in_order == sorted(holm_in_order)
    assert got[order[0]]["p_holm"] == pytest.approx(3 * raw[order[0]])


def test_one_seed_is_not_testable_and_tables_render():
    ans = confirm_answer(
        {"independent": [0.5, math.nan], "soft": [0.6, 0.61]},
        "independent",
        True,
        dev={"independent": [0.4, 0.41], "soft": [0.45, 0.47]},
        info={"independent": {"search_status": "added"}, "soft": {"search_status": "finished"}},
    )
    assert ans["comparisons"][0]["verdict"].startswith("no verdict: 1 paired seed")
    text = format_answer(ans)
    assert "independent [baseline]" in text and "0.4600 +- " in text and "added" in text
    md = markdown_answer(ans)
    assert md.startswith("| config |") and "| vs independent |" in md
    assert verdict({"n": 3, "p_holm": 0.01, "mean_diff": -0.1}, False, "x") == "better"


def test_two_confirm_seeds_give_no_verdict_and_few_pairs_no_bootstrap():
    """`--confirm-seeds 2` issued "better" from 2 pairs (d_z 21.2, p 0.021): no longer."""
    from driver.confirm_table import interval_notes

    ans = confirm_answer({"independent": [0.50, 0.60], "soft": [0.60, 0.703]}, "independent", True)
    (c,) = ans["comparisons"]
    assert c["p"] < 0.05 and not c["significant"]
    assert c["verdict"].startswith("no verdict: 2 paired seeds (needs >= 3")
    assert math.isnan(c["boot_low"])
    notes = interval_notes(ans)
    assert any(n.startswith("bootstrap CI: shown from 10 paired seeds on") for n in notes)
    assert any("--confirm-seeds 3" in n for n in notes)
    text, md = format_answer(ans), markdown_answer(ans)
    assert "bootstrap CI: shown from 10" in text and "- bootstrap CI: shown from 10" in md
    # 10 pairs: a bootstrap CI, no notes
    base = [0.5 + 0.01 * i for i in range(10)]
    ans = confirm_answer({"independent": base, "soft": [b + 0.05 + 0.001 * (i % 3) for i, b in
                          enumerate(base)]}, "independent", True)  # fmt: skip
    assert math.isfinite(ans["comparisons"][0]["boot_low"]) and interval_notes(ans) == []


def test_search_line_says_single_seed_pruning_is_a_lead():
    from driver.confirm_table import search_line

    one = search_line(1, 2)
    assert "one seed per config, stopped 2 config(s) early" in one and "is the answer" in one
    assert "stopped" not in search_line(0, 0) and "one seed per config" in search_line(0, 0)
    assert search_line(3, 1).startswith("search: 3 seeds per config, pruned by seed group")
    no_asha = search_line(1, 0, asha=False)  # --no-asha: nothing was stopped early
    assert "no early stopping" in no_asha and "its early stopping" not in no_asha
    assert "no early stopping" in search_line(3, 0, asha=False)


def test_top_configs_rank_by_seed_mean_and_skip_errors():
    trials = [
        ({"condition": "soft", "temperature": 2, "seed": 0}, 0.60, "finished"),
        ({"condition": "soft", "temperature": 2, "seed": 1}, 0.40, "finished"),  # mean 0.50
        ({"condition": "soft", "temperature": 4, "seed": 0}, 0.55, "finished"),
        ({"condition": "soft", "temperature": 4, "seed": 1}, 0.53, "pruned"),  # mean 0.54
        ({"condition": "soft", "temperature": 8, "seed": 0}, 0.90, "error"),
    ]
    top = top_configs(trials, 2, "max")
    assert [(c["temperature"], round(m, 3), s) for c, m, s in top] == [
        (4, 0.54, "pruned"),
        (2, 0.5, "finished"),
    ]
    assert "seed" not in top[0][0]
    assert [c["temperature"] for c, _, _ in top_configs(trials, 1, "min")] == [2]


def test_confirm_seeds_are_fresh():
    assert confirm_seeds(3, used={0, 1, 2}) == [1000, 1001, 1002]
    assert confirm_seeds(2, used={0, 1000, 1002}) == [1001, 1003]


def test_n_configs_counts_configs_not_seeds():
    from driver.space import load_space

    assert n_configs(load_space("temperature")) == 4
    assert n_configs(load_space("temperature", seeds=3)) == 4
    assert n_configs(load_space("tune_kd")) == 12


@pytest.mark.parametrize(
    "flags, needle",
    [
        (["--confirm", "0"], "--confirm"),
        (["--confirm", "-1"], "--confirm"),
        (["--confirm", "1", "--confirm-seeds", "1"], "--confirm-seeds"),
        (["--confirm", "5"], "4 config"),
    ],
)
def test_bad_confirm_flags_fail_before_any_trial(flags, needle, capsys):
    from driver.cli import main

    with pytest.raises(SystemExit) as e:
        main("temperature", None, ["--smoke", "--storage", "/nonexistent/runs", *flags])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and needle in err[0], err


def test_confirm_check_is_a_kdsweep_error():
    from driver.confirm import check_confirm_args
    from driver.plan import Confirm
    from driver.space import load_space

    check_confirm_args(Confirm(k=2, seeds=2), load_space("temperature"))
    with pytest.raises(KDSweepError):
        check_confirm_args(Confirm(k=2, seeds=0), load_space("temperature"))


def test_confirm_space_is_arms_times_seeds():
    from ray.tune.search.variant_generator import generate_variants

    from driver.confirm import ConfirmSpace
    from driver.space import load_space

    arms = [
        {"task": "text", "condition": "soft", "temperature": 4, "alpha": 0.9, "epochs": 5},
        {"task": "text", "condition": "independent", "epochs": 5},
    ]
    space = ConfirmSpace(load_space("temperature"), arms, [1000, 1001])
    assert space.grid_size() == 4 and space.restore_with_param_space
    got = []
    for _, cfg in generate_variants(space.param_space()):
        arm = arms[cfg["confirm_arm"]]
        assert all(cfg.get(k) == arm.get(k) for k in ("condition", "temperature", "alpha"))
        assert cfg["epochs"] == 5
        got.append((cfg["confirm_arm"], cfg["seed"]))
    assert sorted(got) == [(0, 1000), (0, 1001), (1, 1000), (1, 1001)]


def test_pruned_line_says_whether_a_pruned_config_beat_a_kept_one():
    from driver.confirm_table import pruned_line

    test = {"soft T=8": [0.70, 0.72, 0.71, 0.73], "soft T=4": [0.60, 0.61, 0.62, 0.60],
            "independent": [0.5, 0.5, 0.52, 0.51]}  # fmt: skip
    status = {"soft T=8": "pruned", "soft T=4": "finished", "independent": "added"}
    line = pruned_line(test, status, True, 1)
    assert "soft T=8 (pruned) is better than soft T=4 (kept)" in line
    same = {**test, "soft T=8": test["soft T=4"]}
    assert "not distinguishable from soft T=4" in pruned_line(same, status, True, 1)
    kept_only = {k: v for k, v in test.items() if k != "soft T=8"}
    assert "cannot tell" in pruned_line(kept_only, status, True, 2)
    assert "none (the search stopped no config early)" in pruned_line(kept_only, status, True, 0)
