"""Live sweep status on the console: a Ray Tune callback around a pure renderer.

    callback = LiveProgress(metric, mode, max_t, describe=lambda c: describe(c, space.varied),
                            slots=slots, quiet=args.quiet)
    RunConfig(callbacks=[..., callback]); tuner.fit()   # call callback.close() in a finally

At most every `interval_s` seconds (and only when something changed, or every `heartbeat_s`),
it prints trials running / pending / finished / pruned / errored, each running trial's label,
epoch and last metric, the best so far, elapsed time and an ETA. On a terminal the block is
redrawn in place (rich Live); in a file or pipe each status is plain lines, no control codes.

The ETA (driver/eta.py) counts, for every trial not ended, its epochs still possible, its
end-of-trial work (the final epoch's analysis) and, for a trial not running, its start-up,
each timed on this sweep's trials (before a resume too: Tune saves the timings with the
experiment). Pruning (ASHA) ends trials early, so it is an upper bound, and it says so; while
no trial has run its final epoch, the status says that the end-of-trial work is not counted.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import IO, Any

from ray import tune

from driver.eta import Costs, Tracker, estimate
from kdsweep.progress import format_duration
from kdsweep.progress import quiet as prep_quiet

MAX_RUNNING_LINES = 8
ENDED = ("TERMINATED", "ERROR")


@dataclass(frozen=True)
class RunningTrial:
    label: str
    epoch: int
    value: float | None  # last reported metric


@dataclass(frozen=True)
class Snapshot:
    """Everything one status shows (render_status turns it into text)."""

    metric: str
    max_t: int
    elapsed_s: float
    running: tuple[RunningTrial, ...] = ()
    pending: int = 0
    finished: int = 0
    pruned: int = 0
    errored: int = 0
    best: tuple[str, float] | None = None  # (label, value)
    eta_s: float | None = None
    eta_end_known: bool = True  # False: eta_s leaves out end-of-trial work not timed yet


def _value(v: float | None) -> str:
    return "-" if v is None else f"{v:.4f}"


def render_status(snap: Snapshot) -> str:
    """The status block as plain text (no control characters): a summary line, the best trial,
    then one line per running trial."""
    n_run = len(snap.running)
    head = (
        f"[kdsweep] {format_duration(snap.elapsed_s)}  {n_run} running, {snap.pending} pending, "
        f"{snap.finished} finished, {snap.pruned} pruned, {snap.errored} errored"
    )
    if snap.eta_s is not None and not snap.eta_end_known:
        head += f"  ETA ~{format_duration(snap.eta_s)} + end-of-trial work (not timed yet)"
    elif snap.eta_s is not None:
        head += f"  ETA ~{format_duration(snap.eta_s)} (upper bound: pruning)"
    elif n_run or snap.pending:
        head += "  ETA ~? (no epoch done yet)"
    lines = [head]
    if snap.best is not None:
        lines.append(f"  best {snap.metric}={_value(snap.best[1])}  {snap.best[0]}")
    for t in snap.running[:MAX_RUNNING_LINES]:
        lines.append(
            f"  > {t.label}  epoch {t.epoch}/{snap.max_t}  {snap.metric}={_value(t.value)}"
        )
    if n_run > MAX_RUNNING_LINES:
        lines.append(f"  > ... and {n_run - MAX_RUNNING_LINES} more running")
    return "\n".join(lines)


def _epoch(result: dict | None) -> int:
    if not result:
        return 0
    return int(result.get("epoch", result.get("training_iteration", 0)) or 0)


class LiveProgress(tune.Callback):
    """Tune callback that prints `render_status` at most every `interval_s` seconds."""

    def __init__(
        self,
        metric: str,
        mode: str,
        max_t: int,
        describe: Callable[[dict], str],
        slots: int | None = None,
        interval_s: float = 5.0,
        heartbeat_s: float = 30.0,
        quiet: bool = False,
        stream: IO[str] | None = None,
        tty: bool | None = None,
        clock: Callable[[], float] = time.monotonic,
        start: float | None = None,
    ) -> None:
        """`start`: a `clock()` reading elapsed time counts from (default: the first hook)."""
        self.metric, self.mode, self.max_t = metric, mode, max(1, int(max_t))
        self.describe, self.slots = describe, slots
        self.interval_s, self.heartbeat_s, self.quiet = interval_s, heartbeat_s, quiet
        self.stream = stream if stream is not None else sys.stdout
        self.tty = _isatty(self.stream) if tty is None else tty
        self.clock = clock
        self._t0: float | None = start
        self._last_print: float | None = None
        self._last_key: Any = None
        self._tracker = Tracker(self.max_t)
        self._live = None
        self._max_running = 0

    # Tune pickles its callbacks into tuner.pkl and Tuner.restore revives that copy: it must
    # not carry the old process's stream, display or clock readings.
    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state.update(stream=None, _live=None, _t0=None, _last_print=None, _last_key=None)
        state.update(_tracker=Tracker(self.max_t), clock=None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self.stream, self.clock = sys.stdout, time.monotonic
        self.tty = _isatty(self.stream)
        self.quiet = self.quiet or prep_quiet()  # the resuming command's --quiet

    # Tune saves this with the experiment and hands it back on Tuner.restore: a resumed sweep's
    # ETA uses what was timed before the kill (the attempts themselves start afresh).
    def get_state(self) -> dict[str, Any] | None:
        return {"costs": self._tracker.costs.to_dict()}

    def set_state(self, state: dict[str, Any]) -> None:
        self._tracker.costs = Costs.from_dict(state.get("costs", {}))

    # ---- Tune hooks (driver side)
    def on_trial_start(self, iteration, trials, trial, **info):
        self._begin()
        self._tracker.started(trial.trial_id, _epoch(trial.last_result), self.clock())

    def on_trial_result(self, iteration, trials, trial, result, **info):
        self._begin()  # trial.last_result is updated after this hook: use `result`
        self._tracker.reported(trial.trial_id, _epoch(result), self.clock())

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._tracker.ended(trial.trial_id)

    def on_trial_error(self, iteration, trials, trial, **info):
        self._tracker.ended(trial.trial_id)

    def on_trial_recover(self, iteration, trials, trial, **info):
        self._tracker.ended(trial.trial_id)  # retried: the next attempt starts afresh

    def on_step_end(self, iteration, trials, **info):
        self.maybe_print(trials)

    def on_experiment_end(self, trials, **info):
        self.maybe_print(trials, force=True)
        self.close()

    # ---- the work
    def _begin(self) -> None:
        if self._t0 is None:
            self._t0 = self.clock()

    def snapshot(self, trials: list) -> Snapshot:
        """The current state of `trials` as a Snapshot (pure apart from the clock)."""
        self._begin()
        now = self.clock()
        epochs = {t.trial_id: _epoch(getattr(t, "last_result", None)) for t in trials}
        self._tracker.sync(trials, epochs, now)
        running, pending, finished, pruned, errored = [], 0, 0, 0, 0
        best: tuple[str, float] | None = None
        left: list[tuple[int, bool]] = []  # (epochs left, running) of the trials not ended
        sign = 1 if self.mode == "max" else -1
        for t in trials:
            res = getattr(t, "last_result", None) or {}
            epoch, value = _epoch(res), res.get(self.metric)
            label = self.describe(t.config)
            if t.status == "RUNNING":
                running.append(RunningTrial(label, epoch, value))
            elif t.status == "TERMINATED":
                if epoch < self.max_t:
                    pruned += 1
                else:
                    finished += 1
            elif t.status == "ERROR":
                errored += 1
            else:  # PENDING, PAUSED
                pending += 1
            if t.status not in ENDED:
                left.append((max(0, self.max_t - epoch), t.status == "RUNNING"))
            if isinstance(value, int | float) and (best is None or sign * value > sign * best[1]):
                best = (label, float(value))
        self._max_running = max(self._max_running, len(running))
        slots = self.slots or self._max_running or 1
        est = estimate(self._tracker.costs, left, slots)
        eta, end_known = est.seconds, est.end_known
        if not any(n for n, _ in left):
            eta, end_known = (0.0 if finished + pruned + errored else eta), True
        return Snapshot(
            metric=self.metric,
            max_t=self.max_t,
            elapsed_s=now - (self._t0 if self._t0 is not None else now),
            running=tuple(running),
            pending=pending,
            finished=finished,
            pruned=pruned,
            errored=errored,
            best=best,
            eta_s=eta,
            eta_end_known=end_known,
        )

    def maybe_print(self, trials: list, force: bool = False) -> bool:
        """Print a status if due (rate limit; change or heartbeat). True when it printed."""
        if self.quiet:
            return False
        now = self.clock()
        if not force and self._last_print is not None:
            since = now - self._last_print
            if since < self.interval_s:
                return False
        snap = self.snapshot(trials)
        key = (
            tuple((r.label, r.epoch, r.value) for r in snap.running),
            snap.pending,
            snap.finished,
            snap.pruned,
            snap.errored,
            snap.best,
        )
        heartbeat = self._last_print is None or now - self._last_print >= self.heartbeat_s
        if key == self._last_key and not heartbeat:  # force skips only the rate limit
            return False
        self._last_key, self._last_print = key, now
        self._emit(render_status(snap))
        return True

    def _emit(self, text: str) -> None:
        if not self.tty:
            self.stream.write(text + "\n")
            self.stream.flush()
            return
        if self._live is None:
            from rich.console import Console
            from rich.live import Live

            console = Console(file=self.stream, force_terminal=True, highlight=False)
            own = self.stream in (sys.stdout, sys.__stdout__)  # other prints go above it
            self._live = Live(
                console=console,
                auto_refresh=False,
                transient=False,
                redirect_stdout=own,
                redirect_stderr=own,
            )
            self._live.start()
        from rich.text import Text

        self._live.update(Text(text), refresh=True)

    def close(self) -> None:
        """Stop redrawing (leaves the last status on screen). Safe to call twice."""
        if self._live is not None:
            self._live.stop()
            self._live = None


def _isatty(stream: IO[str]) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False
