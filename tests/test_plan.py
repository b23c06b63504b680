"""The sweep plan (driver/plan.py): built once from the command line, one trial count that is
what Tune runs, provenance (a smoke preset never overrides the user or a checkpoint; an error
names its source), and sweeps of an older layout refused in one line."""

from __future__ import annotations

import dataclasses
import pickle
import sys
import types
from pathlib import Path

import pytest
import torch

from driver.cli import build_parser, build_plan, space_from_args
from driver.plan import SMOKE_PRESET, USER, SweepPlan
from kdsweep.errors import KDSweepError


def plan_of(script: str, *argv: str) -> SweepPlan:
    return build_plan(script, build_parser(script, None).parse_args(list(argv)))


# ---------------------------------------------------------------- the trial count
COUNT_CASES = [
    ("temperature", ("--smoke",)),  # a grid: T in {1, 2, 4, 8}
    ("temperature", ("--smoke", "--seeds", "3")),  # the grid x 3 seeds
    ("tune_kd", ("--smoke",)),  # Optuna: 2 suggestions
    ("tune_kd", ("--smoke", "--seeds", "3")),  # 2 suggestions x 3 seeds
]


@pytest.mark.unit
def test_the_trial_count_is_one_number():
    counts = {(s, a): plan_of(s, *a).n_trials for s, a in COUNT_CASES}
    assert list(counts.values()) == [4, 12, 2, 6]
    from driver.packing import max_trials

    for (script, argv), n in counts.items():  # packing caps at the same number
        assert max_trials(plan_of(script, *argv), cpu=1e-3) == n


@pytest.fixture(scope="module")
def local_ray():
    """One small local Ray for the module (the sweep's RaySession interface: `cluster()`)."""
    import ray

    ray.init(num_cpus=2, num_gpus=0, include_dashboard=False, logging_level="ERROR")

    class Session:
        res = {"cpu": 0.5, "gpu": 0.0}

        def cluster(self) -> dict:
            return ray.cluster_resources()

    yield Session()
    ray.shutdown()


@pytest.mark.e2e
@pytest.mark.parametrize("script, argv", COUNT_CASES, ids=lambda v: "-".join(v) if v else "")
def test_printed_packed_and_run_trial_counts_agree(
    script, argv, local_ray, tmp_path, monkeypatch, capsys
):
    """What `fit` prints, what packing counts and how many trials Tune runs are one number
    (today's bug: with --seeds 3 Optuna printed 2 where Tune ran 6, the grid packed 36 for 12).
    Each trial is a stub that reports once: the count, not the training, is under test."""
    from ray import tune

    import driver.tuner as tuner_mod
    from driver.fit import fit
    from driver.packing import max_trials

    def stub(config):
        tune.report({"dev_accuracy": 0.1 * (1 + config.get("seed", 0)), "epoch": 1})

    monkeypatch.setattr(tuner_mod, "run_trial", stub)
    plan = dataclasses.replace(plan_of(script, *argv, "--quiet"), storage=tmp_path)
    grid, _ = fit(plan, local_ray, tune.Callback(), restore=False)
    printed = [ln for ln in capsys.readouterr().out.splitlines() if " trial(s), " in ln]
    assert printed and printed[0].startswith(f"[kdsweep] {len(grid)} trial(s), ")
    assert plan.n_trials == len(grid) == max_trials(plan, cpu=1e-3)
    assert not [r.error for r in grid if r.error]


@pytest.mark.e2e
def test_optuna_with_per_condition_params_runs_through_tune(local_ray, tmp_path, monkeypatch):
    """A space whose conditions have params of their own, searched by Optuna: the Tuner gets
    constants only and Optuna's define-by-run space; each trial's config holds just its
    condition's dimensions, and the trainable gets that condition's fields."""
    from ray import tune

    import driver.tuner as tuner_mod
    from driver.fit import fit
    from trainables.registry import trial_fields

    def stub(config):
        trial_fields(config)  # what run_trial hands the condition
        tune.report({"dev_accuracy": 0.5, "epoch": 1})

    monkeypatch.setattr(tuner_mod, "run_trial", stub)
    space = tmp_path / "space.yaml"
    space.write_text(
        "task: text\nnum_samples: 8\nparams: {temperature: {uniform: [1.0, 8.0]}}\n"
        "conditions:\n  independent: {}\n  soft: {}\n  hard: {alpha: {uniform: [0.2, 0.9]}}\n"
    )
    argv = ("--space", str(space), "--quiet")  # no training: the stub reports at once
    plan = dataclasses.replace(plan_of("strategy", *argv), storage=tmp_path / "runs")
    grid, _ = fit(plan, local_ray, tune.Callback(), restore=False)
    assert len(grid) == plan.n_trials and not [r.error for r in grid if r.error]
    for cfg in (r.config for r in grid):
        searched = {k for k in cfg if k in ("temperature", "hard.alpha")}
        want = {"soft": {"temperature"}, "hard": {"hard.alpha"}, "independent": set()}
        assert searched == want[cfg["condition"]], cfg
    assert len({r.config["condition"] for r in grid}) > 1  # seed 0: 8 trials cover several


@pytest.mark.e2e
def test_the_trainables_seam_sees_its_tune_trial_through_public_apis(local_ray, tmp_path):
    """trainables/tune_io.py, now without ray.train._internal: inside a trial it knows it is
    in Tune, its CPU share and its folder in the sweep's storage (OOM-recovery state lives
    there); outside it knows it is not."""
    from ray import tune

    from trainables import tune_io

    def fn(config):
        where = tune_io.trial_dir()
        tune.report({"in_tune": tune_io._in_tune(), "dir": str(where), "cpus": tune_io.cpu_share()})

    run = tune.RunConfig(storage_path=str(tmp_path), name="seam", verbose=0)
    result = tune.Tuner(tune.with_resources(fn, {"cpu": 0.5}), run_config=run).fit()[0]
    assert result.metrics["in_tune"] is True and result.metrics["cpus"] == 0.5
    assert result.metrics["dir"] == str(tmp_path / "seam" / Path(result.path).name)
    assert not tune_io._in_tune() and tune_io.trial_dir() is None


# ---------------------------------------------------------------- provenance
def _speech_checkpoint(path, layers=2, hidden=96, stack=3):
    """A BiLSTM-CTC saved as one's own training script would (the README's import recipe)."""
    from kdsweep.speech.data import CharVocab
    from kdsweep.speech.models import BiLSTMCTC

    torch.manual_seed(0)
    model = BiLSTMCTC(80, hidden, layers, len(CharVocab()), stack, 0.0)
    torch.save({"model": model.state_dict()}, path)
    return path


@pytest.mark.unit
def test_smoke_keeps_what_a_teacher_checkpoint_fixes(tmp_path):
    """`sweeps/self_distill.py --smoke teacher_checkpoint=my.pt` (2 layers, 96 hidden) used to
    stop on the preset's teacher_layers=1, blaming the YAML; the preset now leaves the fields
    the checkpoint fixes, and the plan says where each value came from."""
    ckpt = _speech_checkpoint(tmp_path / "my.pt")
    plan = plan_of("self_distill", "--smoke", f"teacher_checkpoint={ckpt}")
    assert "teacher_layers" not in plan.space.fixed and "teacher_hidden" not in plan.space.fixed
    assert plan.source_of("teacher_layers") == f"checkpoint {ckpt}"
    assert plan.source_of("teacher_checkpoint") == USER
    assert plan.source_of("hidden") == SMOKE_PRESET and plan.space.fixed["hidden"] == 32
    assert plan.source_of("alpha").startswith("search space ")
    assert plan.source_of("dropout") == "default"


@pytest.mark.unit
def test_smoke_never_overrides_the_user():
    plan = plan_of("temperature", "epochs=3", "max_len=24", "--smoke", "--student", "L2-H64")
    assert plan.space.fixed["epochs"] == 3 and plan.max_epochs == 3
    assert (plan.space.fixed["student"], plan.space.fixed["max_len"]) == ("L2-H64", 24)
    assert plan.space.fixed["per_class"] == 30  # the preset fills in what the user left
    assert plan.source_of("epochs") == USER and plan.source_of("per_class") == SMOKE_PRESET


@pytest.mark.unit
def test_an_error_names_the_source_it_blames(tmp_path):
    ckpt = _speech_checkpoint(tmp_path / "my.pt")
    args = ["--smoke", f"teacher_checkpoint={ckpt}", "teacher_layers=1"]
    with pytest.raises(KDSweepError) as e:
        plan_of("self_distill", *args)
    assert str(e.value).startswith("command line (condition self): field 'teacher_layers': 1")
    assert "contradicts the checkpoint's 2" in str(e.value)
    yaml = tmp_path / "sd.yaml"
    yaml.write_text("task: asr\ncondition: self\nparams: {teacher_layers: 4}\n")
    blamed = rf"^search space {yaml} \(condition self\): .*4 contradicts"
    with pytest.raises(KDSweepError, match=blamed):
        plan_of("self_distill", "--space", str(yaml), f"teacher_checkpoint={ckpt}")
    with pytest.raises(KDSweepError, match=r"^command line \(condition soft\): field 'alpha'"):
        plan_of("temperature", "alpha=1.5")


@pytest.mark.unit
def test_the_plan_is_frozen_and_derived_with_replace():
    plan = plan_of("temperature", "--seeds", "2", "--confirm", "1")
    with pytest.raises(dataclasses.FrozenInstanceError):
        plan.seeds = 3  # type: ignore[misc]
    from driver.confirm import confirm_plan

    cplan = confirm_plan(plan)
    assert cplan.name == f"{plan.name}-confirm-k1-s3" and cplan.seeds == 0
    assert not cplan.scheduler.asha and plan.scheduler.asha
    assert cplan.space is not plan.space and plan.seeds == 2


@pytest.mark.unit
def test_space_from_args_reads_no_namespace_below_the_cli():
    """Below driver/cli.py no module takes an argparse Namespace or reads one with getattr."""
    import ast
    from pathlib import Path

    root = Path(__file__).resolve().parents[1] / "driver"
    for p in root.rglob("*.py"):
        if p.name == "cli.py":
            continue
        text = p.read_text()
        assert "Namespace" not in text and "getattr(args" not in text, p
        ast.parse(text)
    args = build_parser("temperature", None).parse_args([])
    space, sources = space_from_args("temperature", args)
    assert space.task == "text" and all(isinstance(v, str) for v in sources.values())


# ---------------------------------------------------------------- sweeps of an older layout
@pytest.mark.unit
def test_a_sweep_of_the_old_layout_is_refused_in_one_line(tmp_path, monkeypatch):
    """A sweep started before driver/ existed pickled `sweeps.group_asha.GroupASHA` & co. in its
    Tune state: resuming it with this code is refused before anything is touched, with the
    commands that finish it."""
    from driver.resume import check_resume

    old = types.ModuleType("sweeps.group_asha")

    class GroupASHA:  # stands for the old scheduler
        pass

    GroupASHA.__module__, GroupASHA.__qualname__ = old.__name__, "GroupASHA"
    old.GroupASHA = GroupASHA
    monkeypatch.setitem(sys.modules, "sweeps.group_asha", old)
    state = pickle.dumps({"scheduler": GroupASHA(), "n": 3}, protocol=5)
    monkeypatch.delitem(sys.modules, "sweeps.group_asha")
    sweep = tmp_path / "temperature-text-fortunes"
    sweep.mkdir()
    (sweep / "tuner.pkl").write_bytes(state)
    before = sorted(p.name for p in sweep.iterdir())
    with pytest.raises(KDSweepError) as e:
        check_resume(sweep, {}, resume=False)
    msg = str(e.value)
    assert "\n" not in msg and "sweeps.group_asha.GroupASHA" in msg
    assert "git checkout 3e5179f" in msg and "--fresh" in msg
    assert sorted(p.name for p in sweep.iterdir()) == before
    # the same state saved by this version's classes resumes, and so does a sweep started
    # just before driver/fit.py (its trial callback pickled driver.run._describe)
    from driver.group_asha import GroupASHA as Current

    (sweep / "tuner.pkl").write_bytes(pickle.dumps({"cls": Current, "n": 3}, protocol=2))
    assert check_resume(sweep, {}, resume=False) is True
    (sweep / "tuner.pkl").write_bytes(b"cdriver.run\n_describe\n.")  # pickle's GLOBAL opcode
    assert check_resume(sweep, {}, resume=False) is True
    assert pickle.loads(b"cdriver.run\n_describe\n.")({"temperature": 2}, ["temperature"])
