"""MLflow runs of sweeps/decode.py (driver/decode.py): one parent run per decode, one child run
per grid combination (`log_grid`) or per averaged member (`log_average`)."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from driver.plan import PROJECT_DIR


def client_and_experiment(tracking: tuple[str | None, str]):
    """(MlflowClient, experiment id) of `tracking` = (--mlflow-uri, experiment name); the URI
    defaults to $MLFLOW_TRACKING_URI, then the project's sqlite file."""
    from mlflow.tracking import MlflowClient

    uri, experiment = tracking
    uri = uri or os.environ.get("MLFLOW_TRACKING_URI")
    client = MlflowClient(uri or f"sqlite:///{PROJECT_DIR / 'mlruns.db'}")
    exp = client.get_experiment_by_name(experiment)
    if exp:
        return client, exp.experiment_id
    location = (PROJECT_DIR / "mlartifacts").as_uri()
    return client, client.create_experiment(experiment, artifact_location=location)


def log_grid(tracking, ckpt: Path, params: dict, greedy: dict, rows: list, best: dict) -> str:
    """One parent run (the grid, greedy and best scores) + one child run per combination."""
    from mlflow.entities import Metric, Param, RunTag

    client, exp_id = client_and_experiment(tracking)
    now, split = int(time.time() * 1000), params["split"]
    parent = client.create_run(
        exp_id,
        run_name=f"decode {ckpt.parent.name}/{ckpt.name}",
        tags={"task": "asr", "kind": "decode", "checkpoint": str(ckpt)},
    ).info.run_id
    scores = {f"greedy_{split}_{m}": greedy[m] for m in ("wer", "cer")}
    scores.update({f"best_{split}_{m}": best[f"{split}_{m}"] for m in ("wer", "cer")})
    chosen = {k: best[k] for k in ("lm_weight", "word_bonus", "beam_width")}
    client.log_batch(
        parent,
        params=[Param(k, str(v)) for k, v in params.items()],
        metrics=[Metric(k, v, now, 0) for k, v in scores.items()],
        tags=[RunTag("best", json.dumps(chosen))],
    )
    for r in rows:
        name = f"a={r['lm_weight']:g} b={r['word_bonus']:g} w={r['beam_width']}"
        child = client.create_run(
            exp_id, run_name=name, tags={"mlflow.parentRunId": parent, "task": "asr"}
        ).info.run_id
        client.log_batch(
            child,
            params=[Param(k, str(r[k])) for k in ("lm_weight", "word_bonus", "beam_width")],
            metrics=[
                Metric(k, float(r[k]), now, 0) for k in (f"{split}_wer", f"{split}_cer", "seconds")
            ],
        )
        client.set_terminated(child, "FINISHED")
    client.set_terminated(parent, "FINISHED")
    return parent


def log_average(tracking, params: dict[str, Any], rows: list[dict[str, Any]]) -> str:
    """One MLflow parent run (kind=average) + one child run per row (member or average)."""
    from mlflow.entities import Metric, Param

    client, exp_id = client_and_experiment(tracking)
    now = int(time.time() * 1000)
    trial = Path(params["trial"]).name
    parent = client.create_run(
        exp_id,
        run_name=f"average {trial} {params['average']}",
        tags={"task": "asr", "kind": "average", "checkpoint": params["trial"]},
    ).info.run_id
    client.log_batch(parent, params=[Param(k, str(v)) for k, v in params.items()])
    for row in rows:
        child = client.create_run(
            exp_id, run_name=row["name"], tags={"mlflow.parentRunId": parent, "task": "asr"}
        ).info.run_id
        scores = [Metric(k, v, now, 0) for k, v in row.items() if isinstance(v, float)]
        used = ",".join(map(str, row["epochs"]))
        averaged = str(row["name"].startswith("average"))
        client.log_batch(
            child, params=[Param("epochs", used), Param("averaged", averaged)], metrics=scores
        )
        client.set_terminated(child, "FINISHED")
    client.set_terminated(parent, "FINISHED")
    return parent
