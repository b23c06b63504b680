"""Send a sweep's pending MLflow events after an outage (sweeps/sync_mlflow.py's work)."""

from __future__ import annotations

import json
from pathlib import Path

from driver.plan import PROJECT_DIR
from driver.tracking import JOURNAL_FILE, Journal, default_tracking_uri
from kdsweep.errors import KDSweepError


def sync_sweep(sweep_dir: Path, tracking_uri: str | None = None) -> tuple[int, int]:
    """Replay the sweep's journal into MLflow: (events sent, events still pending)."""
    journal_file = sweep_dir / JOURNAL_FILE
    if not journal_file.is_file():
        raise KDSweepError(f"{journal_file} not found (not a kdsweep sweep directory?)")
    first = json.loads(journal_file.read_text().splitlines()[0])
    name = first.get("name", sweep_dir.name)
    uri = tracking_uri or default_tracking_uri(PROJECT_DIR)
    artifacts = (PROJECT_DIR / "mlartifacts").as_uri()
    journal = Journal(sweep_dir, uri, f"kdsweep/{name}", artifacts)
    before = journal.pending()
    journal.sync(force=True)
    return before - journal.pending(), journal.pending()
