"""Send a sweep's pending MLflow events (after an outage): python -m sweeps.sync_mlflow <dir>."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # runnable without installing

from driver.sync import sync_sweep  # noqa: E402
from kdsweep.errors import KDSweepError  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("sweep_dir", type=Path, help="runs/<sweep name>")
    p.add_argument("--mlflow-uri", help="default: $MLFLOW_TRACKING_URI or sqlite:///mlruns.db")
    args = p.parse_args(argv)
    try:
        sent, pending = sync_sweep(args.sweep_dir, args.mlflow_uri)
    except KDSweepError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"{sent} event(s) sent, {pending} pending")
    return 0 if pending == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
