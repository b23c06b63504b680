"""Sanity warnings, each triggered by data made for it (and silent on data that is fine)."""

from __future__ import annotations

import numpy as np
import pytest

from kdsweep.analysis.sanity import (
    detectable_difference,
    dropped_utterances_warning,
    length_warning,
    small_dev_warning,
    teacher_warning,
    tie_warning,
    two_proportion_p,
    wilson_interval,
)

pytestmark = pytest.mark.unit


def test_wilson_interval_known_case():
    low, high = wilson_interval(8, 10)
    assert low == pytest.approx(0.4902, abs=1e-4)
    assert high == pytest.approx(0.9433, abs=1e-4)


def test_teacher_on_random_labels_warns():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 89)
    teacher = rng.integers(0, 2, 89)  # a teacher that learned nothing
    acc = float((teacher == labels).mean())
    majority = float(np.bincount(labels).max() / len(labels))
    w = teacher_warning(acc, len(labels), majority)
    assert w is not None and "distillation from it measures nothing" in w
    assert "n=89" in w


def test_teacher_that_learned_is_silent():
    assert teacher_warning(0.80, 89, 0.51) is None
    # just above the rate, but inside its interval: still a warning
    assert teacher_warning(0.56, 89, 0.51) is not None


def test_identical_trials_tie():
    w = tie_warning({"T=1": [0.6, 0.6], "T=2": [0.6, 0.6], "T=4": [0.6, 0.6]})
    assert w is not None and w.startswith("all 3 configs tie")


def test_seeds_from_one_distribution_tie_and_separated_configs_do_not():
    rng = np.random.default_rng(1)
    same = {f"T={t}": list(0.6 + 0.05 * rng.standard_normal(5)) for t in (1, 2, 4)}
    w = tie_warning(same)
    assert w is not None and "Kruskal-Wallis" in w
    apart = {"a": [0.50, 0.51, 0.52], "b": [0.70, 0.71, 0.72], "c": [0.90, 0.91, 0.92]}
    assert tie_warning(apart) is None


def test_one_seed_ties_within_binomial_noise_of_the_dev_set():
    values = {"a": [0.60], "b": [0.63], "c": [0.58]}
    assert "binomial noise of 89 dev examples" in tie_warning(values, n_dev=89)
    assert tie_warning(values, n_dev=100_000) is None
    assert tie_warning(values) is None  # one seed, no dev size: cannot tell


def test_two_proportion_p_matches_a_z_test():
    # 0.6 vs 0.5 on 200 each: pooled 0.55, se = sqrt(2*.55*.45/200) = 0.04975, z = 2.010
    assert two_proportion_p(0.6, 0.5, 200) == pytest.approx(0.0444, abs=5e-4)


def test_detectable_difference_known_case_and_inverse():
    # two proportions near 0.5, 100 examples each, 80% power, alpha .05: (1.96 + 0.8416) * 0.0707
    assert detectable_difference(100, 0.5) == pytest.approx(0.1981, abs=1e-3)
    d = detectable_difference(400, 0.3)
    n_needed = ((1.959964 + 0.841621) ** 2) * 2 * 0.3 * 0.7 / d**2
    assert n_needed == pytest.approx(400, rel=1e-4)


def test_small_dev_set_warns_for_a_small_gap():
    w = small_dev_warning(best=0.63, baseline=0.60, n_dev=89)
    assert w is not None and "minimum detectable difference" in w
    assert small_dev_warning(best=0.63, baseline=0.60, n_dev=50_000) is None
    assert small_dev_warning(best=0.90, baseline=0.50, n_dev=89) is None


def test_long_texts_truncation_share_and_median():
    lengths = [1000] * 10 + [100] * 10
    w = length_warning(lengths, 400, "train")
    assert w == (
        "train: 50% of texts (10 of 20) are longer than max_chars=400 and were cut "
        "(median length 550 characters)"
    )
    all_cut = length_warning([90] * 5, 64, "dev", limit_name="max_len", unit="tokens")
    assert all_cut is not None and all_cut.startswith("dev: 100% of texts (5 of 5)")
    assert length_warning([10, 20], 400, "train") is None
    assert length_warning([], 400, "train") is None


def test_speech_utterances_dropped_for_length():
    w = dropped_utterances_warning([100, 200, 3000, 4000], 1600, "train")
    assert w == (
        "train: 50% of utterances (2 of 4) are longer than max_frames=1600 and were dropped "
        "(median length 1600 frames)"
    )
    assert dropped_utterances_warning([100, 200], 1600, "train") is None


def test_speech_utterances_ctc_cannot_align_are_counted():
    from kdsweep.analysis.sanity import ctc_dropped_warning

    # 5 labels fit 5 frames; "aa" needs a blank between the repeats (3 frames, has 2)
    frames, targets = [5, 2, 10], [[1, 2, 3, 4, 5], [7, 7], [1, 2]]
    w = ctc_dropped_warning(frames, targets, "train", 3)
    assert w is not None and "1 of 3" in w and "stack=3" in w and "33%" in w
    assert ctc_dropped_warning([5, 3], [[1, 2, 3, 4, 5], [7, 7]], "dev", 3) is None


def test_small_dev_warning_reaches_the_sweep_summary():
    from driver.summary import _small_dev_warning

    rows = [
        {"label": "soft T=4", "condition": "soft", "status": "finished", "dev_accuracy": 0.62},
        {"label": "independent", "condition": "independent", "status": "finished",
         "dev_accuracy": 0.60},
    ]  # fmt: skip
    w = _small_dev_warning(rows, "dev_accuracy", 300)
    assert w is not None and "n=300" in w and "0.020" in w
    assert _small_dev_warning(rows, "dev_accuracy", 10**6) is None


def test_speech_teacher_no_better_than_an_empty_transcript_warns():
    from kdsweep.analysis.sanity import asr_teacher_warning

    # an imported random-weight BiLSTM teacher: dev WER 1.19
    w = asr_teacher_warning(1.19)
    assert w is not None and "teacher dev WER 1.190" in w and "empty transcript" in w
    assert asr_teacher_warning(1.0, kind="twin").startswith("twin dev WER 1.000")
    assert asr_teacher_warning(0.77) is None and asr_teacher_warning(float("nan")) is None
    # usable with the LM only (greedy 1.05, beam 0.6): no warning; both >= 1: one
    assert asr_teacher_warning(1.05, 0.6) is None
    assert "beam + LM 1.020" in asr_teacher_warning(1.05, 1.02)


def test_speech_teacher_warning_reaches_the_sweep_preparation():
    from types import SimpleNamespace

    import torch

    from driver.preparation import asr_warnings

    fs = SimpleNamespace(lengths=torch.tensor([], dtype=torch.long), targets=[])
    data = SimpleNamespace(
        teacher=SimpleNamespace(metrics={"dev_wer": 1.19, "test_wer": 1.2}),
        feats={"train": fs, "dev": fs},
    )
    cfg = SimpleNamespace(teacher_kind="teacher", stack=1)
    out = asr_warnings(cfg, data, {"dev_wer_beam": 1.1})
    assert "WER 1.190 (beam + LM 1.100)" in out["teacher"]
    assert "teacher" not in asr_warnings(cfg, data, {"dev_wer_beam": 0.5})


def test_single_seed_search_says_its_pruning_is_a_lead():
    from driver.summary import single_seed_note

    rows = [{"status": "finished"}, {"status": "pruned"}, {"status": "pruned"}]
    note = single_seed_note(rows)
    assert note is not None and "stopped 2 trial(s) early on one seed each" in note
    assert "--confirm K" in note and "--seeds N" in note
    assert single_seed_note([{"status": "finished"}]) is None
