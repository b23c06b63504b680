"""Comparison report of a sweep, read back from MLflow: is distillation better, and by how much?

    python sweeps/report.py temperature-text-fortunes            # experiment kdsweep/<name>
    python sweeps/report.py kdsweep/strategy-text-fortunes --mlflow-uri sqlite:///mlruns.db
    python sweeps/report.py compression-text-fortunes --out /tmp/compression-report
    python sweeps/report.py transfer-text-fortunes --baseline transfer_independent-text-fortunes

Per config (condition, student, varied params), aggregated over seeds (`--seeds N`): the mean
and the 95% t-interval of the dev metric (accuracy and F1, or WER and CER for `task: asr`),
beam + LM WER/CER next to the greedy ones for speech, attribution similarity to the teacher
(computed here from each trial's best checkpoint when the search skipped it, its default),
training time (also with the teacher's training amortised over the trials that used it),
inference speed and size, and a row for the teacher (speech: and the twin). A budget check says
whether every config and its baseline ran the same epochs and optimizer steps. Each distilled
config is compared with the `independent` baseline of the same student, paired by seed: mean
difference with its 95% t-interval and a bootstrap CI, paired t-test with a Wilcoxon
signed-rank check, Cohen's d_z, and Holm's correction over the configs compared with one
baseline ("not distinguishable" unless the Holm-adjusted p < 0.05), drawn as a chart of the
gains with their CIs (gain_vs_baseline.png; next to attribution_similarity.png). Writes report.md,
report.csv and PNG plots to --out (default runs/<sweep>/report) and logs them under `report/`
on the sweep's parent run. The work is done by the driver/reporting/ package.

Only trials that ran to the end count (FINISHED, not stopped by ASHA), because a pruned trial's
last metric is from an earlier epoch; `--include-pruned` counts them too. For a clean comparison
run the sweep with `--seeds 5 --no-asha`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

PROJECT_DIR = Path(__file__).resolve().parents[1]
if __name__ == "__main__":
    sys.path.insert(0, str(PROJECT_DIR))  # runnable without installing

from driver.reporting import build_report  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="sweeps/report.py",
        description=__doc__.strip().splitlines()[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("sweep", help="sweep name (experiment kdsweep/<sweep>) or experiment name")
    p.add_argument("--mlflow-uri", help="tracking URI (default $MLFLOW_TRACKING_URI or sqlite)")
    p.add_argument("--out", type=Path, help="output dir (default runs/<sweep>/report)")
    p.add_argument("--include-pruned", action="store_true", help="count ASHA-pruned trials")
    p.add_argument("--no-log", action="store_true", help="do not log on the parent run")
    p.add_argument("--storage", type=Path, help="the sweeps' folder (default runs/)")
    no_attr = "do not compute the attribution similarity the trials lack (from checkpoints)"
    p.add_argument("--no-attributions", action="store_true", help=no_attr)
    joins = "another sweep whose trials join this one (e.g. its `independent` arm): repeatable"
    p.add_argument("--baseline", action="append", default=[], help=joins)
    args = p.parse_args(argv)
    md = build_report(
        args.sweep,
        args.mlflow_uri,
        args.out,
        args.include_pruned,
        not args.no_log,
        tuple(args.baseline),
        args.storage,
        not args.no_attributions,
    )
    print(md.read_text())
    print(f"[kdsweep] report: {md}" + ("" if args.no_log else " (logged on the parent run)"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
