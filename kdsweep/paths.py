"""Where kdsweep keeps its caches (datasets, tokens, teachers, speech corpora)."""

from __future__ import annotations

import os
from pathlib import Path


def cache_root(cache_dir: str = "") -> Path:
    """`cache_dir`, else $KDSWEEP_HOME, else ./.kdsweep; always absolute (Ray workers chdir)."""
    root = cache_dir or os.environ.get("KDSWEEP_HOME") or ".kdsweep"
    path = Path(root).expanduser().resolve()
    path.mkdir(parents=True, exist_ok=True)
    return path
