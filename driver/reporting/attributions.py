"""Attribution similarity for the report's text trials that did not compute it.

A search skips Integrated-Gradients attributions (`attributions=false`, the default: they
decide nothing there and cost ~5 epochs' time). The report is where configs are compared, so
it computes them for each counted trial from its best checkpoint in the sweep's folder
(`<storage>/<sweep>/<trial id>/`) and logs them on the trial's MLflow run (not with --no-log),
so each is computed once. A trial whose folder is not on this disk keeps no attr_* (said on
the console).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from driver.reporting.load import Sweep, primary

KEY = "attr_cosine"


def fill_attributions(
    client, sweep: Sweep, storage: Path, keep: bool = True, log: Callable[[str], None] = print
) -> int:
    """Compute the attr_* metrics of `sweep`'s text trials that lack them (`keep`: and log them
    on the trials' runs); returns how many trials lack them afterwards (no checkpoint here)."""
    if sweep.task != "text":
        return 0
    todo = [t for t in sweep.trials if KEY not in t.metrics]
    if not todo:
        return 0
    from driver.summary import best_on_disk, checkpoint_attributions  # torch: only when needed

    log(f"[kdsweep] report: attribution similarity of {len(todo)} trial(s) (IG, dev probe)")
    metric, _, higher = primary(sweep.task)[0]
    missing = 0
    for t in todo:
        trial_dir = _trial_dir(storage, t.tags.get("kdsweep.trial_id", ""))
        ckpt = best_on_disk(trial_dir, metric, "max" if higher else "min") if trial_dir else None
        got = checkpoint_attributions(_config(trial_dir), ckpt) if ckpt else {}
        if not got:
            missing += 1
            continue
        for k, v in got.items() if keep else ():
            client.log_metric(t.run_id, k, v)
        t.metrics.update(got)
    if missing:
        log(f"[kdsweep] report: {missing} trial(s) without attributions (no checkpoint under "
            f"{storage}; --storage names the sweeps' folder)")  # fmt: skip
    return missing


def _trial_dir(storage: Path, trial_id: str) -> Path | None:
    """The trial's folder under any sweep of `storage` (Tune trial ids are unique)."""
    found = [p for p in Path(storage).glob(f"*/{trial_id}") if p.is_dir()] if trial_id else []
    return found[0] if len(found) == 1 else None


def _config(trial_dir: Path) -> dict:
    """The trial's config as Tune saved it beside its checkpoints."""
    return json.loads((trial_dir / "params.json").read_text())
