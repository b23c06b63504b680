"""The live status's time estimate: pure (no Ray); driver/progress.py feeds it Tune's events.

A trial's time is three costs, each measured in slot-seconds on the driver's clock from this
sweep's trials (and, on a resume, from those before the kill: `Costs` is saved with Tune's
experiment state):

- start: from a trial's start (Tune's on_trial_start) to its first report, less that report's
  epochs (data, teacher outputs, model, a checkpoint's restore; paid again by a trial that
  waits paused and resumes);
- epoch: between two reports of one attempt, per epoch (training + dev evaluation);
- end: the final epoch's time over an epoch (the end-of-trial analysis: efficiency, and
  Integrated-Gradients attributions when a trial asks for them, ~5 epochs' time).

The time left is, over the trials not ended, their epochs left x epoch + end (+ start for a
trial not running), divided by the slots. Pruning ends trials sooner, so it is an upper bound.
Until a trial has run its final epoch the end cost is unknown: the estimate says so
(`Estimate.end_known`) rather than leave it out. Without reports between two epochs of one
attempt (2-epoch trials), a trial's time is spread evenly over its epochs (start and end
included).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass, field


@dataclass
class Costs:
    """Measured seconds and epochs: the first report of each attempt, middle ones, final
    ones, and first reports that are final too."""

    first_s: float = 0.0
    first_n: int = 0  # epochs those reports covered
    first_count: int = 0  # attempts
    mid_s: float = 0.0
    mid_n: int = 0
    final_s: float = 0.0
    final_n: int = 0
    final_count: int = 0
    both_s: float = 0.0  # an attempt's first report is its final one (a seed paused at the
    both_n: int = 0  # last rung and resumed): start and end in one interval
    both_count: int = 0

    def add(self, kind: str, seconds: float, epochs: int) -> None:
        """One report's interval: `kind` first | mid | final | both."""
        setattr(self, f"{kind}_s", getattr(self, f"{kind}_s") + max(0.0, seconds))
        setattr(self, f"{kind}_n", getattr(self, f"{kind}_n") + epochs)
        if kind != "mid":
            setattr(self, f"{kind}_count", getattr(self, f"{kind}_count") + 1)

    def rates(self) -> tuple[float, float, float | None] | None:
        """(epoch, start, end) seconds per slot; end None while no final epoch was timed;
        None while nothing was timed."""
        ends = self.final_count + self.both_count
        if self.mid_n:
            epoch = self.mid_s / self.mid_n
            start = max(0.0, self.first_s - self.first_n * epoch) / max(1, self.first_count)
            extra = self.final_s - self.final_n * epoch
            extra += self.both_s - self.both_n * epoch - self.both_count * start
            return epoch, start, (max(0.0, extra) / ends if ends else None)
        n = self.first_n + self.final_n + self.both_n
        if not n:
            return None
        return (self.first_s + self.final_s + self.both_s) / n, 0.0, (0.0 if ends else None)

    def to_dict(self) -> dict[str, float]:
        return asdict(self)

    @classmethod
    def from_dict(cls, state: dict) -> Costs:
        return cls(**{k: v for k, v in state.items() if k in cls.__dataclass_fields__})


@dataclass(frozen=True)
class Estimate:
    seconds: float | None  # None: nothing timed yet
    end_known: bool = True  # False: the end-of-trial work still to come is not in `seconds`


def estimate_eta(
    epochs_left: int, seconds_per_epoch_slot: float | None, slots: int
) -> float | None:
    """Seconds for `epochs_left` epochs on `slots` parallel slots (None: no rate known yet)."""
    if seconds_per_epoch_slot is None:
        return None
    return epochs_left * seconds_per_epoch_slot / max(1, slots)


def estimate(costs: Costs, left: Iterable[tuple[int, bool]], slots: int) -> Estimate:
    """Seconds for the trials `left`, each (epochs left, running now), on `slots` slots."""
    rates = costs.rates()
    if rates is None:
        return Estimate(None)
    epoch, start, end = rates
    left = [(n, running) for n, running in left if n > 0]
    extra = sum((0.0 if running else start) + (end or 0.0) for _, running in left)
    seconds = estimate_eta(sum(n for n, _ in left), epoch, slots) or 0.0
    return Estimate(seconds + extra / max(1, slots), end is not None or not left)


@dataclass
class _Attempt:
    start: float  # when this attempt was seen starting
    epoch: int  # the last epoch seen (a restored trial starts at its checkpoint's)
    last: float  # when it was last reported (or started)
    reported: bool = False


@dataclass
class Tracker:
    """Times each trial attempt's reports into `costs` (max_t: the final epoch)."""

    max_t: int
    costs: Costs = field(default_factory=Costs)
    attempts: dict[str, _Attempt] = field(default_factory=dict)

    def started(self, trial_id: str, epoch: int, now: float) -> None:
        if trial_id not in self.attempts:
            self.attempts[trial_id] = _Attempt(now, epoch, now)

    def reported(self, trial_id: str, epoch: int, now: float) -> None:
        a = self.attempts.get(trial_id)
        if a is None:  # a start no hook reported: timed from this report on
            self.attempts[trial_id] = _Attempt(now, epoch, now, reported=True)
            return
        if epoch <= a.epoch:
            return
        kind = ("final" if epoch >= self.max_t else "mid") if a.reported else "first"
        if not a.reported and epoch >= self.max_t:
            kind = "both"
        self.costs.add(kind, now - a.last, epoch - a.epoch)
        a.epoch, a.last, a.reported = epoch, now, True

    def ended(self, trial_id: str) -> None:
        self.attempts.pop(trial_id, None)  # a retry or a resumed pause starts a new attempt

    def seconds_per_epoch_slot(self) -> float | None:
        rates = self.costs.rates()
        return rates[0] if rates else None

    def sync(self, trials: list, epochs: dict[str, int], now: float) -> None:
        """Catch up from the trials' states (`epochs`: trial id -> its last reported epoch)."""
        for t in trials:
            if t.status == "RUNNING":
                self.started(t.trial_id, epochs.get(t.trial_id, 0), now)
            else:
                self.ended(t.trial_id)
