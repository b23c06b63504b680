"""The classical baseline: TF-IDF + logistic regression (scikit-learn), no neural network.

It checks the data against the literature (TextGCN's Table 2 has a TF-IDF + LR row on 20NG, R8
and R52) in seconds, before any model is fine-tuned:

    row = tfidf_logreg(splits)                  # scikit-learn's defaults: nothing tuned
    row = tfidf_logreg(splits, c_grid=C_GRID)   # C chosen on dev (the best dev accuracy)

Both fit on the train split (dev is carved from it: the same rows the students see), score dev
and then test once. Accuracy carries a 95% Wilson interval over the test documents.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import asdict, dataclass

from kdsweep.analysis.sanity import wilson_interval

C_GRID = (0.1, 0.3, 1.0, 3.0, 10.0, 30.0, 100.0)  # inverse regularisation strength, log-spaced


@dataclass
class BaselineRow:
    """One fitted baseline: its settings, dev and test accuracy (+ Wilson CI), seconds."""

    name: str
    C: float
    dev_accuracy: float
    test_accuracy: float
    test_ci: tuple[float, float]
    n_test: int
    seconds: float
    converged: bool

    def as_dict(self) -> dict:
        return asdict(self)


def _fit(x, y: list[int], C: float):
    """LogisticRegression(C) with scikit-learn's other defaults (lbfgs, max_iter 100, L2) on
    TF-IDF features; returns the model and whether lbfgs converged."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConvergenceWarning)
        model = LogisticRegression(C=C).fit(x, y)
    converged = not any(issubclass(w.category, ConvergenceWarning) for w in caught)
    return model, converged


def _accuracy(model, x, rows) -> float:
    pred = model.predict(x)
    return float(sum(int(p == y) for p, (_, y) in zip(pred, rows)) / len(rows))


def tfidf_logreg(splits, c_grid: tuple[float, ...] | None = None) -> BaselineRow:
    """Fit on `splits.train`; with `c_grid`, C is the grid value with the best dev accuracy
    (ties: the smaller C); test is scored once, for the chosen model only."""
    from sklearn.feature_extraction.text import TfidfVectorizer

    t0 = time.perf_counter()
    tfidf = TfidfVectorizer().fit([t for t, _ in splits.train])  # defaults; fit on train only
    x_train, x_dev = (tfidf.transform([t for t, _ in rows]) for rows in (splits.train, splits.dev))
    y = [label for _, label in splits.train]
    best = None
    for C in c_grid or (1.0,):
        model, converged = _fit(x_train, y, C)
        dev = _accuracy(model, x_dev, splits.dev)
        if best is None or dev > best[1]:
            best = (C, dev, model, converged)
    C, dev, model, converged = best
    test = _accuracy(model, tfidf.transform([t for t, _ in splits.test]), splits.test)
    n = len(splits.test)
    return BaselineRow(
        name="TF-IDF + LR, C on dev" if c_grid else "TF-IDF + LR, defaults",
        C=C,
        dev_accuracy=dev,
        test_accuracy=test,
        test_ci=wilson_interval(round(test * n), n),
        n_test=n,
        seconds=time.perf_counter() - t0,
        converged=converged,
    )
