"""The report's learning-curve plot: bands only where seeds support them, never outside the
metric's range."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest

from driver.reporting.plots import (
    BAND_MIN_SEEDS,
    curve_band,
    metric_range,
    plot_learning_curves,
)

pytestmark = pytest.mark.unit


def test_no_band_from_two_seeds_and_bands_clipped_to_the_metric_range():
    # 2 seeds: a t-band with one degree of freedom (it spanned -1.4 to 2.0 accuracy)
    assert curve_band({1: [0.2, 0.6], 2: [0.3, 0.7]}, (0.0, 1.0)) is None
    assert BAND_MIN_SEEDS == 3
    band = curve_band({1: [0.05, 0.5, 0.95], 2: [0.9, 0.95, 1.0]}, (0.0, 1.0))
    assert band is not None and [b[0] for b in band] == [1, 2]
    assert all(0.0 <= lo <= m <= hi <= 1.0 for _, m, lo, hi in band)
    assert band[0][2] == 0.0 and band[1][3] == 1.0  # the raw t-band leaves [0, 1] on both
    same = curve_band({1: [0.5, 0.5, 0.5]}, (0.0, 1.0))
    assert same == [(1, 0.5, 0.5, 0.5)]


def test_metric_ranges():
    assert metric_range("dev_accuracy") == (0.0, 1.0) and metric_range("dev_f1") == (0.0, 1.0)
    low, high = metric_range("dev_wer")  # WER exceeds 1 with insertions
    assert low == 0.0 and math.isinf(high)


def _fake(seeds_per_group: int):
    hist = {}
    groups = []
    for g in range(2):
        trials = []
        for s in range(seeds_per_group):
            rid = f"g{g}s{s}"
            vals = [0.2 + 0.1 * e + 0.3 * s * (g + 1) for e in range(3)]
            hist[rid] = [SimpleNamespace(step=e + 1, value=min(v, 1.0)) for e, v in enumerate(vals)]
            trials.append(SimpleNamespace(run_id=rid))
        groups.append(SimpleNamespace(trials=trials, label=f"config {g}"))
    client = SimpleNamespace(get_metric_history=lambda run_id, metric: hist[run_id])
    return SimpleNamespace(name="fake", groups=groups), client


@pytest.mark.parametrize("seeds", [2, 3])
def test_learning_curves_draw_seeds_below_three_and_stay_in_range(tmp_path, monkeypatch, seeds):
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.axes import Axes

    drawn = {"fills": [], "lines": 0}
    fill, plot = Axes.fill_between, Axes.plot

    def fill_between(self, x, lo, hi, **kw):
        drawn["fills"].append((list(lo), list(hi)))
        return fill(self, x, lo, hi, **kw)

    def plot_(self, *a, **kw):
        drawn["lines"] += 1
        return plot(self, *a, **kw)

    monkeypatch.setattr(Axes, "fill_between", fill_between)
    monkeypatch.setattr(Axes, "plot", plot_)
    sweep, client = _fake(seeds)
    out = plot_learning_curves(sweep, client, "dev_accuracy", "accuracy", tmp_path / "lc.png")
    assert out is not None and out.is_file()
    if seeds == 2:  # each seed's own curve, no band
        assert drawn["fills"] == [] and drawn["lines"] == 4
    else:  # a mean curve and a band per config, inside [0, 1]
        assert drawn["lines"] == 2 and len(drawn["fills"]) == 2
        for lo, hi in drawn["fills"]:
            assert min(lo) >= 0.0 and max(hi) <= 1.0
