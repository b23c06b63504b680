"""MLflow for every trial: one parent run per sweep, one nested child run per trial.

Tune events are first appended to a journal on disk (`<sweep dir>/mlflow_journal.jsonl`), then
replayed into MLflow. So:
  * a resumed sweep continues the SAME child runs (the journal maps trial id -> run id);
  * an epoch re-reported after a resume is not logged twice (per-trial last logged epoch);
  * an MLflow outage loses nothing: events wait in the journal and are sent when the server is
    back, or by `python -m sweeps.sync_mlflow <sweep dir>`;
  * every run ends FINISHED, KILLED or FAILED, never RUNNING.
Only the driver talks to MLflow; trials never import it.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from ray import tune

from kdsweep.filelock import locked

# A dead tracking server must not stall the sweep: no long HTTP retry loops in the driver.
os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")

SECRET_MARKERS = ("token", "password", "secret", "key", "credential")
RETRY_AFTER_S = 20.0
MIN_INTERVAL_S = 2.0
# What kind of experiment a sweep is, for MLflow's UI: model training, not GenAI (the tag's
# values are the UI's `ExperimentKind`s). MLflow 3.17's UI opens a view by its workflow switch
# (the `workflowType` URL parameter, else the browser's last choice, GenAI at first), so the
# links kdsweep prints name the model-training view as well (`ui_link`).
EXPERIMENT_KIND = {"mlflow.experimentKind": "custom_model_development"}
UI_VIEW = "workflowType=machine_learning"
LOCAL_UI = "http://127.0.0.1:5000"  # `make mlflow-ui` over a local sqlite store


JOURNAL_FILE = "mlflow_journal.jsonl"  # in the sweep folder


def default_tracking_uri(project_dir: Path) -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{project_dir / 'mlruns.db'}"


def ui_link(tracking_uri: str, experiment_id: str | None) -> str:
    """The sweep's runs table in MLflow's model-training view (for an http(s) tracking server,
    on that server; otherwise on the `make mlflow-ui` server)."""
    base = tracking_uri.rstrip("/") if tracking_uri.startswith(("http://", "https://")) else ""
    page = f"#/experiments/{experiment_id}/runs" if experiment_id else "#/experiments"
    return f"{base or LOCAL_UI}/{page}?{UI_VIEW}"


def _refusal(e: Exception) -> bool:
    """Whether MLflow answered and said no (INVALID_PARAMETER_VALUE and kin), not an outage."""
    code = getattr(e, "error_code", "")
    return code in ("INVALID_PARAMETER_VALUE", "INVALID_STATE", "RESOURCE_ALREADY_EXISTS")


def _public(d: dict[str, Any]) -> dict[str, Any]:
    """Drop anything that looks like a credential before it becomes a param or tag."""
    return {k: v for k, v in d.items() if not any(m in k.lower() for m in SECRET_MARKERS)}


class Journal:
    """Append-only event log + the replay cursor into MLflow."""

    def __init__(self, sweep_dir: Path, tracking_uri: str, experiment: str, artifact_root: str):
        self.dir = Path(sweep_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.path = self.dir / JOURNAL_FILE
        # Not *.json: on restore Ray Tune copies every *.json/*.pkl of the experiment folder to
        # its staging dir and later uploads that stale copy back over ours (seen as an empty or
        # rewound cursor after a SIGKILL + resume, i.e. events sent twice).
        self.state_path = self.dir / "mlflow_sync.state"
        legacy = self.dir / "mlflow_sync.json"  # sweeps started by kdsweep <= 0.1
        if legacy.is_file() and not self.state_path.is_file():
            os.replace(legacy, self.state_path)
        self.tracking_uri = tracking_uri
        self.experiment = experiment
        self.artifact_root = artifact_root
        self._client = None
        self._in_doubt = True  # until the first pending event is checked against MLflow
        self._next_try = 0.0
        self._last_sync = 0.0
        self.warned = False
        self._index()

    def _index(self) -> None:
        """What the journal already holds: the last epoch logged and the start of each trial."""
        self.last_epoch: dict[str, int] = {}
        self.started: set[str] = set()
        for ev in self.events():
            if ev["ev"] == "result":
                self.last_epoch[ev["trial"]] = max(self.last_epoch.get(ev["trial"], 0), ev["step"])
            elif ev["ev"] == "start":
                self.started.add(ev["trial"])

    # Tuner.restore() brings back the callbacks pickled into tuner.pkl when the sweep first
    # started, not the ones of the resuming process: an unpickled journal re-reads its file, or
    # it would think nothing was logged and log a re-run epoch a second time.
    def __getstate__(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k not in ("_client", "last_epoch")}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._client, self._in_doubt, self._next_try = None, True, 0.0
        self._index()

    # ---- writing
    def append(self, **event: Any) -> None:
        event.setdefault("ts", int(time.time() * 1000))
        with self.path.open("a") as f:
            f.write(json.dumps(event, default=str) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def events(self) -> list[dict]:
        if not self.path.is_file():
            return []
        out = []
        for line in self.path.read_text().splitlines():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                break  # a line cut by a kill mid-write: everything before it is intact
        return out

    def state(self) -> dict[str, Any]:
        if self.state_path.is_file():
            return json.loads(self.state_path.read_text())
        return {"line": 0, "runs": {}, "parent": None, "experiment_id": None}

    def _save_state(self, state: dict) -> None:
        tmp = self.state_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(state, indent=1))
        os.replace(tmp, self.state_path)

    def ui_link(self) -> str:
        """Where the sweep's runs are in MLflow's UI (see `ui_link`)."""
        link = ui_link(self.tracking_uri, self.state()["experiment_id"])
        remote = self.tracking_uri.startswith(("http://", "https://"))
        return link if remote else f"{link} (make mlflow-ui)"

    def pending(self) -> int:
        return max(0, len(self.events()) - self.state()["line"])

    # ---- replay into MLflow
    def sync(self, force: bool = False) -> bool:
        """Send pending events; True when nothing is left. Never raises on an MLflow outage.

        Unforced syncs (per-epoch results) are batched to one every MIN_INTERVAL_S, so a slow
        store never holds up Tune's event loop; trial ends and sweep ends force a sync.
        """
        now = time.monotonic()
        if not force and (now < self._next_try or now - self._last_sync < MIN_INTERVAL_S):
            return False
        self._last_sync = now
        with locked(self.dir / "mlflow_sync.lock"):
            state = self.state()
            events = self.events()
            try:
                client = self._mlflow()
                while state["line"] < len(events):
                    ev = events[state["line"]]
                    # The cursor is saved after each event, so at most the first pending event
                    # can already be in MLflow (a kill, or a lost reply, between the two).
                    if not (self._in_doubt and self._already_applied(client, ev, state)):
                        self._apply(client, ev, state)
                    self._in_doubt = False
                    state["line"] += 1
                    self._save_state(state)
            except Exception as e:  # noqa: BLE001 (any client/transport error = outage)
                self._in_doubt = True
                self._save_state(state)
                self._next_try = time.monotonic() + RETRY_AFTER_S
                self._client = None
                # A refusal (a bad value, a run in the wrong state) is not an outage: it will
                # not pass by itself, so say which it is.
                refused = _refusal(e)
                if not self.warned:
                    what = "refused an event" if refused else "unreachable"
                    when = "once its cause is fixed" if refused else "when it is back"
                    print(
                        f"[kdsweep] MLflow at {self.tracking_uri} {what} "
                        f"({type(e).__name__}: {str(e)[:120]}); {len(events) - state['line']} "
                        f"event(s) wait in {self.path} and will be sent {when} "
                        f"(or run: python -m sweeps.sync_mlflow {self.dir})"
                    )
                    self.warned = True
                return False
        if self.warned:
            print(f"[kdsweep] MLflow reachable again: journal synced ({len(events)} events)")
            self.warned = False
        return True

    def _mlflow(self):
        if self._client is None:
            from mlflow.tracking import MlflowClient

            self._client = MlflowClient(self.tracking_uri)
        return self._client

    def _experiment_id(self, client, state: dict) -> str:
        if state["experiment_id"]:
            return state["experiment_id"]
        exp = client.get_experiment_by_name(self.experiment)
        if exp is None:
            exp_id = client.create_experiment(
                self.experiment, artifact_location=self.artifact_root, tags=EXPERIMENT_KIND
            )
        else:
            exp_id = exp.experiment_id
            for k, v in EXPERIMENT_KIND.items():  # an experiment made by an older kdsweep
                if exp.tags.get(k) != v:
                    client.set_experiment_tag(exp_id, k, v)
        state["experiment_id"] = exp_id
        return exp_id

    @staticmethod
    def _already_applied(client, ev: dict, state: dict) -> bool:
        """Are this event's metrics already logged (same key, step and timestamp)? Only metric
        logging can duplicate: runs are found by tag, tags and statuses are idempotent."""
        if ev["ev"] not in ("result", "parent_end") or not ev.get("metrics"):
            return False
        run = state["parent"] if ev["ev"] == "parent_end" else state["runs"].get(ev["trial"])
        if run is None:
            return False
        key = sorted(ev["metrics"])[0]
        step = ev.get("step", 0)
        return any(
            m.step == step and m.timestamp == ev["ts"] for m in client.get_metric_history(run, key)
        )

    def _apply(self, client, ev: dict, state: dict) -> None:
        from mlflow.entities import Metric, Param, RunTag

        kind = ev["ev"]
        exp_id = self._experiment_id(client, state)
        if kind == "parent":
            if not state["parent"]:
                run = self._find_or_create(client, exp_id, ev["uid"], None, ev["name"], ev["tags"])
                state["parent"] = run
                params = [Param(k, str(v)[:6000]) for k, v in _public(ev["params"]).items()]
                for i in range(0, len(params), 100):
                    client.log_batch(run, params=params[i : i + 100])
            else:
                client.update_run(state["parent"], status="RUNNING")
            return
        if kind == "parent_end":
            for p in ev.get("artifacts", []):
                if Path(p).is_file():
                    client.log_artifact(state["parent"], p)
            metrics = [Metric(k, float(v), ev["ts"], 0) for k, v in ev.get("metrics", {}).items()]
            tags = [RunTag(k, str(v)) for k, v in ev.get("tags", {}).items()]
            client.log_batch(state["parent"], metrics=metrics, tags=tags)
            client.set_terminated(state["parent"], status=ev["status"])
            return
        trial = ev["trial"]
        if kind == "start":
            run = state["runs"].get(trial)
            if run is None:
                tags = {**ev["tags"], "mlflow.parentRunId": state["parent"]}
                run = self._find_or_create(client, exp_id, trial, state["parent"], ev["name"], tags)
                state["runs"][trial] = run
                params = [Param(k, str(v)[:6000]) for k, v in _public(ev["params"]).items()]
                for i in range(0, len(params), 100):
                    client.log_batch(run, params=params[i : i + 100])
            else:  # resumed trial: the same run goes on
                client.update_run(run, status="RUNNING")
        elif kind == "result":
            metrics = [Metric(k, float(v), ev["ts"], ev["step"]) for k, v in ev["metrics"].items()]
            for i in range(0, len(metrics), 500):
                client.log_batch(state["runs"][trial], metrics=metrics[i : i + 500])
            if ev.get("tags"):
                tags = [RunTag(k, str(v)) for k, v in ev["tags"].items()]
                client.log_batch(state["runs"][trial], tags=tags)
        elif kind == "resumed":
            client.set_tag(state["runs"][trial], "kdsweep.resumed_from_epoch", ev["from_epoch"])
        elif kind == "end":
            run = state["runs"][trial]
            for p in ev.get("artifacts", []):  # e.g. an LM trial's continuations.md
                if Path(p).is_file():
                    client.log_artifact(run, p)
            tags = [RunTag(k, str(v)[:5000]) for k, v in ev.get("tags", {}).items()]
            if tags:
                client.log_batch(run, tags=tags)
            client.set_terminated(run, status=ev["status"])

    @staticmethod
    def _find_or_create(client, exp_id, uid, parent, name, tags) -> str:
        """Idempotent run creation: a crash between create and cursor save must not duplicate."""
        found = client.search_runs([exp_id], f"tags.`kdsweep.uid` = '{uid}'", max_results=1)
        if found:
            return found[0].info.run_id
        tags = {**tags, "kdsweep.uid": uid}
        return client.create_run(
            exp_id, run_name=name, tags={k: str(v) for k, v in tags.items()}
        ).info.run_id


class MlflowTrialCallback(tune.Callback):
    """Tune callback (driver side) that journals trial events and syncs them to MLflow."""

    def __init__(self, journal: Journal, describe, tags_for, max_epochs: int, metric_keys=None):
        self.journal = journal
        self.describe = describe  # trial config -> run name
        self.tags_for = tags_for  # trial config -> tags
        self.max_epochs = max_epochs

    def on_trial_start(self, iteration, trials, trial, **info):
        cfg = trial.config
        if trial.trial_id in self.journal.started:
            self.journal.append(ev="start", trial=trial.trial_id, name="", params={}, tags={})
        else:
            self.journal.append(
                ev="start",
                trial=trial.trial_id,
                name=self.describe(cfg),
                params=cfg,
                tags={**self.tags_for(cfg), "kdsweep.trial_id": trial.trial_id},
            )
            self.journal.started.add(trial.trial_id)
        self.journal.sync()

    def on_trial_result(self, iteration, trials, trial, result, **info):
        epoch = int(result.get("epoch", result.get("training_iteration", 0)))
        if result.get("iterations_since_restore") == 1 and epoch > 1:
            # First epoch after a restore (driver resumed, or worker retried): record what the
            # checkpoint held against what was already logged, i.e. the epochs of work redone.
            self.journal.append(
                ev="resumed",
                trial=trial.trial_id,
                from_epoch=epoch - 1,
                logged_epoch=self.journal.last_epoch.get(trial.trial_id, 0),
            )
        if epoch <= self.journal.last_epoch.get(trial.trial_id, 0):
            return  # re-reported after a resume: already logged
        self.journal.last_epoch[trial.trial_id] = epoch
        metrics = {
            k: v
            for k, v in result.items()
            if isinstance(v, int | float) and not isinstance(v, bool) and k in _REPORTED(result)
        }
        # A trial retried after CUDA out-of-memory reports oom_batch_size, oom_grad_accum, ...
        # (trainables/oom_guard.py): tags of its run, set again on every result (idempotent).
        tags = {k: metrics.pop(k) for k in [k for k in metrics if k.startswith("oom_")]}
        event = {"tags": tags} if tags else {}
        self.journal.append(ev="result", trial=trial.trial_id, step=epoch, metrics=metrics, **event)
        self.journal.sync()

    def on_trial_complete(self, iteration, trials, trial, **info):
        epochs = self.journal.last_epoch.get(trial.trial_id, 0)
        tags = {"epochs_run": epochs}
        if epochs < self.max_epochs:
            tags["stopped_by"] = "asha"
        self.journal.append(ev="end", trial=trial.trial_id, status="FINISHED", tags=tags,
                            artifacts=trial_artifacts(trial))  # fmt: skip
        self.journal.sync(force=True)

    def on_trial_error(self, iteration, trials, trial, **info):
        reason = error_reason(trial)
        self.journal.append(ev="end", trial=trial.trial_id, status="FAILED", tags={"error": reason})
        self.journal.sync()

    def close_open_runs(self) -> None:
        """After Ctrl-C/SIGTERM, or at the end: runs still open end KILLED (reopened on resume)."""
        last: dict[str, str] = {}
        for ev in self.journal.events():
            if ev["ev"] in ("start", "end"):
                last[ev["trial"]] = ev["ev"]
        for trial_id, ev in last.items():
            if ev == "start":
                self.journal.append(
                    ev="end", trial=trial_id, status="KILLED", tags={"interrupted": 1}
                )
        self.journal.sync(force=True)


# Files a trial's last checkpoint may carry that belong on its MLflow run.
TRIAL_ARTIFACTS = ("continuations.md",)


def trial_artifacts(trial) -> list[str]:
    """Paths of TRIAL_ARTIFACTS in the trial's latest checkpoint (local storage only)."""
    ckpt = getattr(trial, "checkpoint", None)
    folder = Path(ckpt.path) if ckpt is not None else None
    if folder is None or not folder.is_dir():
        return []
    return [str(folder / name) for name in TRIAL_ARTIFACTS if (folder / name).is_file()]


def _REPORTED(result: dict) -> set[str]:
    """Our metrics, not Tune's bookkeeping (time_this_iter_s, pid, ...)."""
    skip = {
        "training_iteration",
        "time_this_iter_s",
        "time_total_s",
        "timestamp",
        "pid",
        "time_since_restore",
        "iterations_since_restore",
        "done",
    }
    return {k for k in result if k not in skip and not k.startswith(("config", "date"))}


def error_reason(trial) -> str:
    """The last line of a trial's error file: the exception and its message."""
    path = getattr(trial, "error_file", None)
    if path and Path(path).is_file():
        lines = [ln for ln in Path(path).read_text().splitlines() if ln.strip()]
        for ln in reversed(lines):
            if "Error" in ln or "Exception" in ln:
                return ln.strip()[:1000]
        return (lines[-1] if lines else "unknown error")[:1000]
    return "unknown error"
