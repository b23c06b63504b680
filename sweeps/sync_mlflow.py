"""Send a sweep's pending MLflow events (after an outage): python -m sweeps.sync_mlflow <dir>."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from driver.tracking import Journal, default_tracking_uri

PROJECT_DIR = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("sweep_dir", type=Path, help="runs/<sweep name>")
    p.add_argument("--mlflow-uri", help="default: $MLFLOW_TRACKING_URI or sqlite:///mlruns.db")
    args = p.parse_args(argv)
    journal_file = args.sweep_dir / "mlflow_journal.jsonl"
    if not journal_file.is_file():
        print(f"error: {journal_file} not found (not a kdsweep sweep directory?)", file=sys.stderr)
        return 2
    first = json.loads(journal_file.read_text().splitlines()[0])
    name = first.get("name", args.sweep_dir.name)
    uri = args.mlflow_uri or default_tracking_uri(PROJECT_DIR)
    journal = Journal(
        args.sweep_dir, uri, f"kdsweep/{name}", (PROJECT_DIR / "mlartifacts").as_uri()
    )
    before = journal.pending()
    ok = journal.sync(force=True)
    print(f"{before - journal.pending()} event(s) sent, {journal.pending()} pending")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
