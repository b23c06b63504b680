"""build_report(): load the sweep from MLflow, compare, write report.md/.csv and the plots,
and log them under `report/` on the sweep's parent run."""

from __future__ import annotations

from pathlib import Path

from driver.reporting.attributions import fill_attributions
from driver.reporting.budget import add_teacher_cost
from driver.reporting.charts import comparison_charts
from driver.reporting.compare import comparisons
from driver.reporting.load import load_sweep
from driver.reporting.markdown import markdown, write_csv
from driver.reporting.plots import make_plots

PROJECT_DIR = Path(__file__).resolve().parents[2]


def build_report(
    name: str,
    tracking_uri: str | None = None,
    out: Path | None = None,
    include_pruned: bool = False,
    log_artifacts: bool = True,
    baselines: tuple[str, ...] = (),
    storage: Path | None = None,
    attributions: bool = True,
) -> Path:
    """Write report.md (+ report.csv, PNGs) for a sweep; returns the report.md path.
    `attributions`: compute the attr_* metrics the trials lack, from their checkpoints under
    `storage` (default runs/; see driver/reporting/attributions.py)."""
    from mlflow.tracking import MlflowClient

    from driver.tracking import default_tracking_uri

    uri = tracking_uri or default_tracking_uri(PROJECT_DIR)
    client = MlflowClient(uri)
    sweep = load_sweep(client, name, include_pruned, baselines)
    out = Path(out) if out else PROJECT_DIR / "runs" / sweep.name / "report"
    out.mkdir(parents=True, exist_ok=True)
    if not sweep.trials:
        excl = ", ".join(f"{v} {k}" for k, v in sweep.excluded.items()) or "no child runs"
        text = f"# Sweep report: {sweep.name}\n\nNo finished trials to report ({excl}).\n"
        plots = []
    else:
        if attributions:
            runs = Path(storage) if storage else PROJECT_DIR / "runs"
            fill_attributions(client, sweep, runs, keep=log_artifacts)
        cost = add_teacher_cost(sweep)  # before the tables: the `train s (incl. teacher)` column
        comps = comparisons(sweep)
        plots = comparison_charts(sweep, comps, out) + make_plots(sweep, client, out)
        text = markdown(sweep, comps, plots, uri, cost)
        write_csv(sweep, out / "report.csv")
    md = out / "report.md"
    md.write_text(text)
    if log_artifacts:
        for p in [md, out / "report.csv", *plots]:
            if p.is_file():
                client.log_artifact(sweep.parent_id, str(p), artifact_path="report")
    return md
