"""GroupASHA: asynchronous successive halving over seed groups, noise-aware; the Tune side.

The seeds of a config (trials whose configs differ only in `seed`, see
`driver.seed_groups.group_key`) are kept or stopped as one unit. Three parts:

- driver/rungs.py: the rung decision (which group is judged where, on what value, against
  which cut, kept or stopped, and why): plain numbers, no Ray;
- this file: the Tune scheduler that feeds it trials' results and acts on its answers. Seeds
  that reach a rung first wait PAUSED until their group is judged there (`wait`; without it
  they go on running: CONTINUE); once a group is stopped its paused seeds are stopped at once
  and each running one gets STOP on its next result. When nothing runs and every paused seed
  waits for seeds that cannot start (a concurrency limit below the group size), the waiting
  groups are judged on the seeds they have, after `stall_patience_s` (Tune creates trials
  lazily: "no seed pending" often only means "not created yet");
- driver/group_asha_state.py: the saved state (JSON beside the experiment, every change),
  read back on the first call after `Tuner.restore`.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from ray.tune.experiment import Trial
from ray.tune.result import DEFAULT_METRIC
from ray.tune.schedulers import FIFOScheduler, TrialScheduler

from driver import group_asha_state
from driver.group_asha_state import STATE_FILE, SavedState
from driver.rungs import Rungs, finite
from driver.seed_groups import SEED_KEY, group_key

__all__ = ["STATE_FILE", "GroupASHA", "saved_scheduler", "stop_reasons"]


class GroupASHA(FIFOScheduler):
    """ASHA whose unit is the seed group (see the module docstring and driver/rungs.py)."""

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
        if mode not in (None, "min", "max"):
            raise ValueError("GroupASHA: mode must be 'min' or 'max'")
        super().__init__()
        self._rungs = Rungs(max_t, grace_period, reduction_factor, min_epochs, num_seeds,
                            floor_margin, time_attr, mode or "max")  # fmt: skip
        self._time_attr, self._metric, self._mode = time_attr, metric, mode
        self._max_t, self._wait, self._floor_key = max_t, wait, floor_key
        self._seed_key, self._group_ignore = seed_key, tuple(sorted(group_ignore))
        self._stall_patience, self._clock = float(stall_patience_s), clock
        self._stall_since: float | None = None
        self._state_path = group_asha_state.check_path(state_path)
        self._token = uuid.uuid4().hex
        self._loaded = False
        self._waiting: dict[str, int] = {}  # paused trial id -> rung its group is judged at

    def __getstate__(self) -> dict:
        # A pickled copy (Tune's tuner.pkl) reads the state file again when it is next used;
        # the clock and the stall timer are this process's.
        state = {**self.__dict__, "_loaded": False, "_stall_since": None}
        return {k: v for k, v in state.items() if k != "_clock"}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._clock = time.monotonic

    # ---- Tune's scheduler API
    def set_search_properties(self, metric: str | None, mode: str | None, **spec: Any) -> bool:
        if (self._metric and metric) or (self._mode and mode):
            return False
        self._metric = metric or self._metric or DEFAULT_METRIC
        self._mode = mode or self._mode
        self._rungs.mode = self._mode or "max"
        self._load()
        return True

    def on_trial_add(self, tune_controller: Any, trial: Trial) -> None:
        self._load()
        if not self._metric or self._mode not in ("min", "max"):
            raise ValueError(
                "GroupASHA has no metric/mode: pass them to GroupASHA or to tune.TuneConfig"
            )
        self._rungs.add(trial.trial_id, group_key(trial.config, self._seed_key,
                                                  self._group_ignore))  # fmt: skip
        self._save()

    def on_trial_result(self, tune_controller: Any, trial: Trial, result: dict) -> str:
        tid = trial.trial_id
        t = finite(result.get(self._time_attr))
        key = self._rungs.state.group_of.get(tid)
        if key is None or t is None:
            return TrialScheduler.CONTINUE
        self._observe(tid, t, result)
        self._waiting.pop(tid, None)
        action = TrialScheduler.CONTINUE
        # _judge also returns True for a group stopped earlier (its seeds still running)
        if self._judge(key, tune_controller) or t >= self._max_t:
            action = TrialScheduler.STOP
        elif self._wait:
            rung = self._rungs.undecided_rung(key, t)
            if rung is not None:  # wait, paused, for the group's other seeds
                self._waiting[tid] = rung
                action = TrialScheduler.PAUSE
        self._save()
        return action

    def on_trial_complete(self, tune_controller: Any, trial: Trial, result: dict) -> None:
        tid = trial.trial_id
        if tid not in self._rungs.state.group_of:
            return
        t = finite((result or {}).get(self._time_attr))
        if t is not None:
            self._observe(tid, t, result)
        self._leave(tune_controller, tid, "complete")

    def on_trial_error(self, tune_controller: Any, trial: Trial) -> None:
        self._leave(tune_controller, trial.trial_id, "error")

    def on_trial_remove(self, tune_controller: Any, trial: Trial) -> None:
        self._leave(tune_controller, trial.trial_id, "removed")

    def choose_trial_to_run(self, tune_controller: Any) -> Trial | None:
        """FIFO (pending first, then paused seeds whose group has been judged), except that a
        pending seed whose group already has a seed running or waiting goes first; a stall
        (see the module docstring) judges the waiting groups on the seeds they have."""
        trials = tune_controller.get_trials()
        group_of = self._rungs.state.group_of
        active = {group_of.get(t.trial_id) for t in trials
                  if t.status == Trial.RUNNING or t.trial_id in self._waiting}  # fmt: skip
        pending = [t for t in trials if t.status == Trial.PENDING]
        paused = [t for t in trials if t.status == Trial.PAUSED]
        ready = [t for t in paused if t.trial_id not in self._waiting]
        if pending or ready or not paused or any(t.status == Trial.RUNNING for t in trials):
            self._stall_since = None
            sibling = next((t for t in pending if group_of.get(t.trial_id) in active), None)
            return sibling or (pending or ready or [None])[0]
        now = self._clock()
        if self._stall_since is None or now < self._stall_since:
            self._stall_since = now
        if now - self._stall_since < self._stall_patience:
            return None  # Tune may still create the missing seeds: wait before judging
        self._stall_since = None
        for trial in paused:  # stalled: judge each waiting group on the seeds it has
            if trial.trial_id in self._waiting and trial.trial_id in group_of:
                self._judge(group_of[trial.trial_id], tune_controller, force=True)
        self._save()
        now_ready = (t for t in tune_controller.get_trials()
                     if t.status == Trial.PAUSED and t.trial_id not in self._waiting)  # fmt: skip
        return next(now_ready, None)

    def debug_string(self) -> str:
        s = self._rungs.state
        return f"Using GroupASHA: {len(s.members)} groups, {len(s.stopped)} stopped"

    def save(self, checkpoint_path: str) -> None:
        group_asha_state.save(checkpoint_path, self._saved())

    def restore(self, checkpoint_path: str) -> None:
        saved = group_asha_state.load(checkpoint_path)
        if saved is not None:
            self._token, self._rungs.state, self._waiting = saved.token, saved.rungs, saved.waiting

    # ---- what the trials table asks
    def reason_for(self, trial_id: str) -> str:
        """Why the trial ended as it did: its group's stop reason, "finished", "error", ..."""
        return self._rungs.reason_for(trial_id)

    def is_stopped(self, trial_id: str) -> bool:
        """Whether the trial's group was stopped (pruned), whatever this seed had run."""
        return self._rungs.state.group_of.get(trial_id) in self._rungs.state.stopped

    def group_of(self, trial_id: str) -> str | None:
        """The group key of a trial (see `driver.seed_groups.group_key`)."""
        return self._rungs.state.group_of.get(trial_id)

    def trial_ids(self) -> list[str]:
        return list(self._rungs.state.group_of)

    def decisions(self) -> list[dict[str, Any]]:
        """Every rung judgement: group, rung, milestone, value, cut, groups compared, action,
        reason."""
        return [dict(d) for d in self._rungs.state.history]

    @classmethod
    def load(cls, state_path: str | os.PathLike) -> GroupASHA:
        """The scheduler as last saved at `state_path` (to print reasons after a sweep)."""
        saved = group_asha_state.load(state_path)
        if saved is None:
            raise ValueError(f"{state_path}: not a GroupASHA state file of this kdsweep")
        params = dict(saved.params)
        sched = cls(metric=DEFAULT_METRIC, **params)
        sched.restore(str(state_path))
        return sched

    # ---- internals
    def _observe(self, tid: str, t: float, result: dict) -> None:
        floor = finite(result.get(self._floor_key)) if self._floor_key else None
        self._rungs.observe(tid, t, finite(result.get(self._metric)), floor)

    def _leave(self, tune_controller: Any, tid: str, why: str) -> None:
        key = self._rungs.state.group_of.get(tid)
        if key is None:
            return
        self._rungs.leave(tid, why)
        self._waiting.pop(tid, None)
        self._judge(key, tune_controller)
        self._save()

    def _judge(self, key: str, tune_controller: Any, force: bool = False) -> bool:
        """Judge the group where it is ready; release its waiting seeds (kept) or stop them
        (stopped). True when the group is stopped (now, or before: then nothing to do)."""
        if key in self._rungs.state.stopped:
            return True
        stopped = self._rungs.judge_ready(key, force)
        done = self._rungs.state.decided.get(key, [])
        for tid in self._rungs.state.members.get(key, []):
            if tid in self._waiting and (stopped or self._waiting[tid] in done):
                del self._waiting[tid]
        if stopped:  # its paused seeds stop now; running ones get STOP on their next result
            for trial in list(tune_controller.get_trials()):
                if self.group_of(trial.trial_id) == key and (
                    trial.status == Trial.PAUSED
                    or (trial.status == Trial.RUNNING and trial.is_saving)
                ):
                    tune_controller.stop_trial(trial)
        return stopped

    def _saved(self) -> SavedState:
        return SavedState(self._token, self._rungs.state, self._waiting, self._rungs.params)

    def _load(self) -> None:
        if self._loaded:
            return
        self._loaded = True
        path = self._state_path
        saved = group_asha_state.load(path) if path and Path(path).is_file() else None
        if saved is not None and saved.token == self._token:
            self._rungs.state, self._waiting = saved.rungs, saved.waiting

    def _save(self) -> None:
        if self._state_path:
            group_asha_state.save(self._state_path, self._saved())


def saved_scheduler(state_path: str | os.PathLike) -> GroupASHA | None:
    """The scheduler saved at `state_path`; None without one (or from an older kdsweep)."""
    try:
        return GroupASHA.load(state_path)
    except ValueError:
        return None


def stop_reasons(state_path: str | os.PathLike) -> dict[str, str]:
    """trial id -> why it ended, from a GroupASHA state file ({} when there is none)."""
    sched = saved_scheduler(state_path)
    return {tid: sched.reason_for(tid) for tid in sched.trial_ids()} if sched else {}
