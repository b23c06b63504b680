"""GroupASHA inside a real `tune.Tuner`: the seeds of each config end the same way, and the
scheduler's decisions survive an interrupted sweep resumed with `Tuner.restore`."""

from __future__ import annotations

import os
import signal

import pytest

from driver.group_asha import GroupASHA, stop_reasons

pytestmark = pytest.mark.e2e


def test_tuner_keeps_or_stops_each_config_with_all_its_seeds_across_a_restore(tmp_path):
    ray = pytest.importorskip("ray")
    from ray import tune

    # T=2's seeds straddle the others (0.6 and 0.0): only the group mean (0.3) can decide.
    level = {1: (0.8, 0.8), 2: (0.6, 0.0), 4: (0.9, 0.9)}
    max_t = 6

    def trainable(config):  # checkpoints every epoch, so a paused seed resumes where it was
        import json
        import os
        import tempfile
        import time

        acc, start = level[config["T"]][config["seed"]], 1
        ckpt = tune.get_checkpoint()
        if ckpt:
            with ckpt.as_directory() as d, open(os.path.join(d, "state.json")) as f:
                start = json.load(f)["epoch"] + 1
        for epoch in range(start, max_t + 1):
            time.sleep(0.3)
            with tempfile.TemporaryDirectory() as d:
                with open(os.path.join(d, "state.json"), "w") as f:
                    json.dump({"epoch": epoch}, f)
                metrics = {"epoch": epoch, "acc": acc + 0.01 * epoch, "start": start}
                tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(d))

    fired = tmp_path / "interrupted"

    class Interrupt(tune.Callback):
        """Ctrl-C (Tune saves its state and returns) at the 8th result, once (the restored
        Tuner brings back its own copy of this callback: the flag is a file)."""

        def __init__(self):
            self.results = 0

        def on_trial_result(self, iteration, trials, trial, result, **info):
            self.results += 1
            if self.results == 8 and not fired.exists():
                fired.touch()
                os.kill(os.getpid(), signal.SIGINT)

    state = tmp_path / "g" / "group_asha.state"  # in the experiment folder, as a sweep has it
    sched = GroupASHA(max_t=max_t, grace_period=1, reduction_factor=2, num_seeds=2,
                      floor_key=None, state_path=state)  # fmt: skip
    trn = tune.with_resources(trainable, {"cpu": 1})
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    try:
        tune.Tuner(
            trn,
            param_space={"T": tune.grid_search([1, 2, 4]), "seed": tune.grid_search([0, 1])},
            tune_config=tune.TuneConfig(metric="acc", mode="max", scheduler=sched),
            run_config=tune.RunConfig(
                storage_path=str(tmp_path), name="g", verbose=0, callbacks=[Interrupt()]
            ),
        ).fit()
        before = GroupASHA.load(state).decisions()
        assert tune.Tuner.can_restore(str(tmp_path / "g"))
        grid = tune.Tuner.restore(str(tmp_path / "g"), trainable=trn, resume_errored=True).fit()
    finally:
        ray.shutdown()

    assert fired.exists()  # the first run was interrupted
    after = GroupASHA.load(state).decisions()
    assert before and after[: len(before)] == before  # what was decided stays decided
    judged = [(d["group"], d["rung"]) for d in after]
    assert len(judged) == len(set(judged))  # and no group is judged twice at a rung
    reasons = stop_reasons(state)
    ended: dict[int, set] = {}
    for r in grid:
        assert r.error is None
        finished = r.metrics["epoch"] >= max_t
        why = reasons[r.metrics["trial_id"]]
        assert why.startswith("finished") == finished, why
        ended.setdefault(r.config["T"], set()).add(finished)
    assert all(len(fates) == 1 for fates in ended.values()), ended  # one fate per config
    assert ended[4] == {True}  # the best config ran to the end
    assert ended[2] == {False}  # the straddling config was stopped with both its seeds
    # a seed that got to a rung first waited paused and resumed from its checkpoint
    assert any(r.metrics["start"] > 1 for r in grid if r.config["T"] != 2)
