"""Sanity warnings about a sweep's answer: pure functions, each a warning line or None.

The sweep prints every warning and logs it as an MLflow tag; here they are only computed, from
numbers the sweep already has (dev size, majority-class rate, teacher accuracy, per-seed dev
values, raw lengths), with scipy.stats:

- `teacher_warning`: the teacher is not better than the majority-class rate by more than its
  Wilson interval - distillation from it measures nothing;
- `asr_teacher_warning`: the speech teacher's dev WER (greedy, or beam + LM where better) is
  no better than an empty transcript's (WER 1.0: every reference word deleted);
- `tie_warning`: no difference between the configs is distinguishable (Kruskal-Wallis over
  per-seed values; with one seed, best vs worst within the dev set's binomial noise);
- `small_dev_warning`: the dev set is too small for the best-vs-baseline gap being claimed (the
  minimum detectable difference of two proportions at 80% power, alpha .05, exceeds it);
- `length_warning`: the share of texts cut (or skipped) by `max_chars` / `max_len`, with the
  median length; `dropped_utterances_warning`: speech utterances dropped for length.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
from scipy import stats


def wilson_interval(successes: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion (scipy.stats.binomtest)."""
    ci = stats.binomtest(int(successes), int(n)).proportion_ci(confidence, method="wilson")
    return float(ci.low), float(ci.high)


def teacher_warning(
    teacher_accuracy: float, n_dev: int, majority_rate: float, confidence: float = 0.95
) -> str | None:
    """A warning when the teacher's dev accuracy is not above the majority-class rate by more
    than its Wilson interval (the interval's low end does not clear the rate)."""
    if n_dev <= 0:
        return None
    low, high = wilson_interval(round(teacher_accuracy * n_dev), n_dev, confidence)
    if low > majority_rate:
        return None
    return (
        f"teacher dev accuracy {teacher_accuracy:.3f} ({confidence:.0%} CI {low:.3f}-{high:.3f},"
        f" n={n_dev}) is not above the majority-class rate {majority_rate:.3f}: distillation "
        "from it measures nothing"
    )


def asr_teacher_warning(
    dev_wer: float, dev_wer_beam: float = math.nan, kind: str = "teacher"
) -> str | None:
    """A warning when the speech teacher (or twin) transcribes dev no better than emitting
    nothing: an empty hypothesis scores WER exactly 1.0 (all deletions), so a teacher at or
    above it (a random-weight BiLSTM scored 1.19) teaches no words. The better of its greedy
    and beam + LM WER counts (an imported model may only be usable with the LM)."""
    got = [w for w in (dev_wer, dev_wer_beam) if math.isfinite(w)]
    if not got or min(got) < 1.0:
        return None
    how = f"{dev_wer:.3f}" + (
        f" (beam + LM {dev_wer_beam:.3f})" if math.isfinite(dev_wer_beam) else ""
    )
    return (
        f"{kind} dev WER {how} is no better than an empty transcript (WER 1.0): it has not "
        "learned to recognise words, so distillation from it measures nothing (train it longer, "
        "or check the imported weights)"
    )


def tie_warning(
    values: Mapping[str, Sequence[float]], n_dev: int | None = None, alpha: float = 0.05
) -> str | None:
    """A warning when the configs' dev values cannot be told apart.

    `values`: config label -> its per-seed dev values. With two or more values for every config,
    a Kruskal-Wallis test across the configs (p >= alpha: tie). With one value for some config,
    the best and worst are compared as two proportions on `n_dev` examples each (two-sided
    z-test, p >= alpha: tie); without `n_dev` only exactly equal values count as a tie.
    """
    groups = {k: [float(v) for v in vs if math.isfinite(float(v))] for k, vs in values.items()}
    groups = {k: vs for k, vs in groups.items() if vs}
    if len(groups) < 2:
        return None
    flat = [v for vs in groups.values() for v in vs]
    n = len(groups)
    if max(flat) == min(flat):
        return f"all {n} configs tie: every dev value is {flat[0]:.4f}"
    if all(len(vs) >= 2 for vs in groups.values()):
        p = float(stats.kruskal(*groups.values()).pvalue)
        if p < alpha:
            return None
        return (
            f"all {n} configs tie: no difference between them is distinguishable "
            f"(Kruskal-Wallis p={p:.2f} over per-seed dev values)"
        )
    if not n_dev:
        return None
    means = {k: float(np.mean(vs)) for k, vs in groups.items()}
    best, worst = max(means.values()), min(means.values())
    p = two_proportion_p(best, worst, n_dev)
    if p < alpha:
        return None
    return (
        f"all {n} configs tie: best {best:.4f} and worst {worst:.4f} are within the binomial "
        f"noise of {n_dev} dev examples (p={p:.2f})"
    )


def two_proportion_p(p1: float, p2: float, n: int) -> float:
    """Two-sided p of a z-test that two proportions, each measured on n examples, differ."""
    pooled = (p1 + p2) / 2
    se = math.sqrt(2 * pooled * (1 - pooled) / n) if 0 < pooled < 1 else 0.0
    if se == 0:
        return 1.0 if p1 == p2 else 0.0
    return float(2 * stats.norm.sf(abs(p1 - p2) / se))


def detectable_difference(n: int, p: float, alpha: float = 0.05, power: float = 0.8) -> float:
    """Minimum detectable difference between two proportions near `p`, each measured on n
    examples, at the given power and two-sided alpha (normal approximation)."""
    p = min(max(p, 1e-6), 1 - 1e-6)
    z = stats.norm.ppf(1 - alpha / 2) + stats.norm.ppf(power)
    return float(z * math.sqrt(2 * p * (1 - p) / n))


def small_dev_warning(
    best: float, baseline: float, n_dev: int, alpha: float = 0.05, power: float = 0.8
) -> str | None:
    """A warning when the dev set is too small to detect the best-vs-baseline gap claimed."""
    if n_dev <= 0:
        return None
    mdd = detectable_difference(n_dev, (best + baseline) / 2, alpha, power)
    gap = abs(best - baseline)
    if gap >= mdd:
        return None
    return (
        f"dev set too small for the differences claimed: with n={n_dev} the minimum detectable "
        f"difference is {mdd:.3f} ({power:.0%} power, alpha {alpha:g}); the best-vs-baseline "
        f"gap is {gap:.3f}"
    )


def length_warning(
    lengths: Sequence[float],
    limit: float,
    split: str,
    limit_name: str = "max_chars",
    what: str = "texts",
    unit: str = "characters",
    action: str = "cut",
) -> str | None:
    """The share of a split's items longer than `limit` (so cut, skipped or dropped), with the
    median length; None when no item is longer."""
    if len(lengths) == 0:
        return None
    arr = np.asarray(lengths)
    over = int((arr > limit).sum())
    if not over:
        return None
    return (
        f"{split}: {over / len(arr):.0%} of {what} ({over} of {len(arr)}) are longer than "
        f"{limit_name}={limit} and were {action} (median length {np.median(arr):g} {unit})"
    )


def dropped_utterances_warning(
    lengths: Sequence[float],
    limit: float,
    split: str,
    limit_name: str = "max_frames",
    unit: str = "frames",
) -> str | None:
    """Speech: the count and share of a split's utterances dropped for being too long."""
    return length_warning(lengths, limit, split, limit_name, "utterances", unit, "dropped")


def ctc_dropped_warning(
    frames: Sequence[int], targets: Sequence[Sequence[int]], split: str, stack: int
) -> str | None:
    """Speech: utterances whose transcript needs more CTC frames than the model outputs
    (labels + one blank between each repeated pair > frames after stacking). The CTC loss zeroes
    them (`zero_infinity`), so they are dropped from training without an error: say how many."""
    need = [len(t) + sum(1 for a, b in zip(t[:-1], t[1:]) if a == b) for t in targets]
    bad = [i for i, (n, f) in enumerate(zip(need, frames)) if n > f]
    if not bad:
        return None
    labels = np.median([need[i] for i in bad])
    have = np.median([frames[i] for i in bad])
    return (
        f"{split}: {len(bad) / len(need):.0%} of utterances ({len(bad)} of {len(need)}) need more "
        f"CTC frames than the model outputs at stack={stack} (median {labels:g} labels vs "
        f"{have:g} frames) and are dropped from the CTC loss; lower `stack`"
    )
