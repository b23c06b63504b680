"""Analysis: IG attribution similarity, efficiency, the report's statistics, sweeps/report.py."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from kdsweep.analysis.efficiency import efficiency_metrics
from kdsweep.text.attribution import (
    attribution_similarity,
    merge_word_pieces,
    real_token_mask,
    similarity_from_attributions,
    spearman_correlation,
    token_attributions,
    word_ids_from_offsets,
    word_level_similarity,
)

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from driver.reporting import stats as rstats  # noqa: E402
from sweeps import report  # noqa: E402


# ---------------------------------------------------------------- attribution
def _tiny_bert(seed: int, hidden: int = 32, layers: int = 1):
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(seed)
    cfg = BertConfig(
        vocab_size=100,
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=2,
        intermediate_size=2 * hidden,
        max_position_embeddings=64,
        num_labels=3,
        pad_token_id=0,
    )
    return BertForSequenceClassification(cfg).eval()


def _tokens(n: int = 12, s: int = 16, seed: int = 0) -> dict[str, torch.Tensor]:
    """[CLS]=1 ... [SEP]=2 then padding (0), variable lengths, like the data pipeline."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.zeros(n, s, dtype=torch.int32)
    mask = torch.zeros(n, s, dtype=torch.int8)
    for i in range(n):
        length = 5 + i % (s - 5)
        ids[i, 0], ids[i, length - 1] = 1, 2
        ids[i, 1 : length - 1] = torch.randint(5, 100, (length - 2,), generator=g)
        mask[i, :length] = 1
    return {"input_ids": ids, "attention_mask": mask, "labels": torch.arange(n) % 3}


@pytest.mark.unit
def test_attribution_of_a_model_with_itself_is_one_and_of_two_random_models_lower():
    tokens = _tokens()
    a, b = _tiny_bert(0), _tiny_bert(1)
    same = attribution_similarity(a, a, tokens, n=12, steps=8)
    assert same["attr_cosine"] == pytest.approx(1.0, abs=1e-6)
    assert same["attr_spearman"] == pytest.approx(1.0, abs=1e-6)
    other = attribution_similarity(a, b, tokens, n=12, steps=8)
    assert other["attr_cosine"] < 0.9 and other["attr_spearman"] < 0.9
    # precomputed teacher attributions give the same answer without the teacher model
    t_attr = token_attributions(a, tokens, 12, 8)
    again = attribution_similarity(None, b, tokens, n=12, steps=8, teacher_attr=t_attr)
    assert again == pytest.approx(other)


@pytest.mark.unit
def test_token_attributions_shape_and_special_tokens_zero():
    tokens = _tokens(n=5)
    attr = token_attributions(_tiny_bert(0), tokens, n=4, steps=4, batch_size=3)
    assert attr.shape == (4, 16) and attr.dtype == torch.float32
    real = real_token_mask(tokens["attention_mask"][:4])
    assert torch.all(attr[~real] == 0)  # [CLS], [SEP], padding
    assert torch.all(attr[real].abs().sum() > 0)
    lengths = tokens["attention_mask"][:4].sum(1)
    assert real.sum(1).tolist() == (lengths - 2).tolist()


@pytest.mark.unit
def test_similarity_functions():
    assert spearman_correlation([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman_correlation([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert spearman_correlation([1, 2, 2, 3], [1, 2, 3, 4]) == pytest.approx(0.9486833)  # ties
    assert math.isnan(spearman_correlation([1.0], [2.0]))
    a = torch.tensor([[0.0, 1.0, 2.0, 0.0], [0.0, -1.0, 1.0, 3.0]])
    mask = torch.tensor([[0, 1, 1, 0], [0, 1, 1, 1]])
    sim = similarity_from_attributions(a, 2 * a, mask)
    assert sim["attr_cosine"] == pytest.approx(1.0) and sim["attr_spearman"] == pytest.approx(1.0)
    sim = similarity_from_attributions(a, -a, mask)
    assert sim["attr_cosine"] == pytest.approx(-1.0)


@pytest.mark.unit
def test_word_pieces_merge_into_words():
    attr = [0.5, 0.1, 0.2, 0.3, 0.4, 0.9]
    # [CLS] un ##bel ##ievably fox [SEP]
    assert merge_word_pieces(attr, [None, 0, 0, 0, 1, None]).tolist() == pytest.approx([0.6, 0.4])
    assert merge_word_pieces(torch.tensor(attr), torch.tensor([-1, 0, 1, 1, 2, -1])).tolist() == (
        pytest.approx([0.1, 0.5, 0.4])
    )
    # the same words tokenized two ways compare per word
    a = torch.tensor([[0.0, 0.1, 0.2, 0.3, 0.4, 0.0]])
    wa = torch.tensor([[-1, 0, 0, 0, 1, -1]])
    b = torch.tensor([[0.0, 0.6, 0.4, 0.0, 0.0, 0.0]])
    wb = torch.tensor([[-1, 0, 1, -1, -1, -1]])
    sim = word_level_similarity(a, wa, b, wb)
    assert sim["attr_cosine"] == pytest.approx(1.0)


@pytest.mark.unit
def test_word_ids_from_a_real_tokenizers_offsets():
    from transformers import AutoTokenizer

    from kdsweep.text.models import resolve_backbone

    tok = AutoTokenizer.from_pretrained(resolve_backbone("minilm"))
    text = "Unbelievably, the fox's tail!"
    enc = tok(text, return_offsets_mapping=True)
    pieces = tok.convert_ids_to_tokens(enc["input_ids"])
    words = word_ids_from_offsets(enc["offset_mapping"], text)
    assert words[0] is None and words[-1] is None  # [CLS], [SEP]
    by_word: dict[int, list[str]] = {}
    for p, w in zip(pieces, words):
        if w is not None:
            by_word.setdefault(w, []).append(p)
    # whitespace words: punctuation stays with its word, word pieces merge
    assert ["".join(x.replace("##", "") for x in v) for v in by_word.values()] == [
        "unbelievably,",
        "the",
        "fox's",
        "tail!",
    ]


@pytest.mark.unit
def test_efficiency_metrics():
    model = _tiny_bert(0)
    m = efficiency_metrics(model, _tokens(), batch_size=8, repeats=3)
    assert m["params"] == sum(p.numel() for p in model.parameters())
    param_mb = sum(p.numel() * p.element_size() for p in model.parameters()) / 2**20
    assert param_mb <= m["size_mb"] < param_mb * 1.2 + 0.05  # + header and buffers
    assert m["throughput"] > 0 and m["latency_ms"] > 0
    assert m["throughput"] == pytest.approx(8 / (m["latency_ms"] / 1000))


# ---------------------------------------------------------------- statistics
# Student's sleep data (Cushny & Peebles; R's `sleep`): extra hours of sleep, 10 patients, two
# drugs. R: t.test(g2, g1, paired = TRUE) -> t = 4.0621, df = 9, p = 0.002833,
# 95% CI 0.7001142 to 2.4598858, mean difference 1.58.
SLEEP_1 = [0.7, -1.6, -0.2, -1.2, -0.1, 3.4, 3.7, 0.8, 0.0, 2.0]
SLEEP_2 = [1.9, 0.8, 1.1, 0.1, -0.1, 4.4, 5.5, 1.6, 4.6, 3.4]


@pytest.mark.unit
def test_mean_ci():
    m, lo, hi = rstats.mean_ci([1, 2, 3, 4, 5])
    half = 2.776445 * math.sqrt(2.5) / math.sqrt(5)  # t(0.975, df=4) * s / sqrt(n)
    assert (m, lo, hi) == pytest.approx((3.0, 3.0 - half, 3.0 + half), abs=1e-5)
    m, lo, hi = rstats.mean_ci([0.7])
    assert m == 0.7 and math.isnan(lo) and math.isnan(hi)
    assert rstats.mean_ci([0.5, 0.5, float("nan")]) == (0.5, 0.5, 0.5)  # NaN dropped, no spread


@pytest.mark.unit
def test_paired_comparison_on_the_sleep_data():
    res = rstats.paired_comparison(SLEEP_2, SLEEP_1)
    assert res["n"] == 10 and res["mean_diff"] == pytest.approx(1.58)
    assert res["t"] == pytest.approx(4.0621, abs=1e-4)
    assert res["p"] == pytest.approx(0.002833, abs=1e-6)
    assert (res["low"], res["high"]) == pytest.approx((0.7001142, 2.4598858), abs=1e-6)
    assert res["d_z"] == pytest.approx(1.58 / 1.2299955, abs=1e-6)  # mean / sd of differences
    # one zero difference is dropped, 9 positive ones are left (two tied at 1.3): the exact
    # permutation p of "all 9 signs positive" is 2 / 2**9
    assert res["wilcoxon_p"] == pytest.approx(2 / 2**9)
    assert res["wilcoxon"] == "1 zero difference(s) dropped"
    # the paired bootstrap CI: seeded (the same twice), around the mean, near the t-interval
    again = rstats.paired_comparison(SLEEP_2, SLEEP_1)
    assert (res["boot_low"], res["boot_high"]) == (again["boot_low"], again["boot_high"])
    assert 0.7 < res["boot_low"] < 1.58 < res["boot_high"] < 2.6
    assert res["significant"] and res["p_holm"] == res["p"]


@pytest.mark.unit
def test_paired_comparison_small_and_degenerate_samples():
    same = rstats.paired_comparison([0.8, 0.82, 0.79], [0.8, 0.82, 0.79])
    assert same["mean_diff"] == 0 and same["p"] == 1.0 and not same["significant"]
    assert same["wilcoxon_p"] == 1.0 and same["wilcoxon"] == "all differences 0"
    assert rstats.verdict(same, True) == "not distinguishable (Holm p = 1; 95% CI includes 0)"
    noisy = rstats.paired_comparison([0.81, 0.79, 0.83, 0.78], [0.80, 0.80, 0.80, 0.80])
    assert noisy["low"] < 0 < noisy["high"] and noisy["p"] >= 0.05 and not noisy["significant"]
    # diffs 1, 2, 3: mean 2, sd 1, t = 2 * sqrt(3), p = 0.0742 (as scipy.stats.ttest_rel)
    res = rstats.paired_comparison([2.0, 4.0, 6.0], [1.0, 2.0, 3.0])
    assert res["t"] == pytest.approx(3.4641016) and res["p"] == pytest.approx(0.0741799, abs=1e-6)
    assert res["d_z"] == pytest.approx(2.0) and not res["significant"]
    # five positive differences: the t-test finds them, the signed-rank test cannot (p >= 1/16)
    res = rstats.paired_comparison([0.9, 0.91, 0.92, 0.93, 0.9], [0.8, 0.8, 0.81, 0.8, 0.8])
    assert res["significant"] and res["low"] > 0 and math.isnan(res["boot_low"])
    assert res["wilcoxon_p"] == pytest.approx(0.0625)
    assert res["wilcoxon"] == "n too small: 5 nonzero differences give p >= 0.0625"
    assert rstats.verdict(res, True) == "significant: better than independent"
    assert rstats.verdict(res, False) == "significant: worse than independent"  # WER
    one = rstats.paired_comparison([0.9], [0.8])
    assert one["n"] == 1 and math.isnan(one["p"]) and rstats.verdict(one, True).startswith("no ")
    with pytest.raises(ValueError):
        rstats.paired_comparison([0.9, 0.8], [0.8])


@pytest.mark.unit
def test_pairing_is_what_the_bootstrap_resamples():
    """Seeds differ a lot, the treatment adds ~0.01 to each: only a paired CI sees it."""
    base = [0.60, 0.70, 0.80, 0.65, 0.75, 0.72, 0.62, 0.68, 0.77, 0.71]
    noise = [0.001, -0.001, 0.002, 0.0, -0.002, 0.001, 0.0, -0.001, 0.001, 0.0]
    treated = [b + 0.01 + e for b, e in zip(base, noise)]
    res = rstats.paired_comparison(treated, base)
    assert 0 < res["boot_low"] < 0.01 < res["boot_high"] < 0.02
    assert res["low"] > 0 and res["significant"]


@pytest.mark.unit
def test_no_bootstrap_ci_from_few_pairs_and_no_verdict_from_two():
    """The make-sweep case: 3 pairs gave a t-CI [-0.001, +0.256] and beside it a bootstrap CI
    [+0.090, +0.187] that excluded 0. Below 10 pairs there is no bootstrap CI, and a note says
    why; 2 pairs (d_z 21, p 0.02 in a confirm run) give no verdict."""
    three = rstats.paired_comparison([0.60, 0.55, 0.58], [0.45, 0.50, 0.36])
    assert three["low"] < 0 < three["high"]
    assert math.isnan(three["boot_low"]) and math.isnan(three["boot_high"])
    assert "needs >= 10" in three["boot_note"] and "3 pairs" in three["boot_note"]
    ten = rstats.paired_comparison([0.6 + 0.01 * i for i in range(10)], [0.5] * 9 + [0.52])
    assert ten["boot_note"] == "" and ten["low"] < ten["boot_low"] < ten["boot_high"] < ten["high"]
    two = rstats.paired_comparison([0.60, 0.70], [0.50, 0.595])
    assert two["p"] < 0.05 and abs(two["d_z"]) > 10  # what the t-test says from 1 dof
    assert not two["significant"]
    assert rstats.verdict(two, True).startswith("no verdict: 2 paired seeds (needs >= 3")
    assert rstats.VERDICT_MIN_PAIRS == 3 and rstats.BOOTSTRAP_MIN_PAIRS == 10


@pytest.mark.unit
def test_bootstrap_rule_matches_its_stated_coverage():
    """The percentile bootstrap's coverage at 3 pairs is well under 95% (the reason for the
    10-pair rule): a small simulation on normal differences."""
    rng = np.random.default_rng(1)
    hits = 0
    for _ in range(300):
        d = rng.normal(0.0, 1.0, 3)
        means = d[rng.integers(0, 3, (999, 3))].mean(axis=1)
        lo, hi = np.percentile(means, [2.5, 97.5])
        hits += lo <= 0.0 <= hi
    assert 0.6 < hits / 300 < 0.85


@pytest.mark.unit
def test_holm_against_a_hand_computed_example():
    # sorted: 0.005*4 = 0.02, 0.01*3 = 0.03, 0.03*2 = 0.06, 0.04*1 = 0.04 -> max so far 0.06
    got = rstats.holm([0.01, 0.04, 0.03, 0.005])
    assert got == pytest.approx([0.03, 0.06, 0.06, 0.02])
    got = rstats.holm([0.02, float("nan"), 0.04])  # NaN: not a member of the family
    assert got[0] == pytest.approx(0.04) and math.isnan(got[1]) and got[2] == pytest.approx(0.04)
    assert rstats.holm([0.5, 0.6]) == [1.0, 1.0] and rstats.holm([]) == []


@pytest.mark.unit
def test_holm_turns_two_unadjusted_findings_into_not_distinguishable():
    from driver.reporting.compare import adjust

    a = rstats.paired_comparison([0.82, 0.85, 0.83, 0.88], [0.80, 0.80, 0.81, 0.82])
    b = rstats.paired_comparison([0.84, 0.80, 0.86, 0.83], [0.80, 0.79, 0.81, 0.80])
    assert 0.01 < a["p"] < 0.05 and 0.01 < b["p"] < 0.05 and a["significant"]
    rows = [{**r, "baseline": "independent", "metric": "accuracy"} for r in (a, b)]
    rows.append({**a, "baseline": "independent", "metric": "F1"})  # another family
    adjust(rows)
    assert [r["p_holm"] for r in rows[:2]] == pytest.approx(rstats.holm([a["p"], b["p"]]))
    assert not rows[0]["significant"] and not rows[1]["significant"]
    assert rows[2]["p_holm"] == a["p"] and rows[2]["significant"]
    text = rstats.verdict(rows[0], True)
    assert text.startswith("not distinguishable (Holm p = ") and "unadjusted CI excludes 0" in text


# ---------------------------------------------------------------- report.py on a fake store
def _fake_store(tmp_path: Path, split_baseline: bool = False) -> tuple[str, str]:
    """A sweep as driver/tracking.py logs it: a parent run, child runs with seeds/conditions
    (with `split_baseline`, the independent trials are a sweep of their own: fake-baseline)."""
    from mlflow.entities import Metric, Param, RunTag
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlruns.db'}"
    client = MlflowClient(uri)
    exp = client.create_experiment(
        "kdsweep/fake-sweep", artifact_location=(tmp_path / "artifacts").as_uri()
    )
    parent = client.create_run(exp, run_name="fake-sweep", tags={"task": "text"}).info.run_id
    base_exp, base_parent = exp, parent
    if split_baseline:
        base_exp = client.create_experiment("kdsweep/fake-baseline")
        base_parent = client.create_run(base_exp, tags={"task": "text"}).info.run_id
    # (condition, temperature, accuracy offset); independent ignores T but logs it like Tune does
    configs = [("independent", 4.0, 0.0), ("soft", 2.0, 0.0), ("soft", 4.0, 0.06)]
    noise = [0.0, 0.01, -0.01, 0.005, -0.004]
    for cond, temp, gain in configs:
        for seed in range(5):
            acc = 0.70 + gain + noise[seed] + (0.002 * seed if cond == "soft" and gain else 0)
            if cond == "soft" and not gain:
                acc = 0.70 + noise[seed]  # identical to the baseline, seed by seed
            name = f"{cond} T={temp:g} L2-H128 s{seed}"
            in_base = cond == "independent"
            tags = {"mlflow.parentRunId": base_parent if in_base else parent, "condition": cond}
            tags.update(student="L2-H128", dataset="fortunes", task="text")
            run = client.create_run(base_exp if in_base else exp, run_name=name, tags=tags)
            run = run.info.run_id
            params = {"condition": cond, "student": "L2-H128", "seed": seed}
            params.update(temperature=temp, alpha=0.9, epochs=3, task="text")
            client.log_batch(run, params=[Param(k, str(v)) for k, v in params.items()])
            metrics = []
            for epoch in (1, 2, 3):
                a = acc - 0.1 * (3 - epoch)
                metrics += [
                    Metric("dev_accuracy", a, 0, epoch),
                    Metric("dev_f1", a - 0.05, 0, epoch),
                ]
                metrics += [Metric("train_seconds", 2.0 * epoch, 0, epoch)]
            final = {"attr_cosine": 0.4 + gain, "attr_spearman": 0.3, "throughput": 900.0}
            final.update(latency_ms=35.0, size_mb=16.7, params=4386694)
            metrics += [Metric(k, v, 0, 3) for k, v in final.items()]
            client.log_batch(run, metrics=metrics, tags=[RunTag("epochs_run", "3")])
            client.set_terminated(run, "FINISHED")
    # an ASHA-pruned and a failed trial are left out of the statistics
    pruned = client.create_run(
        exp,
        run_name="soft T=8 L2-H128 s0",
        tags={"mlflow.parentRunId": parent, "condition": "soft"},
    ).info.run_id
    client.log_batch(
        pruned,
        params=[Param("seed", "0"), Param("temperature", "8.0"), Param("condition", "soft")],
        metrics=[Metric("dev_accuracy", 0.3, 0, 1)],
        tags=[RunTag("stopped_by", "asha")],
    )
    client.set_terminated(pruned, "FINISHED")
    failed = client.create_run(exp, tags={"mlflow.parentRunId": parent}).info.run_id
    client.set_terminated(failed, "FAILED")
    client.set_terminated(parent, "FINISHED")
    return uri, parent


@pytest.mark.trial
def test_report_on_a_fake_store(tmp_path):
    from mlflow.tracking import MlflowClient

    uri, parent = _fake_store(tmp_path)
    out = tmp_path / "report"
    rc = report.main(["fake-sweep", "--mlflow-uri", uri, "--out", str(out)])
    assert rc == 0
    md = (out / "report.md").read_text()
    assert "| student | condition | temperature | n | accuracy | F1 | attr cos |" in md
    assert "| L2-H128 | independent | 4 | 5 | 0.700 ± 0.0" in md
    assert "| L2-H128 | soft | 4 | 5 | 0.764 ± 0.0" in md
    assert "1 failed, 1 pruned by ASHA" in md
    # soft T=2 equals the baseline seed by seed; soft T=4 is clearly better
    assert "- soft T=2 L2-H128 vs independent T=4 L2-H128: accuracy +0.0000" in md
    line_t2 = next(ln for ln in md.splitlines() if ln.startswith("- soft T=2"))
    assert "not distinguishable (Holm p = 1; 95% CI includes 0)" in line_t2
    line_t4 = next(ln for ln in md.splitlines() if ln.startswith("- soft T=4"))
    assert "significant: better than independent" in line_t4 and "n = 5 seeds" in line_t4
    pngs = {p.name for p in out.glob("*.png")}
    assert {
        "metric_by_method.png",
        "size_vs_metric.png",
        "learning_curves.png",
        "temperature_curve.png",
    } <= pngs
    assert "alpha_curve.png" not in pngs  # alpha does not vary
    for p in pngs:
        assert f"]({p})" in md
        assert (out / p).stat().st_size > 5000
    csv_text = (out / "report.csv").read_text()
    assert "dev_accuracy_low" in csv_text.splitlines()[0]
    # logged on the parent run
    client = MlflowClient(uri)
    logged = {Path(f.path).name for f in client.list_artifacts(parent, "report")}
    assert {"report.md", "report.csv", "metric_by_method.png"} <= logged


@pytest.mark.trial
def test_report_joins_a_baseline_sweep(tmp_path):
    """The independent arm run as its own sweep (transfer_independent) joins via --baseline."""
    uri, _ = _fake_store(tmp_path, split_baseline=True)
    alone = report.build_report("fake-sweep", uri, tmp_path / "a", log_artifacts=False)
    assert "No paired comparison" in alone.read_text() and "--baseline" in alone.read_text()
    joined = report.build_report(
        "fake-sweep", uri, tmp_path / "b", log_artifacts=False, baselines=("fake-baseline",)
    ).read_text()
    line_t4 = next(ln for ln in joined.splitlines() if ln.startswith("- soft T=4"))
    assert "significant: better than independent" in line_t4 and "n = 5 seeds" in line_t4


@pytest.mark.trial
def test_report_unknown_sweep_names_the_known_ones(tmp_path):
    uri, _ = _fake_store(tmp_path)
    with pytest.raises(SystemExit) as e:
        report.build_report("nope", uri, tmp_path / "out")
    assert "kdsweep/fake-sweep" in str(e.value)


# ---------------------------------------------------------------- the epoch loop reports them
@pytest.mark.trial
def test_text_trial_reports_analysis_at_the_final_epoch(tmp_path, small_text):
    from trainables.text.trainable import TEXT_TRAINABLES

    independent = TEXT_TRAINABLES["independent"]  # the record: a dict in, typed config built
    from trainables.tune_io import local_session

    cfg = {**small_text, "condition": "independent", "epochs": 2, "attribution_examples": 8}
    cfg.update(student="L2-H128", student_init="random", attributions=True)
    with local_session(tmp_path) as s:
        independent(cfg)
    first, last = s.results
    keys = {"attr_cosine", "attr_spearman", "throughput", "latency_ms", "analysis_seconds"}
    assert not keys & set(first)
    assert keys <= set(last)
    assert -1.0 <= last["attr_cosine"] <= 1.0 and -1.0 <= last["attr_spearman"] <= 1.0
    assert last["throughput"] > 0 and last["size_mb"] > 0 and last["params"] > 0
    # the teacher's attributions are cached once beside it in the store
    cached = list((Path(small_text["cache_dir"]) / "teachers").glob("*/attr_dev_n8_s16_*.pt"))
    assert len(cached) == 1
    with local_session(tmp_path / "again") as s2:
        independent({**cfg, "attribution_every": 1, "attribution_examples": 0})
    assert all("throughput" in r and "attr_cosine" not in r for r in s2.results)


@pytest.mark.trial
def test_a_search_trial_skips_attributions_and_its_checkpoint_gives_them(tmp_path, small_text):
    """`attributions` off (a search's default): the final epoch reports efficiency and its
    analysis seconds, no IG; the answer computes them from the checkpoint afterwards (the
    summary's best trial, sweeps/report.py) with the values a trial would have reported."""
    from driver.summary import checkpoint_attributions
    from trainables.text.trainable import TEXT_TRAINABLES

    independent = TEXT_TRAINABLES["independent"]  # the record: a dict in, typed config built
    from trainables.tune_io import local_session

    cfg = {**small_text, "condition": "independent", "epochs": 1, "attribution_examples": 8}
    cfg.update(student="L2-H128", student_init="random", task="text")
    with local_session(tmp_path / "off") as off:
        independent(cfg)
    (last,) = off.results
    assert "throughput" in last and last["analysis_seconds"] >= 0
    assert not [k for k in last if k.startswith("attr_")]
    got = checkpoint_attributions(cfg, off.last_checkpoint)
    assert set(got) == {"attr_cosine", "attr_spearman"}
    with local_session(tmp_path / "on") as on:
        independent({**cfg, "attributions": True})
    (reported,) = on.results
    for k in got:  # same seed, same checkpoint weights: the same similarity
        assert got[k] == pytest.approx(reported[k], abs=1e-4)
    assert checkpoint_attributions({**cfg, "task": "asr"}, off.last_checkpoint) == {}


@pytest.mark.unit
def test_the_confirm_stage_asks_its_text_trials_for_attributions():
    """The search skips attributions; the confirm stage's trials (the answer) compute them,
    and a speech arm, whose config has no such field, is left as it was."""
    from driver.confirm import choose_arms
    from driver.space import parse_space

    raw = {"task": "text", "condition": {"grid": ["independent", "soft"]}}
    space = parse_space(raw, "t.yaml")
    trials = [
        ({"task": "text", "condition": "soft", "temperature": 2.0, "seed": 0}, 0.6, "finished"),
        ({"task": "text", "condition": "independent", "seed": 0}, 0.5, "finished"),
    ]
    arms = choose_arms(trials, space, k=1, epochs=3)
    assert [a.config["attributions"] for a in arms] == [True, True]
    speech = parse_space({"task": "asr", "condition": {"grid": ["independent", "soft"]}}, "a")
    trials = [({**c, "task": "asr"}, v, s) for c, v, s in trials]
    assert not any("attributions" in a.config for a in choose_arms(trials, speech, 1, 3))


@pytest.mark.trial
def test_the_report_computes_the_attributions_a_search_skipped(tmp_path, small_text):
    """A search trial without attr_* (its MLflow run, its folder under the sweep's storage):
    the report computes them from its checkpoint and logs them on its run, once."""
    import json

    from mlflow.tracking import MlflowClient

    from driver.reporting.attributions import fill_attributions
    from driver.reporting.load import load_sweep
    from trainables.text.trainable import TEXT_TRAINABLES

    independent = TEXT_TRAINABLES["independent"]  # the record: a dict in, typed config built
    from trainables.tune_io import local_session

    storage, tid = tmp_path / "runs", "abc12_00000"
    cfg = {**small_text, "condition": "independent", "epochs": 1, "attribution_examples": 8}
    cfg.update(student="L2-H128", student_init="random", task="text")
    with local_session(storage / "s" / tid) as trial:
        independent(cfg)
    (storage / "s" / tid / "params.json").write_text(json.dumps(cfg))
    client = MlflowClient(f"sqlite:///{tmp_path / 'm.db'}")
    exp = client.create_experiment("kdsweep/s", artifact_location=str(tmp_path / "art"))
    parent = client.create_run(exp, tags={"task": "text"}).info.run_id
    tags = {"mlflow.parentRunId": parent, "condition": "independent", "kdsweep.trial_id": tid}
    run = client.create_run(exp, run_name="independent L2-H128", tags=tags).info.run_id
    client.log_param(run, "seed", "0")
    client.log_metric(run, "dev_accuracy", trial.results[-1]["dev_accuracy"], step=1)
    for r in (run, parent):
        client.set_terminated(r)

    quiet = {"log": lambda m: None}
    assert fill_attributions(client, load_sweep(client, "s"), tmp_path / "elsewhere", **quiet) == 1
    sweep = load_sweep(client, "s")
    assert fill_attributions(client, sweep, storage, keep=False, **quiet) == 0
    assert -1 <= sweep.trials[0].metrics["attr_cosine"] <= 1  # in the report, not logged
    assert "attr_cosine" not in client.get_run(run).data.metrics
    assert fill_attributions(client, load_sweep(client, "s"), storage, **quiet) == 0
    logged = client.get_run(run).data.metrics
    assert logged["attr_cosine"] == pytest.approx(sweep.trials[0].metrics["attr_cosine"])
    said: list[str] = []
    assert fill_attributions(client, load_sweep(client, "s"), storage, log=said.append) == 0
    assert said == []  # kept on the run: nothing computed again
