"""Live sweep status (driver/progress.py) and preparation progress (kdsweep/progress.py)."""

from __future__ import annotations

import io
import re

import pytest

from driver.eta import Costs, Tracker, estimate, estimate_eta
from driver.progress import LiveProgress, RunningTrial, Snapshot, render_status
from kdsweep import progress as prep

pytestmark = pytest.mark.unit

CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")  # anything but \t and \n


class FakeTrial:
    def __init__(self, trial_id: str, temperature: float) -> None:
        self.trial_id = trial_id
        self.config = {"condition": "soft", "temperature": temperature}
        self.status = "PENDING"
        self.last_result: dict = {}


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def label(config: dict) -> str:
    return f"{config['condition']} T={config['temperature']:g}"


def make(stream=None, **kw) -> tuple[LiveProgress, Clock]:
    clock = Clock()
    kw = {"slots": 2, **kw}
    cb = LiveProgress(
        "dev_accuracy",
        "max",
        max_t=3,
        describe=label,
        stream=stream if stream is not None else io.StringIO(),
        tty=False,
        clock=clock,
        **kw,
    )
    return cb, clock


# ---------------------------------------------------------------- render_status (pure)
def test_render_status_shows_counts_trials_best_and_eta():
    snap = Snapshot(
        metric="dev_accuracy",
        max_t=3,
        elapsed_s=125,
        running=(RunningTrial("soft T=1", 2, 0.4512), RunningTrial("soft T=8", 1, None)),
        pending=1,
        finished=1,
        pruned=2,
        errored=1,
        best=("soft T=4", 0.49333),
        eta_s=190,
    )
    text = render_status(snap)
    lines = text.splitlines()
    assert lines[0] == (
        "[kdsweep] 2m05s  2 running, 1 pending, 1 finished, 2 pruned, 1 errored  "
        "ETA ~3m10s (upper bound: pruning)"
    )
    assert lines[1] == "  best dev_accuracy=0.4933  soft T=4"
    assert lines[2] == "  > soft T=1  epoch 2/3  dev_accuracy=0.4512"
    assert lines[3] == "  > soft T=8  epoch 1/3  dev_accuracy=-"
    assert not CONTROL.search(text)


def test_render_status_unknown_eta_and_many_running_trials_are_capped():
    running = tuple(RunningTrial(f"t{i}", 1, 0.1) for i in range(11))
    text = render_status(Snapshot("m", 5, 3.0, running=running))
    assert "ETA ~? (no epoch done yet)" in text
    assert text.splitlines()[-1] == "  > ... and 3 more running"
    assert len(text.splitlines()) == 1 + 8 + 1


def test_estimate_eta():
    assert estimate_eta(10, 6.0, 2) == pytest.approx(30.0)
    assert estimate_eta(10, None, 2) is None
    assert estimate_eta(4, 5.0, 0) == pytest.approx(20.0)  # slots never below 1


# ---------------------------------------------------------------- the callback, fake trials
def run_sweep_events(cb: LiveProgress, clock: Clock) -> list[FakeTrial]:
    """4 trials, 2 slots, max_t 3: a finishes, b is pruned after 1 epoch, c errors, d runs."""
    a, b, c, d = (FakeTrial(x, t) for x, t in zip("abcd", (1, 2, 4, 8), strict=True))
    trials = [a, b, c, d]
    for t in (a, b):
        t.status = "RUNNING"
        cb.on_trial_start(0, trials, t)
    cb.on_step_end(0, trials)
    for epoch in (1, 2, 3):
        clock.t += 10
        for t, acc in ((a, 0.3 + 0.1 * epoch), (b, 0.2)):
            if t.status != "RUNNING":
                continue
            res = {"epoch": epoch, "dev_accuracy": acc}
            cb.on_trial_result(0, trials, t, res)
            t.last_result = res
        cb.on_step_end(0, trials)
        if epoch == 1:  # ASHA stops b; c starts in its slot
            b.status = "TERMINATED"
            cb.on_trial_complete(0, trials, b)
            c.status = "RUNNING"
            cb.on_trial_start(0, trials, c)
    a.status = "TERMINATED"
    cb.on_trial_complete(0, trials, a)
    c.status = "ERROR"
    cb.on_trial_error(0, trials, c)
    d.status = "RUNNING"
    cb.on_trial_start(0, trials, d)
    clock.t += 10
    cb.on_step_end(0, trials)
    return trials


def test_callback_counts_pruned_finished_errored_and_best():
    cb, clock = make()
    trials = run_sweep_events(cb, clock)
    snap = cb.snapshot(trials)
    assert (snap.finished, snap.pruned, snap.errored, snap.pending) == (1, 1, 1, 0)
    assert [r.label for r in snap.running] == ["soft T=8"]
    assert snap.best == ("soft T=1", pytest.approx(0.6))
    # a: 3 epochs in 30 s, b: 1 epoch in 10 s -> 10 s per epoch per slot; d has 3 epochs left
    # on 2 slots -> 15 s
    assert snap.eta_s == pytest.approx(15.0)
    assert snap.elapsed_s == pytest.approx(40.0)


def test_callback_mode_min_picks_the_lowest():
    cb, clock = make()
    cb.mode = "min"
    trials = run_sweep_events(cb, clock)
    assert cb.snapshot(trials).best == ("soft T=2", pytest.approx(0.2))


def test_callback_rate_limits_and_prints_only_on_change_or_heartbeat():
    out = io.StringIO()
    cb, clock = make(out, interval_s=5, heartbeat_s=30)
    t = FakeTrial("a", 1)
    t.status = "RUNNING"
    cb.on_trial_start(0, [t], t)
    assert cb.maybe_print([t])  # first status at once
    clock.t += 1
    t.last_result = {"epoch": 1, "dev_accuracy": 0.5}
    assert not cb.maybe_print([t])  # changed, but within 5 s
    clock.t += 5
    assert cb.maybe_print([t])  # changed and due
    clock.t += 10
    assert not cb.maybe_print([t])  # nothing changed, no heartbeat yet
    clock.t += 20
    assert cb.maybe_print([t])  # 30 s heartbeat (elapsed/ETA move on)
    assert out.getvalue().count("[kdsweep]") == 3


def test_callback_quiet_prints_nothing():
    out = io.StringIO()
    cb, clock = make(out, quiet=True)
    run_sweep_events(cb, clock)
    cb.on_experiment_end([])
    assert out.getvalue() == ""


def test_non_tty_output_is_plain_lines_without_control_codes():
    out = io.StringIO()
    cb, clock = make(out, interval_s=0)
    trials = run_sweep_events(cb, clock)
    cb.on_experiment_end(trials)
    text = out.getvalue()
    assert text.count("[kdsweep]") >= 4
    assert "\x1b" not in text and "\r" not in text and not CONTROL.search(text)
    assert "1 finished, 1 pruned, 1 errored" in text.splitlines()[-3]
    assert text.count("1 finished, 1 pruned, 1 errored") == 1  # the end repeats no status


def test_tty_output_redraws_in_place():
    out = io.StringIO()
    cb, clock = make(out, interval_s=0)
    cb.tty = True
    trials = run_sweep_events(cb, clock)
    cb.on_experiment_end(trials)
    text = out.getvalue()
    assert "\x1b[" in text  # cursor movement: redrawn, not appended
    assert "1 finished, 1 pruned, 1 errored" in text
    cb.close()  # a second close is harmless


def test_restored_trial_counts_only_its_new_epochs():
    cb, clock = make()
    t = FakeTrial("a", 1)
    t.status, t.last_result = "RUNNING", {"epoch": 2, "dev_accuracy": 0.4}  # from a checkpoint
    cb.on_trial_start(0, [t], t)
    clock.t += 8
    cb.on_trial_result(0, [t], t, {"epoch": 3, "dev_accuracy": 0.5})
    assert cb._tracker.seconds_per_epoch_slot() == pytest.approx(8.0)


# ---------------------------------------------------------------- the estimate (pure)
def test_estimate_counts_start_epochs_and_the_end_of_trial_work():
    """Epochs of 10 s, a worker start of 6 s, a final epoch of 10 + 50 s (its analysis)."""
    costs = Costs()
    costs.add("first", 16.0, 1)  # start 6 + epoch 10
    costs.add("mid", 20.0, 2)
    costs.add("final", 60.0, 1)  # epoch 10 + analysis 50
    assert costs.rates() == pytest.approx((10.0, 6.0, 50.0))
    # running, 2 epochs left: 20 + 50; pending, 4 epochs: 6 + 40 + 50; ended/0 left: nothing
    est = estimate(costs, [(2, True), (4, False), (0, True)], slots=2)
    assert est.seconds == pytest.approx((70 + 96) / 2) and est.end_known


def test_estimate_before_any_final_epoch_says_the_end_is_not_timed():
    costs = Costs()
    assert estimate(costs, [(3, False)], 1).seconds is None  # nothing timed
    costs.add("first", 12.0, 1)
    costs.add("mid", 10.0, 1)
    est = estimate(costs, [(2, True)], 1)
    assert est.seconds == pytest.approx(20.0) and not est.end_known
    text = render_status(Snapshot("m", 3, 5.0, pending=1, eta_s=20.0, eta_end_known=False))
    assert "ETA ~20s + end-of-trial work (not timed yet)" in text
    assert "upper bound" not in text  # it is not one while the end is missing
    assert estimate(costs, [(0, True)], 1).end_known  # no trial has its end still to come


def test_two_epoch_trials_spread_start_and_end_over_their_epochs():
    tracker = Tracker(max_t=2)
    tracker.started("a", 0, 0.0)
    tracker.reported("a", 1, 15.0)  # start + epoch
    tracker.reported("a", 2, 40.0)  # epoch + analysis
    assert tracker.costs.rates() == pytest.approx((20.0, 0.0, 0.0))
    assert estimate(tracker.costs, [(2, False)], 1).seconds == pytest.approx(40.0)


def test_a_seed_resumed_for_its_last_epoch_times_start_and_end_together():
    """GroupASHA pauses seeds at rungs: a seed resumed at the last rung reports its final
    epoch first; its interval holds a start, an epoch and the end-of-trial work."""
    tracker = Tracker(max_t=3)
    tracker.started("a", 0, 0.0)
    tracker.reported("a", 1, 16.0)  # start 6 + epoch 10
    tracker.reported("a", 2, 26.0)
    tracker.ended("a")  # paused
    assert tracker.costs.rates()[2] is None
    tracker.started("a", 2, 100.0)  # resumed from its checkpoint
    tracker.reported("a", 3, 166.0)  # start 6 + epoch 10 + analysis 50
    assert tracker.costs.rates() == pytest.approx((10.0, 6.0, 50.0))


def test_the_final_epochs_analysis_is_in_the_eta():
    """The `make sweep` case: 10 s epochs and a 60 s final epoch (attributions). Once one trial
    has finished, a pending one is expected to take 3 epochs + 50 s, not 3 epochs."""
    cb, clock = make(slots=1)
    a, b = FakeTrial("a", 1), FakeTrial("b", 2)
    trials = [a, b]
    a.status = "RUNNING"
    cb.on_trial_start(0, trials, a)
    for epoch, seconds in ((1, 10), (2, 10)):
        clock.t += seconds
        a.last_result = {"epoch": epoch, "dev_accuracy": 0.5}
        cb.on_trial_result(0, trials, a, a.last_result)
    snap = cb.snapshot(trials)
    assert snap.eta_s == pytest.approx(10 + 30) and not snap.eta_end_known  # a: 1, b: 3 left
    clock.t += 60
    a.last_result = {"epoch": 3, "dev_accuracy": 0.6}
    cb.on_trial_result(0, trials, a, a.last_result)
    a.status = "TERMINATED"
    cb.on_trial_complete(0, trials, a)
    snap = cb.snapshot(trials)
    assert snap.eta_s == pytest.approx(30 + 50) and snap.eta_end_known
    assert "ETA ~1m20s (upper bound: pruning)" in render_status(snap)


def test_a_resumed_sweep_keeps_what_was_timed_before_the_kill():
    """Tune pickles the callback into tuner.pkl at the start and saves get_state() with the
    experiment; Tuner.restore revives the pickle and hands it the saved state."""
    import pickle

    cb, clock = make()
    at_build = pickle.dumps(cb)
    trials = run_sweep_events(cb, clock)
    saved = cb.get_state()
    before = cb.snapshot(trials).eta_s

    resumed = pickle.loads(at_build)
    resumed.clock = clock
    d = next(t for t in trials if t.trial_id == "d")
    assert resumed.snapshot([d]).eta_s is None  # nothing timed in this process: no guess
    assert "ETA ~? (no epoch done yet)" in render_status(resumed.snapshot([d]))
    resumed.set_state(pickle.loads(pickle.dumps(saved)))
    resumed.slots = cb.slots
    assert resumed.snapshot([d]).eta_s == pytest.approx(before)


# ---------------------------------------------------------------- preparation progress
def test_plain_progress_prints_at_most_every_10_percent_and_at_the_end(monkeypatch):
    monkeypatch.delenv(prep.QUIET_ENV, raising=False)
    out, clock = io.StringIO(), Clock()
    items = list(prep.progress(range(100), desc="features", stream=out, tty=False, clock=clock))
    assert items == list(range(100))
    lines = out.getvalue().splitlines()
    assert len(lines) == 10  # 10 %, 20 %, ..., 90 % and the final 100/100 line
    assert lines[0].startswith("features: 10/100 (10%) 0s elapsed")
    assert lines[-1].startswith("features: 100/100 (100%)")
    assert "\r" not in out.getvalue() and "\x1b" not in out.getvalue()


def test_plain_progress_time_limited_and_eta(monkeypatch):
    monkeypatch.delenv(prep.QUIET_ENV, raising=False)
    out, clock = io.StringIO(), Clock()
    bar = prep.Progress(total=1000, desc="teacher", every_s=30, stream=out, tty=False, clock=clock)
    for _ in range(50):  # 5 % in 60 s: one line after 30 s, one after 60 s
        clock.t += 1.2
        bar.update(1, info="loss 0.41")
    lines = out.getvalue().splitlines()
    assert len(lines) == 2
    assert lines[-1] == "teacher: 50/1000 (5%) 1m00s elapsed, ETA ~19m00s, loss 0.41"


def test_progress_unknown_total():
    out, clock = io.StringIO(), Clock()
    with prep.Progress(desc="synth", stream=out, tty=False, clock=clock) as bar:
        clock.t += 65
        bar.update(7)
    assert out.getvalue().splitlines()[-1] == "synth: 7 done, 1m05s elapsed"


def test_progress_quiet_env_silences(monkeypatch):
    monkeypatch.setenv(prep.QUIET_ENV, "1")
    out = io.StringIO()
    assert list(prep.progress([1, 2, 3], desc="x", stream=out, tty=False)) == [1, 2, 3]
    with prep.Progress(total=3, stream=out, tty=True) as bar:
        bar.update(3)
    assert out.getvalue() == ""


def test_tty_progress_uses_a_bar(monkeypatch):
    monkeypatch.delenv(prep.QUIET_ENV, raising=False)
    out = io.StringIO()
    list(prep.progress(range(5), desc="twin", stream=out, tty=True))
    assert "twin" in out.getvalue() and "5/5" in out.getvalue() and "\r" in out.getvalue()


def test_format_duration():
    assert [prep.format_duration(s) for s in (0, 45.4, 245, 7380)] == [
        "0s",
        "45s",
        "4m05s",
        "2h03m",
    ]
