"""Every text trainable end to end under `local_session`: reports, checkpoints, resume, errors."""

from __future__ import annotations

import json
import math

import pytest
import torch
from safetensors.torch import load_file

import kdsweep.text.teacher_store as teacher_store_mod
import trainables.text.trainable as text_mod
from kdsweep.errors import KDSweepError
from kdsweep.text.teacher_store import StoredTeacher
from trainables import tune_io
from trainables.registry import evaluate_checkpoint
from trainables.text.config import CascadeConfig, TextConfig
from trainables.text.loop import NonFiniteLossError, prepare_text
from trainables.text.trainable import TEXT_CONFIGS, TEXT_TRAINABLES
from trainables.tune_io import local_session

pytestmark = pytest.mark.trial

CHANCE = 1 / 6  # six fortune topics (4 of 24 dev examples; "beats" means at least 5)
# The conftest's small config (L3-H384 student initialised from teacher layers) at a higher lr:
# 2 epochs x 12 steps at 2e-4 barely move it off chance. The final-epoch IG attribution probe
# (tests/test_analysis.py covers it) is off: it would double a trial's cost here.
MAIN = {"lr": 1e-3, "attribution_examples": 0}
# A random-init 2-layer, 128-wide student: ~1 s an epoch, for tests that do not need accuracy.
FAST = {"student": "L2-H128", "student_init": "random", "lr": 3e-3, "attribution_examples": 0}
# Hidden-state MSE at its default weight 1 (through a freshly initialised projection) pulls the
# teacher-initialised student around enough that 2 epochs stay at chance (3 reach ~0.29); at 0.1
# it learns like the others.
OVERRIDES = {"hidden": {"hidden_weight": 0.1}}
# The conditions under test come from the registry, so a new one is trained here without
# editing a list: every condition a sweep can search (a cascade stage, which needs a trained
# student as its teacher, has its own test), and those that read only cached teacher logits.
SEARCHED = sorted(
    c for c, cls in TEXT_CONFIGS.items() if "teacher_checkpoint" not in cls.field_names()
)
LOGITS_ONLY = [
    c for c in SEARCHED if TEXT_CONFIGS[c]().needs.logits and not TEXT_CONFIGS[c]().needs.features
]
# Per known condition: the loss components it reports, and how they add up to `loss` (a new
# condition's own formula is unit-tested with its loss function; here it must report parts).
COMPONENTS = {
    "independent": {"loss_ce"},
    "soft": {"loss_ce", "loss_kd"},
    "hard": {"loss_ce", "loss_kd"},
    "hidden": {"loss_ce", "loss_hidden"},
    "attention": {"loss_ce", "loss_attention"},
    "cosine": {"loss_ce", "loss_cosine"},
    "cascade": {"loss_ce", "loss_kd"},
}
PER_EPOCH = {
    "loss",
    "dev_accuracy",
    "dev_f1",
    "epoch",
    "epoch_seconds",
    "train_seconds",
    "lr",
    "params",
    "params_embeddings",
    "params_non_embedding",
    "size_mb",
    "teacher_dev_accuracy",
    "threads",
    "effective_batch_size",
}
# Wall-clock measurements: everything else a resumed run reports must match exactly.
TIMING = {"epoch_seconds", "train_seconds", "latency_ms", "throughput", "analysis_seconds"}


@pytest.fixture(scope="module", autouse=True)
def _restore_torch_threads():
    """Trials pin torch's threads to their CPU share; give the rest of the session its own."""
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


def _expected_loss(cond: str, cfg: dict, r: dict) -> float | None:
    if cond not in COMPONENTS:
        return None
    alpha = cfg.get("alpha", {"soft": 0.5, "hard": 1.0, "cascade": 0.5}.get(cond, 0.0))
    if cond == "independent":
        return r["loss_ce"]
    if cond in ("soft", "hard", "cascade"):
        return alpha * r["loss_kd"] + (1 - alpha) * r["loss_ce"]
    if cond == "hidden":
        return (1 - alpha) * r["loss_ce"] + cfg.get("hidden_weight", 1.0) * r["loss_hidden"]
    if cond == "cosine":
        return (1 - alpha) * r["loss_ce"] + cfg.get("cosine_weight", 1.0) * r["loss_cosine"]
    return (1 - alpha) * r["loss_ce"] + cfg.get("attention_weight", 0.1) * r["loss_attention"]


def _forbid_teacher_forward(mp: pytest.MonkeyPatch) -> None:
    """Any forward of the stored teacher fails (loading its weights to init a student is fine)."""
    load = StoredTeacher.load_model

    def boom(*a, **k):
        raise AssertionError("the teacher ran a forward pass inside a trial")

    def load_model(self, eager_attention=False):
        model = load(self, eager_attention)
        model.forward = boom
        model.bert.forward = boom
        return model

    mp.setattr(StoredTeacher, "load_model", load_model)
    mp.setattr(StoredTeacher, "features", boom)
    mp.setattr(teacher_store_mod, "finetune", boom)


def _forbid_teacher_entirely(mp: pytest.MonkeyPatch) -> None:
    """No teacher model can even be built: no load_model, no features, no from_pretrained."""
    import transformers

    def boom(*a, **k):
        raise AssertionError("a teacher model was loaded inside a trial")

    class NoAutoModel:
        from_pretrained = staticmethod(boom)

    mp.setattr(StoredTeacher, "load_model", boom)
    mp.setattr(StoredTeacher, "features", boom)
    mp.setattr(StoredTeacher, "_build_features", boom)
    mp.setattr(teacher_store_mod, "finetune", boom)
    mp.setattr(transformers, "AutoModelForSequenceClassification", NoAutoModel)


@pytest.fixture(scope="module")
def trial_run(small_text, tmp_path_factory):
    """run(cond) -> (config, LocalSession) of a 2-epoch trial; each condition runs once."""
    done: dict[str, tuple[dict, tune_io.LocalSession]] = {}

    def run(cond: str):
        if cond not in done:
            cfg = {**small_text, **MAIN, **OVERRIDES.get(cond, {})}
            with pytest.MonkeyPatch.context() as mp:
                if not TEXT_CONFIGS[cond].from_dict(cfg).needs.features:
                    _forbid_teacher_forward(mp)  # cached logits (or nothing) from the teacher
                with local_session(tmp_path_factory.mktemp(f"trial-{cond}")) as session:
                    TEXT_TRAINABLES[cond](cfg)
            done[cond] = (cfg, session)
        return done[cond]

    return run


def _check_run(
    cond: str, cfg: dict, session: tune_io.LocalSession, beats_chance: bool = True
) -> None:
    epochs = cfg["epochs"]
    assert [r["epoch"] for r in session.results] == list(range(1, epochs + 1))
    assert len(session.checkpoints) == epochs
    for r in session.results:
        missing = (PER_EPOCH | COMPONENTS.get(cond, set())) - r.keys()
        assert not missing, f"{cond} epoch {r['epoch']} lacks {sorted(missing)}"
        parts = {k for k in r if k.startswith("loss_")}
        assert parts == COMPONENTS.get(cond, parts) and parts, (cond, parts)
        for k, v in r.items():
            assert isinstance(v, int | float) and math.isfinite(v), (k, v)
        assert 0 <= r["dev_accuracy"] <= 1 and 0 <= r["dev_f1"] <= 1
        assert r["epoch_seconds"] > 0 and r["train_seconds"] >= r["epoch_seconds"]
        assert r["params"] == r["params_embeddings"] + r["params_non_embedding"] > 0
        expected = _expected_loss(cond, cfg, r)
        if expected is not None:
            assert r["loss"] == pytest.approx(expected, rel=1e-4)
        assert r["threads"] == 1  # local_session's default CPU share
    assert session.results[-1]["lr"] < session.results[0]["lr"]  # linear decay
    last = session.last_checkpoint
    assert {"model.safetensors", "state.pt", "config.json"} <= {p.name for p in last.iterdir()}
    saved = json.loads((last / "config.json").read_text())
    assert saved["student"] == cfg["student"] and saved["lr"] == cfg["lr"]
    if beats_chance:  # float32 accuracy: 4/24 reads as 0.16666667 > 1/6, hence the margin
        accs = [r["dev_accuracy"] for r in session.results]
        assert accs[-1] > CHANCE + 0.01, accs


@pytest.mark.parametrize("cond", SEARCHED)
def test_trainable_reports_every_epoch_and_beats_chance(trial_run, cond):
    cfg, session = trial_run(cond)
    _check_run(cond, cfg, session)


def test_cascade_from_an_independent_run(trial_run, small_text, tmp_path):
    """Stage 2 distils from stage 1's checkpoint (which becomes a registered teacher).

    Stage 2 is the fast random-init student: this checks the plumbing, not the accuracy.
    """
    _, stage1 = trial_run("independent")
    ckpt = stage1.last_checkpoint
    cfg = {**small_text, **FAST, "teacher_checkpoint": str(ckpt)}
    with pytest.MonkeyPatch.context() as mp:
        _forbid_teacher_forward(mp)  # stage 1's logits are cached when it is registered
        with local_session(tmp_path) as session:
            TEXT_TRAINABLES["cascade"](cfg)
    _check_run("cascade", cfg, session, beats_chance=False)

    base = prepare_text(TextConfig.from_dict(small_text), log=lambda m: None).teacher
    data = prepare_text(CascadeConfig.from_dict(cfg), log=lambda m: None)
    teacher = data.teacher
    assert teacher.id != base.id and teacher.path.parent == base.path.parent
    assert teacher.meta["source"].startswith(str(ckpt.resolve()))
    # The stage-2 teacher is stage 1's student: its dev accuracy is what stage 1 reported.
    assert teacher.metrics["dev_accuracy"] == pytest.approx(stage1.results[-1]["dev_accuracy"])
    assert session.results[0]["teacher_dev_accuracy"] == teacher.metrics["dev_accuracy"]


def test_cascade_without_a_checkpoint_is_a_clear_error(small_text, tmp_path):
    cfg = {**small_text, **FAST, "teacher_checkpoint": str(tmp_path / "nope")}
    with pytest.raises(KDSweepError, match=r"field 'teacher_checkpoint': .*nope is not a dir"):
        TEXT_TRAINABLES["cascade"](cfg)
    (tmp_path / "empty").mkdir()
    cfg["teacher_checkpoint"] = str(tmp_path / "empty")
    with (
        pytest.raises(KDSweepError, match=r"field 'teacher_checkpoint': .*empty has no model"),
        local_session(tmp_path),
    ):
        TEXT_TRAINABLES["cascade"](cfg)


@pytest.mark.parametrize("cond", LOGITS_ONLY)
def test_logit_conditions_never_run_the_teacher(small_text, tmp_path, monkeypatch, cond):
    _forbid_teacher_entirely(monkeypatch)
    with pytest.raises(AssertionError, match="teacher model was loaded"):
        prepare_text(TextConfig.from_dict(small_text), log=print).teacher.load_model()
    with local_session(tmp_path) as session:
        TEXT_TRAINABLES[cond]({**small_text, **FAST, "epochs": 1})
    assert [r["epoch"] for r in session.results] == [1]
    teacher_terms = {k: v for k, v in session.results[0].items() if k.startswith("loss_")}
    teacher_terms.pop("loss_ce", None)
    assert teacher_terms and all(math.isfinite(v) for v in teacher_terms.values())


def _stop_after_first_epoch(monkeypatch):
    """Simulate a trial killed right after its epoch-1 report (Tune would then restore it)."""

    class Killed(Exception):
        pass

    report = tune_io.report

    def report_then_die(metrics, checkpoint_dir=None):
        report(metrics, checkpoint_dir)
        if metrics["epoch"] == 1:
            raise Killed

    monkeypatch.setattr(tune_io, "report", report_then_die)
    return Killed


def test_resume_matches_the_uninterrupted_run(small_text, tmp_path, monkeypatch):
    cfg = {**small_text, **FAST, "epochs": 3, "data_subset": 96}
    with local_session(tmp_path / "straight") as straight:
        TEXT_TRAINABLES["soft"](cfg)

    killed = _stop_after_first_epoch(monkeypatch)
    with local_session(tmp_path / "first") as first, pytest.raises(killed):
        TEXT_TRAINABLES["soft"](cfg)
    monkeypatch.undo()
    assert [r["epoch"] for r in first.results] == [1]

    with local_session(tmp_path / "resumed", restore_from=first.checkpoints[0]) as resumed:
        TEXT_TRAINABLES["soft"](cfg)
    assert [r["epoch"] for r in resumed.results] == [2, 3]
    for got, want in zip(resumed.results, straight.results[1:], strict=True):
        assert {k: v for k, v in got.items() if k not in TIMING} == {
            k: v for k, v in want.items() if k not in TIMING
        }
    # Training time keeps counting across the restart.
    assert resumed.results[0]["train_seconds"] > first.results[0]["train_seconds"]

    a = load_file(str(resumed.last_checkpoint / "model.safetensors"))
    b = load_file(str(straight.last_checkpoint / "model.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    # ... and the weights did change after epoch 1 (the comparison is not vacuous).
    e1 = load_file(str(first.checkpoints[0] / "model.safetensors"))
    assert any(not torch.equal(e1[k], a[k]) for k in a)


def test_nan_loss_names_the_component_and_epoch(small_text, tmp_path, monkeypatch):
    objective, calls = text_mod.soft_kd_objective, []

    def kd_goes_nan_in_epoch_2(*a, **k):
        total, ce, kd = objective(*a, **k)
        calls.append(1)
        if len(calls) > 2:  # 32 examples / batch 16 = 2 steps per epoch
            kd = kd * float("nan")
            total = total + kd
        return total, ce, kd

    monkeypatch.setattr(text_mod, "soft_kd_objective", kd_goes_nan_in_epoch_2)
    cfg = {**small_text, **FAST, "data_subset": 32, "batch_size": 16, "epochs": 3}
    with (
        local_session(tmp_path) as session,
        pytest.raises(NonFiniteLossError, match=r"at epoch 2 step 0: component\(s\) loss_kd;"),
    ):
        TEXT_TRAINABLES["soft"](cfg)
    assert [r["epoch"] for r in session.results] == [1]


def test_evaluate_text_checkpoint(trial_run):
    cfg, session = trial_run("soft")
    config = {**cfg, "task": "text", "condition": "soft"}
    test = evaluate_checkpoint(config, session.last_checkpoint)
    assert set(test) == {"test_accuracy", "test_f1"}
    assert 0 <= test["test_accuracy"] <= 1 and 0 <= test["test_f1"] <= 1
    # The same code on the dev split reproduces what the trial reported for its last epoch.
    dev = evaluate_checkpoint(config, session.last_checkpoint, split="dev")
    assert dev["dev_accuracy"] == pytest.approx(session.results[-1]["dev_accuracy"])
    assert dev["dev_f1"] == pytest.approx(session.results[-1]["dev_f1"])


def test_torch_threads_follow_the_cpu_share(small_text, tmp_path):
    cfg = {**small_text, **FAST, "epochs": 1, "data_subset": 32, "threads": 0}
    torch.set_num_threads(2)
    with local_session(tmp_path / "a", cpus=1) as session:
        TEXT_TRAINABLES["independent"](cfg)
    assert torch.get_num_threads() == 1
    assert session.results[-1]["threads"] == 1
    # An explicit `threads` wins over the share.
    with local_session(tmp_path / "b", cpus=1) as session:
        TEXT_TRAINABLES["independent"]({**cfg, "threads": 2})
    assert torch.get_num_threads() == 2
    assert session.results[-1]["threads"] == 2


def test_gradient_accumulation_trains_with_the_effective_batch(small_text, tmp_path):
    """grad_accum=2: the optimizer (and the LR schedule) steps every second batch."""
    cfg = {**small_text, **FAST, "epochs": 2, "batch_size": 8, "warmup_ratio": 0.0}
    runs, steps = {}, {}
    for accum in (1, 2):
        with local_session(tmp_path / f"accum{accum}") as session:
            TEXT_TRAINABLES["soft"]({**cfg, "grad_accum": accum})
        runs[accum] = session.results
        state = torch.load(session.last_checkpoint / "state.pt", weights_only=False)
        steps[accum] = state["scheduler"]["last_epoch"]  # LR-scheduler (= optimizer) steps
    plain, accum = runs[1], runs[2]
    assert steps[1] == 2 * steps[2] > 0  # 192 rows / 8 = 24 batches an epoch: 48 vs 24 steps
    # the steps a trial reports (the report's equal-budget check reads them) are the ones taken
    assert {r["steps_per_epoch"] for r in plain} == {steps[1] / 2}
    assert {r["steps_per_epoch"] for r in accum} == {steps[2] / 2}
    assert [r["effective_batch_size"] for r in plain + accum] == [8, 8, 16, 16]
    assert all(math.isfinite(r["loss"]) and 0 <= r["dev_accuracy"] <= 1 for r in accum)
    # Linear decay from lr to 0 over the run's optimizer steps: after epoch 1 of 2 both runs are
    # half way (lr / 2), whatever the step count; the steps are half as many with grad_accum=2.
    assert accum[0]["lr"] == pytest.approx(plain[0]["lr"])
    assert accum[-1]["lr"] == pytest.approx(plain[-1]["lr"]) == pytest.approx(0.0, abs=1e-12)
    assert accum[0]["loss"] != plain[0]["loss"]  # different updates, not the same run twice
