"""Feature KD with its default weights learns the task (issue: hidden-state and attention KD sat
at chance, loss_ce = ln K, because the feature term rewarded a student that ignores its input).

A random-init 2-layer student on the small fortunes config (48 steps): independent training
starts to learn in the 4th epoch (its mean training CE by epoch, measured: 1.841 1.814 1.718
1.448). Hidden and cosine KD at their default weights must leave ln 6 too and stay near
independent training. Measured: before the fix hidden KD ended at 1.797 (above ln 6 = 1.792:
nothing learned); after it hidden 1.748, cosine 1.696 (both lag independent training by about an
epoch, as on the 714-text case; bench/feature_kd.py). Attention KD (content keys, weight 0.1)
is not asserted here: in these 48 steps it ended at 1.797, though on the 714-text case and on
R8 it tracked independent training epoch by epoch.
"""

from __future__ import annotations

import math

import pytest
import torch

from trainables.text.trainable import TEXT_TRAINABLES
from trainables.tune_io import local_session

pytestmark = pytest.mark.trial

LN_K = math.log(6)  # six fortune topics: CE of a student that knows nothing
# ~1 s an epoch: 192 rows, batch 16, 4 epochs = 48 steps at the default lr schedule shape
TINY = {
    "student": "L2-H128",
    "student_init": "random",
    "lr": 3e-3,
    "epochs": 4,
    "attribution_examples": 0,
    "threads": 1,
}


@pytest.fixture(scope="module", autouse=True)
def _restore_torch_threads():
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def final_ce(small_text, tmp_path_factory):
    """cond -> the last epoch's mean training CE (each condition trained once)."""
    done: dict[str, float] = {}

    def run(cond: str) -> float:
        if cond not in done:
            with local_session(tmp_path_factory.mktemp(f"fkd-{cond}")) as s:
                TEXT_TRAINABLES[cond]({**small_text, **TINY})
            done[cond] = s.results[-1]["loss_ce"]
        return done[cond]

    return run


@pytest.mark.parametrize("cond", ["hidden", "cosine"])
def test_feature_kd_at_default_weight_learns_like_independent(final_ce, cond):
    base = final_ce("independent")
    assert base < LN_K - 0.2, f"independent did not learn here (CE {base:.3f}): no test"
    got = final_ce(cond)
    # below chance (before the fix hidden KD ended above ln 6), and near independent training
    assert got < LN_K - 0.03, f"{cond}: CE {got:.3f} stayed at ln 6 = {LN_K:.3f}"
    assert got < base + 0.35, f"{cond}: CE {got:.3f} vs independent {base:.3f}"
