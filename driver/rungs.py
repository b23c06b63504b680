"""The rung decision of GroupASHA over seed groups: plain numbers in, keep or stop out.

No Ray here (like the `_Bracket` of Ray's ASHA): driver/group_asha.py feeds it Tune's events
and turns its answers into CONTINUE / PAUSE / STOP; driver/group_asha_state.py saves its state.

- rungs at `grace_period * reduction_factor**k` epochs (below `max_t`), as in Ray's ASHA;
- a group is judged at a rung once every seed of it (all `num_seeds`, less the ones that left:
  errored, removed, or ended before the rung with their best standing) has reached the rung;
- the group's value at a rung is the mean over seeds of each seed's best-so-far metric (not the
  last epoch's), and the cut is the (1 - 1/reduction_factor) quantile of the values of the
  groups recorded at that rung before it (asynchronous over groups, like ASHA);
- a group is never stopped at a rung below `min_epochs`, nor while its value has not separated
  from its seeds' floor (the dev majority-class rate) by more than `floor_margin`;
- every judgement is recorded with its reason, so the trials table can say why each config
  was stopped.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np


def better(mode: str, a: float, b: float | None) -> bool:
    """Whether `a` improves on `b` (None: nothing yet) in direction `mode`."""
    return b is None or (a > b if mode == "max" else a < b)


def finite(value: Any) -> float | None:
    """The value as a float, or None when it is missing, not a number, NaN or infinite."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


@dataclass
class RungState:
    """Everything the decision knows: plain data (saved as JSON)."""

    group_of: dict[str, str] = field(default_factory=dict)  # trial id -> group key
    members: dict[str, list[str]] = field(default_factory=dict)  # group -> trials, arrival order
    best: dict[str, float] = field(default_factory=dict)  # trial id -> best-so-far metric
    last_t: dict[str, float] = field(default_factory=dict)
    floor: dict[str, float] = field(default_factory=dict)
    at_rung: dict[str, dict[int, float]] = field(default_factory=dict)  # trial -> rung -> best
    gone: dict[str, str] = field(default_factory=dict)  # trial -> error | removed | complete
    recorded: list[dict[str, float]] = field(default_factory=list)  # per rung: signed values
    decided: dict[str, list[int]] = field(default_factory=dict)  # group -> rungs judged
    stopped: dict[str, str] = field(default_factory=dict)  # group -> why
    history: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RungState:
        state = cls(**{k: v for k, v in d.items() if k in cls.__dataclass_fields__})
        # JSON object keys are strings: rung indices back to ints
        state.at_rung = {t: {int(i): v for i, v in r.items()} for t, r in state.at_rung.items()}
        return state


class Rungs:
    """Seed groups judged at rungs (see the module docstring); `state` is all that changes."""

    def __init__(
        self,
        max_t: int,
        grace_period: int,
        reduction_factor: float,
        min_epochs: int = 0,
        num_seeds: int | None = None,
        floor_margin: float = 0.0,
        time_attr: str = "epoch",
        mode: str = "max",
    ):
        if max_t <= 0 or grace_period <= 0 or grace_period > max_t or reduction_factor <= 1:
            raise ValueError("GroupASHA needs 0 < grace_period <= max_t and reduction_factor > 1")
        self.params = dict(max_t=max_t, grace_period=grace_period,  # what `from_params` takes
                           reduction_factor=reduction_factor, min_epochs=min_epochs,
                           num_seeds=num_seeds, floor_margin=floor_margin, time_attr=time_attr,
                           mode=mode)  # fmt: skip
        self.max_t, self.rf, self.min_epochs = max_t, float(reduction_factor), min_epochs
        self.num_seeds, self.floor_margin = num_seeds, float(floor_margin)
        self.time_attr, self.mode = time_attr, mode
        self.milestones: list[float] = []
        m = float(grace_period)
        while m < max_t:
            self.milestones.append(m)
            m *= self.rf
        self.state = RungState(recorded=[{} for _ in self.milestones])

    # ---- what happens to trials
    def add(self, tid: str, key: str) -> None:
        """Trial `tid` of group `key` (again, after a restore or a retry)."""
        s = self.state
        s.group_of[tid] = key
        members = s.members.setdefault(key, [])
        if tid not in members:
            members.append(tid)
        if s.gone.get(tid) in ("error", "removed"):
            del s.gone[tid]  # requeued after a failure: it will report again

    def observe(self, tid: str, t: float, value: float | None, floor: float | None) -> None:
        """A result at time `t`: best so far, the floor, the best at each rung reached."""
        s = self.state
        if value is not None and better(self.mode, value, s.best.get(tid)):
            s.best[tid] = value
        s.last_t[tid] = max(t, s.last_t.get(tid, t))
        if floor is not None:
            s.floor[tid] = floor
        at = s.at_rung.setdefault(tid, {})
        best = s.best.get(tid)
        for i, milestone in enumerate(self.milestones):
            if t >= milestone and i not in at and best is not None:
                at[i] = best

    def leave(self, tid: str, why: str) -> None:
        """The trial ended: "complete" (its best stands), "error" or "removed"."""
        self.state.gone[tid] = why

    # ---- the decision
    def undecided_rung(self, key: str, t: float) -> int | None:
        """The lowest rung reached at `t` where the group could be stopped and is not judged."""
        done = self.state.decided.get(key, [])
        for i, milestone in enumerate(self.milestones):
            if milestone <= t and milestone >= self.min_epochs and i not in done:
                return i
        return None

    def judge_ready(self, key: str, force: bool = False) -> bool:
        """Judge the group at every rung all its seeds have passed and it was not judged at
        (`force`: on the seeds it has); True when the group is stopped (now or before)."""
        if key in self.state.stopped:
            return True
        done = self.state.decided.setdefault(key, [])
        for i, milestone in enumerate(self.milestones):
            if i in done:
                continue
            got = self._values_at(key, i, force)
            if got is None:
                break
            done.append(i)
            if self._judge(key, i, milestone, *got, partial=force):
                return True
        return False

    def _values_at(
        self, key: str, rung: int, force: bool = False
    ) -> tuple[list[float], list[float]] | None:
        """Per-seed best-so-far at the rung and their floors, or None while a seed is missing
        (`force`: the seeds there are enough)."""
        s = self.state
        members = s.members.get(key, [])
        if self.num_seeds and len(members) < self.num_seeds and not force:
            return None
        values, floors = [], []
        for tid in members:
            gone = s.gone.get(tid)
            if rung in s.at_rung.get(tid, {}):
                values.append(s.at_rung[tid][rung])
            elif gone == "complete" and tid in s.best:
                values.append(s.best[tid])  # ended before the rung: its best stands
            elif gone in ("error", "removed", "complete") or force:
                continue
            else:
                return None
            if tid in s.floor:
                floors.append(s.floor[tid])
        return (values, floors) if values else None

    def _judge(
        self,
        key: str,
        rung: int,
        milestone: float,
        values: list[float],
        floors: list[float],
        partial: bool = False,
    ) -> bool:
        sign = 1.0 if self.mode == "max" else -1.0
        value = float(np.mean(values))
        recorded = self.state.recorded[rung]
        others = list(recorded.values())
        cut = float(np.nanpercentile(others, (1 - 1 / self.rf) * 100)) if others else None
        recorded[key] = sign * value
        floor = float(np.mean(floors)) if floors else None
        mean = f"group mean best {value:.4f} over {len(values)} seed(s)"
        if partial:
            mean += " (the others could not start)"
        stop, why = self._verdict(value, floor, cut, milestone, len(others) + 1)
        why = f"rung {rung + 1} ({self.time_attr} {milestone:g}): {mean}{why}"
        self.state.history.append(
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
            self.state.stopped[key] = why
        return stop

    def _verdict(
        self, value: float, floor: float | None, cut: float | None, milestone: float, groups: int
    ) -> tuple[bool, str]:
        """(stop, the reason's tail) for a group's value against the signed `cut`."""
        sign = 1.0 if self.mode == "max" else -1.0
        if cut is None:
            return False, "; first group at this rung"
        if milestone < self.min_epochs:
            return False, f"; kept, before min_epochs {self.min_epochs}"
        if floor is not None and sign * value <= sign * floor + self.floor_margin:
            return False, f"; kept, not separated from floor {floor:.4f}"
        if sign * value < cut:
            op = "<" if sign > 0 else ">"
            return True, f" {op} cut {sign * cut:.4f} ({groups} groups)"
        return False, f"; kept, cut {sign * cut:.4f} ({groups} groups)"

    # ---- what the trials table asks
    def reason_for(self, tid: str) -> str:
        """Why the trial ended as it did: its group's stop reason, "finished", "error", ..."""
        s = self.state
        key = s.group_of.get(tid)
        if key is None:
            return ""
        gone, last = s.gone.get(tid), s.last_t.get(tid)
        if key in s.stopped:
            ran = last is not None and last >= self.max_t
            return s.stopped[key] + (" (this seed had already finished)" if ran else "")
        if last is not None and last >= self.max_t:
            return "finished"
        if gone == "complete":
            return f"ended by the trial at {self.time_attr} {last:g}" if last else "ended"
        return {"error": "error", "removed": "removed"}.get(gone or "", "running")
