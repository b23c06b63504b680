"""GroupASHA's saved state: the rung decision's plain data (driver/rungs.py) plus the seeds
paused at a rung, as JSON in the sweep folder, written atomically on every change.

Ray 2.60 does not save a scheduler with the experiment state (`Tuner.restore` brings back the
scheduler pickled when the Tuner was built), so GroupASHA reads this file back on its first
call after a restore. A file left by another Tuner (another `token`) is ignored. The name must
not end in .json or .pkl: Tune's restore copies those from the experiment folder to its staging
folder and uploads that stale copy back over the experiment folder at every save.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from driver.rungs import RungState

STATE_FILE = "group_asha.state"  # not *.json/*.pkl: Tune re-uploads stale copies of those
VERSION = 2  # 1: a pickled GroupASHA (kdsweep <= 0.2); not read back


@dataclass
class SavedState:
    token: str  # the Tuner this state belongs to
    rungs: RungState = field(default_factory=RungState)
    waiting: dict[str, int] = field(default_factory=dict)  # paused trial id -> rung awaited
    params: dict[str, Any] = field(default_factory=dict)  # the decision's settings (Rungs)


def check_path(path: str | os.PathLike | None) -> str | None:
    """The state path as a string; a .json/.pkl name is refused (see the module docstring)."""
    if path and str(path).endswith((".json", ".pkl")):
        raise ValueError(
            f"GroupASHA state_path {path}: use another suffix (e.g. .state); Tune's "
            "restore would upload a stale copy of a .json/.pkl over it"
        )
    return str(path) if path else None


def save(path: str | os.PathLike, state: SavedState) -> None:
    """Write `state` to `path` atomically (a kill leaves the old file or the new one)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    record = {
        "version": VERSION,
        "token": state.token,
        "rungs": state.rungs.to_dict(),
        "waiting": state.waiting,
        "params": state.params,
    }
    tmp.write_text(json.dumps(record))
    os.replace(tmp, path)


def load(path: str | os.PathLike) -> SavedState | None:
    """The state at `path`; None when there is none or it cannot be read (an older format)."""
    try:
        record = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    if not isinstance(record, dict) or record.get("version") != VERSION:
        return None
    rungs = RungState.from_dict(record.get("rungs", {}))
    waiting = {k: int(v) for k, v in record.get("waiting", {}).items()}
    params = dict(record.get("params", {}))
    return SavedState(str(record.get("token", "")), rungs, waiting, params)
