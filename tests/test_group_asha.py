"""GroupASHA and SeedGroupSearcher: seeds of a config kept or stopped, and reported, as one unit."""

from __future__ import annotations

import pickle

import pytest
from ray.tune.experiment import Trial
from ray.tune.schedulers import TrialScheduler

from driver.group_asha import GroupASHA, stop_reasons
from driver.seed_groups import SeedGroupSearcher, group_key

pytestmark = pytest.mark.unit

CONTINUE, STOP, PAUSE = TrialScheduler.CONTINUE, TrialScheduler.STOP, TrialScheduler.PAUSE


class Controller:
    """What a scheduler may ask of Tune's controller: the trials, and stop_trial (which, as
    Tune's, tells the scheduler on_trial_remove for a paused or pending trial)."""

    def __init__(self):
        self.trials: list[Trial] = []
        self.sched = None
        self.stopped: list[str] = []

    def get_trials(self):
        return self.trials

    def stop_trial(self, trial):
        if trial.status in (Trial.PAUSED, Trial.PENDING):
            self.sched.on_trial_remove(self, trial)
        trial.set_status(Trial.TERMINATED)
        self.stopped.append(trial.trial_id)


def make(sched: GroupASHA, ctl: Controller, config: dict) -> Trial:
    trial = Trial("__fake", config=config, stub=True)
    trial.set_status(Trial.RUNNING)
    ctl.trials.append(trial)
    ctl.sched = sched
    sched.on_trial_add(ctl, trial)
    return trial


def report(sched, ctl, trial, epoch, acc, **extra):
    """One result, with Tune's response to the decision: a paused trial is resumed by the
    next report (as Tune does once choose_trial_to_run picks it), a stopped one completes."""
    trial.set_status(Trial.RUNNING)
    result = {"epoch": epoch, "acc": acc, **extra}
    action = sched.on_trial_result(ctl, trial, result)
    if action == PAUSE:
        trial.set_status(Trial.PAUSED)
    elif action == STOP:
        sched.on_trial_complete(ctl, trial, result)
        trial.set_status(Trial.TERMINATED)
    return action


def scheduler(**kw) -> GroupASHA:
    kw = {"metric": "acc", "mode": "max", "max_t": 8, "grace_period": 1, "num_seeds": 2, **kw}
    kw.setdefault("wait", False)
    kw.setdefault("floor_key", None)
    return GroupASHA(**kw)


def group(sched, ctl, T, seeds=(0, 1)):
    return [make(sched, ctl, {"T": T, "seed": s}) for s in seeds]


def test_group_key_ignores_seed_and_named_keys():
    a = group_key({"T": 2, "seed": 0, "data_dir": "/x"}, ignore={"data_dir"})
    assert a == group_key({"seed": 3, "T": 2, "data_dir": "/y"}, ignore={"data_dir"})
    assert a != group_key({"T": 4, "seed": 0})


def test_group_stopped_as_a_unit():
    sched, ctl = scheduler(), Controller()
    a0, a1 = group(sched, ctl, 2)
    b0, b1 = group(sched, ctl, 4)
    assert report(sched, ctl, a0, 1, 0.8) == CONTINUE
    assert report(sched, ctl, a1, 1, 0.7) == CONTINUE  # first group at rung 1: kept
    assert report(sched, ctl, b0, 1, 0.5) == CONTINUE  # b1 not there yet: not judged
    assert report(sched, ctl, b0, 2, 0.5) == CONTINUE  # ahead of its group: goes on
    assert report(sched, ctl, b1, 1, 0.4) == STOP  # group b (0.45 < 0.75) stopped here...
    assert report(sched, ctl, b0, 3, 0.9) == STOP  # ...and its running seed on its next result
    assert sched.reason_for(b0.trial_id) == sched.reason_for(b1.trial_id)
    assert sched.is_stopped(b0.trial_id) and not sched.is_stopped(a0.trial_id)
    assert sched.group_of(b0.trial_id) == sched.group_of(b1.trial_id)
    assert sched.reason_for(b0.trial_id).startswith("rung 1 (epoch 1): group mean best 0.4500")
    assert "< cut 0.7500 (2 groups)" in sched.reason_for(b1.trial_id)
    assert report(sched, ctl, a0, 2, 0.8) == CONTINUE


def test_seeds_straddling_the_cut_share_the_group_fate():
    """Seed 0 of config b beats the cut alone, seed 1 does not: the group mean decides."""
    sched, ctl = scheduler(), Controller()
    a0, a1 = group(sched, ctl, 2)
    report(sched, ctl, a0, 1, 0.6)
    report(sched, ctl, a1, 1, 0.6)
    b0, b1 = group(sched, ctl, 4)
    c0, c1 = group(sched, ctl, 8)
    assert report(sched, ctl, b0, 1, 0.9) == CONTINUE
    assert report(sched, ctl, b1, 1, 0.2) == STOP  # mean 0.55 < 0.6: both seeds go
    assert report(sched, ctl, b0, 2, 0.9) == STOP
    assert report(sched, ctl, c0, 1, 0.3) == CONTINUE
    assert report(sched, ctl, c1, 1, 0.95) == CONTINUE  # mean 0.625 > cut: both stay
    assert report(sched, ctl, c0, 2, 0.3) == CONTINUE


def test_rung_value_is_best_so_far_not_last_epoch():
    sched, ctl = scheduler(grace_period=2), Controller()
    a0, a1 = group(sched, ctl, 2)
    for t, acc in [(1, 0.6), (2, 0.6)]:
        report(sched, ctl, a0, t, acc)
        report(sched, ctl, a1, t, acc)
    b0, b1 = group(sched, ctl, 4)
    report(sched, ctl, b0, 1, 0.9)  # best 0.9, then a noisy dip at the rung
    report(sched, ctl, b1, 1, 0.9)
    report(sched, ctl, b0, 2, 0.3)
    assert report(sched, ctl, b1, 2, 0.3) == CONTINUE  # judged on 0.9 (last epoch: 0.3)
    assert sched.decisions()[-1]["value"] == pytest.approx(0.9)


def test_min_epochs_respected():
    sched, ctl = scheduler(min_epochs=3), Controller()
    a0, a1 = group(sched, ctl, 2)
    b0, b1 = group(sched, ctl, 4)
    for t in (1, 2):
        report(sched, ctl, a0, t, 0.8)
        report(sched, ctl, a1, t, 0.8)
        report(sched, ctl, b0, t, 0.1)
        assert report(sched, ctl, b1, t, 0.1) == CONTINUE  # rungs 1, 2 are below min_epochs
    assert "before min_epochs 3" in sched.decisions()[-1]["reason"]
    for t in (3, 4):
        report(sched, ctl, a0, t, 0.8)
        report(sched, ctl, a1, t, 0.8)
        report(sched, ctl, b0, t, 0.1)
    assert report(sched, ctl, b1, 4, 0.1) == STOP  # rung at epoch 4 >= min_epochs
    assert sched.reason_for(b1.trial_id).startswith("rung 3 (epoch 4)")


def test_not_stopped_while_at_the_majority_rate_floor():
    sched, ctl = scheduler(floor_key="dev_majority_rate"), Controller()
    a0, a1 = group(sched, ctl, 2)
    b0, b1 = group(sched, ctl, 4)
    report(sched, ctl, a0, 1, 0.7, dev_majority_rate=0.5)
    report(sched, ctl, a1, 1, 0.7, dev_majority_rate=0.5)
    report(sched, ctl, b0, 1, 0.5, dev_majority_rate=0.5)
    assert report(sched, ctl, b1, 1, 0.5, dev_majority_rate=0.5) == CONTINUE
    assert "not separated from floor 0.5000" in sched.decisions()[-1]["reason"]
    report(sched, ctl, a0, 2, 0.7, dev_majority_rate=0.5)
    report(sched, ctl, a1, 2, 0.7, dev_majority_rate=0.5)
    report(sched, ctl, b0, 2, 0.55, dev_majority_rate=0.5)
    assert report(sched, ctl, b1, 2, 0.55, dev_majority_rate=0.5) == STOP  # separated, behind


def test_errored_seed_leaves_the_group_and_the_rest_decides():
    sched, ctl = scheduler(), Controller()
    a0, a1 = group(sched, ctl, 2)
    report(sched, ctl, a0, 1, 0.8)
    report(sched, ctl, a1, 1, 0.8)
    b0, b1 = group(sched, ctl, 4)
    report(sched, ctl, b0, 1, 0.1)
    sched.on_trial_error(ctl, b1)  # b1 will never report: b is judged on b0 alone
    assert report(sched, ctl, b0, 2, 0.1) == STOP
    assert "over 1 seed(s)" in sched.reason_for(b0.trial_id)
    assert sched.reason_for(b1.trial_id) == sched.reason_for(b0.trial_id)


def test_group_waits_for_seeds_not_yet_created():
    sched, ctl = scheduler(), Controller()
    a0, a1 = group(sched, ctl, 2)
    report(sched, ctl, a0, 1, 0.8)
    report(sched, ctl, a1, 1, 0.8)
    (b0,) = group(sched, ctl, 4, seeds=(0,))
    assert report(sched, ctl, b0, 1, 0.1) == CONTINUE  # num_seeds=2: b1 still to come
    (b1,) = group(sched, ctl, 4, seeds=(1,))
    assert report(sched, ctl, b1, 1, 0.1) == STOP


def test_finished_and_max_t():
    sched, ctl = scheduler(max_t=2), Controller()
    a0, a1 = group(sched, ctl, 2)
    report(sched, ctl, a0, 1, 0.8)
    report(sched, ctl, a1, 1, 0.8)
    assert report(sched, ctl, a0, 2, 0.8) == STOP
    sched.on_trial_complete(ctl, a0, {"epoch": 2, "acc": 0.8})
    assert sched.reason_for(a0.trial_id) == "finished"
    assert sched.reason_for(a1.trial_id) == "running"


def test_pending_sibling_of_a_running_seed_runs_first():
    sched, ctl = scheduler(), Controller()
    a0, a1 = group(sched, ctl, 2)
    b0, b1 = group(sched, ctl, 4)
    a0.set_status(Trial.TERMINATED)
    a1.set_status(Trial.PENDING)
    b1.set_status(Trial.PENDING)
    assert sched.choose_trial_to_run(ctl) is b1
    b0.set_status(Trial.TERMINATED)
    assert sched.choose_trial_to_run(ctl) is a1


def test_state_survives_pickle_and_restore(tmp_path):
    """Tune pickles the scheduler when the Tuner is built and brings that copy back on
    restore: decisions taken after that come back from the state file."""
    state = tmp_path / "group_asha.state"
    sched, ctl = scheduler(state_path=state), Controller()
    at_build = pickle.dumps(sched)
    a0, a1 = group(sched, ctl, 2)
    b0, b1 = group(sched, ctl, 4)
    report(sched, ctl, a0, 1, 0.8)
    report(sched, ctl, a1, 1, 0.8)
    report(sched, ctl, b0, 1, 0.1)
    assert report(sched, ctl, b1, 1, 0.1) == STOP

    restored = pickle.loads(at_build)
    restored.set_search_properties(None, None)
    for t in ctl.trials:  # Tune re-adds every trial on restore
        restored.on_trial_add(ctl, t)
    assert report(restored, ctl, b0, 2, 0.9) == STOP  # b stays stopped
    assert report(restored, ctl, a0, 2, 0.8) == CONTINUE
    assert restored.reason_for(b1.trial_id) == sched.reason_for(b1.trial_id)
    assert stop_reasons(state)[b0.trial_id] == sched.reason_for(b0.trial_id)

    other = scheduler(state_path=state)  # another Tuner's scheduler ignores this file
    other.set_search_properties(None, None)
    assert other.decisions() == []

    copy_path = tmp_path / "saved.pkl"
    sched.save(str(copy_path))
    fresh = scheduler()
    fresh.restore(str(copy_path))
    assert fresh.reason_for(b0.trial_id) == sched.reason_for(b0.trial_id)


def test_mode_min():
    sched, ctl = scheduler(mode="min"), Controller()
    a0, a1 = group(sched, ctl, 2)
    b0, b1 = group(sched, ctl, 4)
    report(sched, ctl, a0, 1, 0.2)
    report(sched, ctl, a1, 1, 0.2)
    report(sched, ctl, b0, 1, 0.6)
    assert report(sched, ctl, b1, 1, 0.6) == STOP
    assert "> cut 0.2000" in sched.reason_for(b0.trial_id)


# ---- SeedGroupSearcher


def _optuna_seed_groups(n_seeds=2):
    from ray import tune
    from ray.tune.search.optuna import OptunaSearch

    inner = OptunaSearch(metric="acc", mode="max", seed=0)
    searcher = SeedGroupSearcher(inner, seeds=n_seeds)
    space = {"T": tune.uniform(1, 8), "seed": tune.grid_search([0, 1])}
    assert searcher.set_search_properties("acc", "max", space)
    return searcher, inner


def test_seed_group_searcher_emits_seeds_and_tells_optuna_the_mean():
    searcher, inner = _optuna_seed_groups()
    c1, c2, c3 = (searcher.suggest(f"t{i}") for i in range(3))
    assert c1["T"] == c2["T"] != c3["T"]
    assert (c1["seed"], c2["seed"], c3["seed"]) == (0, 1, 0)
    searcher.on_trial_result("t0", {"acc": 0.9})  # best-so-far 0.9 ...
    searcher.on_trial_complete("t0", {"acc": 0.5})  # ... though it ended at 0.5
    assert inner._ot_study.trials[0].value is None  # t1 still running: Optuna waits
    searcher.on_trial_complete("t1", {"acc": 0.6})
    assert inner._ot_study.trials[0].value == pytest.approx(0.75)
    assert len(inner._ot_study.trials) == 2  # one Optuna trial per group, not per seed
    assert searcher.groups()[0]["value"] == pytest.approx(0.75)


def test_seed_group_searcher_errored_group_and_state_round_trip():
    searcher, inner = _optuna_seed_groups()
    for i in range(2):
        searcher.suggest(f"t{i}")
    state = pickle.loads(pickle.dumps(searcher.get_state()))
    again, _ = _optuna_seed_groups()
    again.searcher = inner
    again.set_state(state)
    again.on_trial_complete("t0", None, error=True)
    again.on_trial_complete("t1", None, error=True)
    import optuna

    assert inner._ot_study.trials[0].state == optuna.trial.TrialState.FAIL


# ---- waiting: a seed that reaches a rung first is paused until its group is judged there


def test_first_seed_at_a_rung_waits_paused_and_shares_the_stop():
    sched, ctl = scheduler(wait=True), Controller()
    a0, a1 = group(sched, ctl, 2)
    b0, b1 = group(sched, ctl, 4)
    assert report(sched, ctl, a0, 1, 0.8) == PAUSE  # a1 not at rung 1 yet
    assert sched.choose_trial_to_run(ctl) is None  # a0 waits; nothing else to start
    assert report(sched, ctl, a1, 1, 0.8) == CONTINUE  # group a judged (kept): a0 released
    assert sched.choose_trial_to_run(ctl) is a0
    assert report(sched, ctl, b0, 1, 0.1) == PAUSE
    assert report(sched, ctl, b1, 1, 0.1) == STOP  # group b stopped...
    assert b0.trial_id in ctl.stopped  # ...and its paused seed with it, at once
    assert b0.status == Trial.TERMINATED
    assert sched.reason_for(b0.trial_id) == sched.reason_for(b1.trial_id) != ""


def test_a_seed_created_late_ends_the_stall_before_the_group_is_judged():
    """The strategy sweep's failure: every created seed paused at a rung, the group's other
    seeds not created by Tune yet; they must be waited for, not judged without."""
    now = [0.0]
    sched = scheduler(wait=True, num_seeds=2, stall_patience_s=20, clock=lambda: now[0])
    ctl = Controller()
    (a0,) = group(sched, ctl, 2, seeds=(0,))
    assert report(sched, ctl, a0, 1, 0.8) == PAUSE
    assert sched.choose_trial_to_run(ctl) is None
    now[0] = 5.0
    (a1,) = group(sched, ctl, 2, seeds=(1,))  # Tune adds the next trial: pending
    a1.set_status(Trial.PENDING)
    assert sched.choose_trial_to_run(ctl) is a1
    now[0] = 60.0
    assert report(sched, ctl, a1, 1, 0.7) == CONTINUE  # judged on both seeds
    assert "over 2 seed(s)" in sched.decisions()[-1]["reason"]
    assert "could not start" not in sched.decisions()[-1]["reason"]


def test_no_wait_below_min_epochs():
    sched, ctl = scheduler(wait=True, min_epochs=2), Controller()
    a0, a1 = group(sched, ctl, 2)
    assert report(sched, ctl, a0, 1, 0.8) == CONTINUE  # rung 1 cannot stop anyone
    assert report(sched, ctl, a0, 2, 0.8) == PAUSE


def test_stalled_group_is_judged_on_the_seeds_it_has():
    """num_seeds=3 but a concurrency limit lets only 2 seeds live: they must not wait forever,
    but a stall is only believed once it lasts (Tune creates trials lazily: a seed not created
    yet is not a seed that cannot start)."""
    now = [0.0]
    sched = scheduler(wait=True, num_seeds=3, stall_patience_s=20, clock=lambda: now[0])
    ctl = Controller()
    a0, a1 = group(sched, ctl, 2)
    assert report(sched, ctl, a0, 1, 0.8) == PAUSE
    assert report(sched, ctl, a1, 1, 0.8) == PAUSE
    assert sched.choose_trial_to_run(ctl) is None  # stalled since now: not judged yet
    now[0] = 19.0
    assert sched.choose_trial_to_run(ctl) is None and not sched.decisions()
    now[0] = 21.0
    assert sched.choose_trial_to_run(ctl) in (a0, a1)  # nothing ran for 21 s: judged, released
    assert "over 2 seed(s) (the others could not start)" in sched.decisions()[-1]["reason"]
    (a2,) = group(sched, ctl, 2, seeds=(2,))  # the third seed later follows the group
    assert report(sched, ctl, a2, 1, 0.8) == CONTINUE


def test_seed_group_searcher_under_tune_wrappers_with_the_seed_grid_left_in_the_space():
    """As Tune wires it (max_concurrent_trials -> ConcurrencyLimiter, SearchGenerator), with
    the `seed` grid driver/space.py adds for --seeds still in the param space."""
    from ray import tune
    from ray.tune.experiment import Experiment
    from ray.tune.search import ConcurrencyLimiter, SearchGenerator
    from ray.tune.search.optuna import OptunaSearch

    alg = SearchGenerator(
        ConcurrencyLimiter(SeedGroupSearcher(OptunaSearch(seed=0), seeds=3), max_concurrent=6)
    )
    space = {"T": tune.uniform(1, 8), "seed": tune.grid_search([0, 1, 2])}
    assert alg.set_search_properties("acc", "max", space)
    alg.add_configurations([Experiment("x", lambda c: None, config=space, num_samples=6)])
    configs = [alg.next_trial().config for _ in range(6)]
    assert [c["seed"] for c in configs] == [0, 1, 2, 0, 1, 2]
    assert len({c["T"] for c in configs[:3]}) == 1 and configs[0]["T"] != configs[3]["T"]


def test_state_file_name_that_tune_would_overwrite_is_refused(tmp_path):
    with pytest.raises(ValueError, match="stale copy"):
        scheduler(state_path=tmp_path / "group_asha.pkl")
