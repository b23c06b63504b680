"""The comparison report of a sweep, read back from MLflow (`python sweeps/report.py <sweep>`).

load.py      the sweep's runs from MLflow, grouped into configs (trials differing by seed)
stats.py     t-intervals, paired tests, bootstrap CI, Holm, effect size (scipy.stats)
compare.py   each distilled config against its `independent` baseline
markdown.py  report.md and report.csv
plots.py     the PNG charts
build.py     build_report(): all of the above, logged on the sweep's parent run
"""

from sweeps.reporting.build import build_report

__all__ = ["build_report"]
