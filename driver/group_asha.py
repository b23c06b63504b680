"""GroupASHA: asynchronous successive halving over seed groups, noise-aware.

The seeds of a config (trials whose configs differ only in `seed`, see
`driver.seed_groups.group_key`) are kept or stopped as one unit:

- rungs at `grace_period * reduction_factor**k` epochs (below `max_t`), as in Ray's ASHA;
- a group is judged at a rung once every seed of it (all `num_seeds`, less the ones that
  errored) has reached the rung; seeds that get there first go on running (CONTINUE: no
  checkpoint round trip, no actor restart, no wait that could deadlock a concurrency limit);
  once a group is stopped, each of its seeds still running gets STOP on its next result;
- the group's value at a rung is the mean over seeds of each seed's best-so-far metric (not the
  last epoch's), and the cut is the (1 - 1/reduction_factor) quantile of the values of the
  groups recorded at that rung before it (asynchronous over groups, like ASHA);
- a group is never stopped at a rung below `min_epochs`, nor while its value has not separated
  from the floor the trials report under `floor_key` (the dev majority-class rate) by more than
  `floor_margin`;
- every decision is recorded with its reason (`reason_for`, `decisions`), so the trials table
  can say why each config was stopped.

State is plain attributes. Ray 2.60 does not save a scheduler with the experiment state (its
`Tuner.restore` brings back the scheduler pickled when the Tuner was built), so with
`state_path` every change is written there (atomically) and read back on the first call after
a restore; a file left by another Tuner (another `_token`) is ignored. Its name must not end
in .json or .pkl: Tune's restore copies those from the experiment folder to its staging folder
and uploads that stale copy back over the experiment folder at every save.
"""

from __future__ import annotations

import os
import pickle
import time
import uuid
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
from ray.tune.experiment import Trial
from ray.tune.result import DEFAULT_METRIC
from ray.tune.schedulers import FIFOScheduler, TrialScheduler

from driver.seed_groups import SEED_KEY, better, finite, group_key

_KEEP_PATH = ("_state_path",)  # where this object saves: the caller's, not the file's
_NOT_SAVED = ("_clock", "_stall_since")  # this process's clock and its stall timer


STATE_FILE = "group_asha.state"  # not *.json/*.pkl: Tune re-uploads stale copies of those


class GroupASHA(FIFOScheduler):
    """ASHA whose unit is the seed group (see the module docstring)."""

    def __init__(
        self,
        time_attr: str = "epoch",
        metric: str | None = None,
        mode: str | None = None,
        max_t: int = 100,
        grace_period: int = 1,
        reduction_factor: float = 2,
        min_epochs: int = 0,
        num_seeds: int | None = None,
        floor_key: str | None = "dev_majority_rate",
        floor_margin: float = 0.0,
        seed_key: str = SEED_KEY,
        group_ignore: Iterable[str] = (),
        state_path: str | os.PathLike | None = None,
        wait: bool = True,
        stall_patience_s: float = 20.0,
        clock: Callable[[], float] = time.monotonic,
    ):
        if max_t <= 0 or grace_period <= 0 or grace_period > max_t or reduction_factor <= 1:
            raise ValueError("GroupASHA needs 0 < grace_period <= max_t and reduction_factor > 1")
        if mode not in (None, "min", "max"):
            raise ValueError("GroupASHA: mode must be 'min' or 'max'")
        super().__init__()
        self._time_attr, self._metric, self._mode = time_attr, metric, mode
        self._max_t, self._rf, self._min_epochs = max_t, float(reduction_factor), min_epochs
        self._num_seeds, self._wait = num_seeds, wait
        # A stall must last this long before a group is judged on the seeds it has: Tune adds
        # trials lazily, so "no seed pending" often only means "not created yet".
        self._stall_patience, self._clock = float(stall_patience_s), clock
        self._stall_since: float | None = None
        self._floor_key, self._floor_margin = floor_key, float(floor_margin)
        self._seed_key, self._group_ignore = seed_key, tuple(sorted(group_ignore))
        self._rungs: list[float] = []
        m = float(grace_period)
        while m < max_t:
            self._rungs.append(m)
            m *= self._rf
        if state_path and str(state_path).endswith((".json", ".pkl")):
            raise ValueError(
                f"GroupASHA state_path {state_path}: use another suffix (e.g. .state); Tune's "
                "restore would upload a stale copy of a .json/.pkl over it"
            )
        self._state_path = str(state_path) if state_path else None
        self._token = uuid.uuid4().hex
        self._loaded = False
        self._group_of: dict[str, str] = {}  # trial id -> group key
        self._members: dict[str, list[str]] = {}  # group key -> trial ids, in arrival order
        self._best: dict[str, float] = {}  # trial id -> best-so-far metric
        self._last_t: dict[str, float] = {}
        self._floor: dict[str, float] = {}
        self._at_rung: dict[str, dict[int, float]] = {}  # trial id -> rung -> best so far there
        self._gone: dict[str, str] = {}  # trial id -> "error" | "removed" | "complete"
        self._recorded: list[dict[str, float]] = [{} for _ in self._rungs]  # signed values
        self._decided: dict[str, list[int]] = {}  # group key -> rungs judged
        self._stopped: dict[str, str] = {}  # group key -> why
        self._history: list[dict[str, Any]] = []
        self._waiting: dict[str, int] = {}  # paused trial id -> rung its group is judged at

    def __getstate__(self) -> dict:
        # A pickled copy (Tune's tuner.pkl) reads the state file again when it is next used.
        return {**self.__dict__, "_loaded": False}

    # ---- Tune's scheduler API
    def set_search_properties(self, metric: str | None, mode: str | None, **spec: Any) -> bool:
        if (self._metric and metric) or (self._mode and mode):
            return False
        self._metric = metric or self._metric or DEFAULT_METRIC
        self._mode = mode or self._mode
        self._load()
        return True

    def on_trial_add(self, tune_controller: Any, trial: Trial) -> None:
        self._load()
        if not self._metric or self._mode not in ("min", "max"):
            raise ValueError(
                "GroupASHA has no metric/mode: pass them to GroupASHA or to tune.TuneConfig"
            )
        key = group_key(trial.config, self._seed_key, self._group_ignore)
        self._group_of[trial.trial_id] = key
        members = self._members.setdefault(key, [])
        if trial.trial_id not in members:
            members.append(trial.trial_id)
        if self._gone.get(trial.trial_id) in ("error", "removed"):
            del self._gone[trial.trial_id]  # requeued after a failure: it will report again
        self._save()

    def on_trial_result(self, tune_controller: Any, trial: Trial, result: dict) -> str:
        tid = trial.trial_id
        t, v = finite(result.get(self._time_attr)), finite(result.get(self._metric))
        if tid not in self._group_of or t is None:
            return TrialScheduler.CONTINUE
        key = self._group_of[tid]
        self._observe(tid, t, v, result)
        self._waiting.pop(tid, None)
        action = TrialScheduler.CONTINUE
        # _judge_ready also returns True for a group stopped earlier (its seeds still running)
        if self._judge_ready(key, tune_controller) or t >= self._max_t:
            action = TrialScheduler.STOP
        elif self._wait:
            rung = self._undecided_rung(key, t)
            if rung is not None:  # wait, paused, for the group's other seeds
                self._waiting[tid] = rung
                action = TrialScheduler.PAUSE
        self._save()
        return action

    def on_trial_complete(self, tune_controller: Any, trial: Trial, result: dict) -> None:
        tid = trial.trial_id
        if tid not in self._group_of:
            return
        t = finite((result or {}).get(self._time_attr))
        if t is not None:
            self._observe(tid, t, finite(result.get(self._metric)), result)
        self._gone[tid] = "complete"
        self._waiting.pop(tid, None)
        self._judge_ready(self._group_of[tid], tune_controller)
        self._save()

    def on_trial_error(self, tune_controller: Any, trial: Trial) -> None:
        self._leave(tune_controller, trial.trial_id, "error")

    def on_trial_remove(self, tune_controller: Any, trial: Trial) -> None:
        self._leave(tune_controller, trial.trial_id, "removed")

    def choose_trial_to_run(self, tune_controller: Any) -> Trial | None:
        """FIFO (pending first, then paused seeds whose group has been judged), except that a
        pending seed whose group already has a seed running or waiting goes first.

        When nothing runs or waits to start and every paused seed waits for seeds that cannot
        start (a concurrency limit below the group size, fewer trials than `num_seeds`), the
        waiting groups are judged on the seeds they have, rather than wait for ever."""
        trials = tune_controller.get_trials()
        active = {
            self._group_of.get(t.trial_id)
            for t in trials
            if t.status == Trial.RUNNING or t.trial_id in self._waiting
        }
        pending = [t for t in trials if t.status == Trial.PENDING]
        for trial in pending:
            if self._group_of.get(trial.trial_id) in active:
                self._stall_since = None
                return trial
        if pending:
            self._stall_since = None
            return pending[0]
        paused = [t for t in trials if t.status == Trial.PAUSED]
        ready = [t for t in paused if t.trial_id not in self._waiting]
        if ready or not paused or any(t.status == Trial.RUNNING for t in trials):
            self._stall_since = None
            return ready[0] if ready else None
        now = self._clock()
        if self._stall_since is None or now < self._stall_since:
            self._stall_since = now
        if now - self._stall_since < self._stall_patience:
            return None  # Tune may still create the missing seeds: wait before judging
        self._stall_since = None
        for trial in paused:  # stalled: judge each waiting group on the seeds it has
            key = self._group_of.get(trial.trial_id)
            if key is not None and trial.trial_id in self._waiting:
                self._judge_ready(key, tune_controller, force=True)
        self._save()
        trials = tune_controller.get_trials()
        return next(
            (t for t in trials if t.status == Trial.PAUSED and t.trial_id not in self._waiting),
            None,
        )

    def debug_string(self) -> str:
        stopped = len(self._stopped)
        return f"Using GroupASHA: {len(self._members)} groups, {stopped} stopped"

    def save(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "wb") as f:
            pickle.dump(self._state(), f)

    def _state(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k not in _NOT_SAVED}

    def restore(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "rb") as f:
            state = pickle.load(f)
        self.__dict__.update({k: v for k, v in state.items() if k not in _KEEP_PATH})

    # ---- what the trials table asks
    def reason_for(self, trial_id: str) -> str:
        """Why the trial ended as it did: its group's stop reason, "finished", "error", ..."""
        key = self._group_of.get(trial_id)
        if key is None:
            return ""
        gone, last = self._gone.get(trial_id), self._last_t.get(trial_id)
        if key in self._stopped:
            ran = last is not None and last >= self._max_t
            return self._stopped[key] + (" (this seed had already finished)" if ran else "")
        if last is not None and last >= self._max_t:
            return "finished"
        if gone == "complete":
            return f"ended by the trial at {self._time_attr} {last:g}" if last else "ended"
        return {"error": "error", "removed": "removed"}.get(gone or "", "running")

    def is_stopped(self, trial_id: str) -> bool:
        """Whether the trial's group was stopped (pruned), whatever this seed had run."""
        return self._group_of.get(trial_id) in self._stopped

    def group_of(self, trial_id: str) -> str | None:
        """The group key of a trial (see `driver.seed_groups.group_key`)."""
        return self._group_of.get(trial_id)

    def decisions(self) -> list[dict[str, Any]]:
        """Every rung judgement: group, rung, milestone, value, cut, groups compared, action,
        reason."""
        return [dict(d) for d in self._history]

    @classmethod
    def load(cls, state_path: str | os.PathLike) -> GroupASHA:
        """The scheduler as last saved at `state_path` (to print reasons after a sweep)."""
        sched = cls.__new__(cls)
        with open(state_path, "rb") as f:
            sched.__dict__.update(pickle.load(f))
        return sched

    # ---- internals
    def _observe(self, tid: str, t: float, v: float | None, result: dict) -> None:
        if v is not None and better(self._mode, v, self._best.get(tid)):
            self._best[tid] = v
        self._last_t[tid] = max(t, self._last_t.get(tid, t))
        floor = finite(result.get(self._floor_key)) if self._floor_key else None
        if floor is not None:
            self._floor[tid] = floor
        at = self._at_rung.setdefault(tid, {})
        best = self._best.get(tid)
        for i, milestone in enumerate(self._rungs):
            if t >= milestone and i not in at and best is not None:
                at[i] = best

    def _leave(self, tune_controller: Any, tid: str, why: str) -> None:
        if tid not in self._group_of:
            return
        self._gone[tid] = why
        self._waiting.pop(tid, None)
        self._judge_ready(self._group_of[tid], tune_controller)
        self._save()

    def _undecided_rung(self, key: str, t: float) -> int | None:
        """The lowest rung reached at `t` where the group could be stopped and is not judged."""
        done = self._decided.get(key, [])
        for i, milestone in enumerate(self._rungs):
            if milestone <= t and milestone >= self._min_epochs and i not in done:
                return i
        return None

    def _value_at(
        self, key: str, rung: int, force: bool = False
    ) -> tuple[list[float], list[float]] | None:
        """Per-seed best-so-far at the rung and their floors, or None while a seed is missing
        (`force`: the seeds there are enough)."""
        members = self._members.get(key, [])
        if self._num_seeds and len(members) < self._num_seeds and not force:
            return None
        values, floors = [], []
        for tid in members:
            gone = self._gone.get(tid)
            if rung in self._at_rung.get(tid, {}):
                values.append(self._at_rung[tid][rung])
            elif gone == "complete" and tid in self._best:
                values.append(self._best[tid])  # ended before the rung: its best stands
            elif gone in ("error", "removed", "complete") or force:
                continue
            else:
                return None
            if tid in self._floor:
                floors.append(self._floor[tid])
        return (values, floors) if values else None

    def _judge_ready(self, key: str, tune_controller: Any, force: bool = False) -> bool:
        """Judge the group at every rung it has completed and not been judged at; release its
        waiting seeds (kept) or stop them (stopped). True when the group is stopped."""
        if key in self._stopped:
            return True
        done = self._decided.setdefault(key, [])
        stopped = False
        for i, milestone in enumerate(self._rungs):
            if i in done:
                continue
            got = self._value_at(key, i, force)
            if got is None:
                break
            done.append(i)
            if self._judge(key, i, milestone, *got, partial=force):
                stopped = True
                break
        members = self._members.get(key, [])
        for tid in members:
            if tid in self._waiting and (stopped or self._waiting[tid] in done):
                del self._waiting[tid]
        if stopped:
            self._stop_paused(key, tune_controller)
        return stopped

    def _stop_paused(self, key: str, tune_controller: Any) -> None:
        """Stop the group's paused seeds now (running ones get STOP on their next result)."""
        for trial in list(tune_controller.get_trials()):
            if self._group_of.get(trial.trial_id) != key:
                continue
            if trial.status == Trial.PAUSED or (trial.status == Trial.RUNNING and trial.is_saving):
                tune_controller.stop_trial(trial)

    def _judge(
        self,
        key: str,
        rung: int,
        milestone: float,
        values: list[float],
        floors: list[float],
        partial: bool = False,
    ) -> bool:
        sign = 1.0 if self._mode == "max" else -1.0
        value = float(np.mean(values))
        others = list(self._recorded[rung].values())
        cut = float(np.nanpercentile(others, (1 - 1 / self._rf) * 100)) if others else None
        self._recorded[rung][key] = sign * value
        floor = float(np.mean(floors)) if floors else None
        where = f"rung {rung + 1} ({self._time_attr} {milestone:g})"
        mean = f"group mean best {value:.4f} over {len(values)} seed(s)"
        if partial:
            mean += " (the others could not start)"
        stop = False
        if cut is None:
            why = f"{where}: {mean}; first group at this rung"
        elif milestone < self._min_epochs:
            why = f"{where}: {mean}; kept, before min_epochs {self._min_epochs}"
        elif floor is not None and sign * value <= sign * floor + self._floor_margin:
            why = f"{where}: {mean}; kept, not separated from floor {floor:.4f}"
        elif sign * value < cut:
            stop = True
            op = "<" if sign > 0 else ">"
            why = f"{where}: {mean} {op} cut {sign * cut:.4f} ({len(others) + 1} groups)"
        else:
            why = f"{where}: {mean}; kept, cut {sign * cut:.4f} ({len(others) + 1} groups)"
        self._history.append(
            {
                "group": key,
                "rung": rung + 1,
                "milestone": milestone,
                "value": value,
                "cut": None if cut is None else sign * cut,
                "groups": len(others) + 1,
                "floor": floor,
                "action": "stop" if stop else "keep",
                "reason": why,
            }
        )
        if stop:
            self._stopped[key] = why
        return stop

    def _load(self) -> None:
        if self._loaded:
            return
        self._loaded = True
        path = self._state_path
        if not path or not Path(path).is_file():
            return
        try:
            with open(path, "rb") as f:
                state = pickle.load(f)
        except (OSError, pickle.UnpicklingError, EOFError):
            return
        if isinstance(state, dict) and state.get("_token") == self._token:
            self.__dict__.update({k: v for k, v in state.items() if k not in _KEEP_PATH})
            self._loaded = True

    def _save(self) -> None:
        if not self._state_path:
            return
        path = Path(self._state_path)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as f:
            pickle.dump(self._state(), f)
        os.replace(tmp, path)


def stop_reasons(state_path: str | os.PathLike) -> dict[str, str]:
    """trial id -> why it ended, from a GroupASHA state file ({} when there is none)."""
    if not Path(state_path).is_file():
        return {}
    sched = GroupASHA.load(state_path)
    return {tid: sched.reason_for(tid) for tid in sched._group_of}
