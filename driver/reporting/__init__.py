"""The comparison report of a sweep, read back from MLflow (`python sweeps/report.py <sweep>`).

load.py      the sweep's runs from MLflow, grouped into configs (trials differing by seed)
stats.py     t-intervals, paired tests, bootstrap CI, Holm, effect size (scipy.stats)
compare.py   each distilled config against its `independent` baseline
budget.py    equal epochs/steps per config and baseline; train seconds incl. the teacher's share
markdown.py  report.md and report.csv
charts.py    the gain-over-baseline and attribution-similarity charts
attributions.py  attribution similarity the search's trials skipped, from their checkpoints
plots.py     the other PNG charts
build.py     build_report(): all of the above, logged on the sweep's parent run
"""

from driver.reporting.build import build_report

__all__ = ["build_report"]
