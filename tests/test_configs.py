"""Typed trial configs, student sizes, layer maps and parameter counts."""

from __future__ import annotations

import pytest

from kdsweep.config import RESERVED_KEYS
from kdsweep.errors import KDSweepError
from kdsweep.text.models import (
    OLD_SHAPE_NAMES,
    build_student,
    count_parameters,
    layer_map,
    parse_size,
    resolve_backbone,
)
from trainables import registry
from trainables.text.config import (
    AttentionConfig,
    CascadeConfig,
    HardConfig,
    HiddenConfig,
    SoftConfig,
    TextConfig,
)

pytestmark = pytest.mark.unit


# ---------------------------------------------------------------- from_dict
def test_defaults_build():
    for cls in (TextConfig, SoftConfig, HardConfig, HiddenConfig, AttentionConfig, CascadeConfig):
        cfg = cls.from_dict({})
        assert cfg.to_dict() == cls().to_dict()


def test_unknown_key_with_did_you_mean_hint():
    with pytest.raises(KDSweepError) as e:
        SoftConfig.from_dict({"temprature": 2.0}, where="sweep.yaml")
    msg = str(e.value)
    assert "sweep.yaml" in msg and "'temprature'" in msg and "SoftConfig" in msg
    assert "did you mean 'temperature'?" in msg
    assert "valid keys:" in msg


def test_unknown_key_without_close_match_has_no_hint():
    with pytest.raises(KDSweepError, match="unknown key 'zzzzzz'") as e:
        TextConfig.from_dict({"zzzzzz": 1})
    assert "did you mean" not in str(e.value)


def test_key_of_another_condition_is_unknown():
    # `temperature` is a soft-KD field; the independent baseline must not silently accept it.
    with pytest.raises(KDSweepError, match="unknown key 'temperature' for TextConfig"):
        TextConfig.from_dict({"temperature": 2.0})


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("lr", "abc"),
        ("epochs", "two"),
        ("epochs", 2.5),
        ("epochs", True),
        ("student", None),
        ("lr", True),
        ("student_init", 3.0 + 1j),
    ],
)
def test_wrong_types_are_rejected(key, value):
    with pytest.raises(KDSweepError, match=rf"field '{key}' must be (float|int|str)"):
        SoftConfig.from_dict({key: value}, where="trial")


def test_coercions():
    cfg = SoftConfig.from_dict(
        {
            "lr": 1,
            "temperature": 4,
            "epochs": 3.0,
            "batch_size": "16",
            "alpha": "0.25",
            "student": "L2-H128",
        }
    )
    assert cfg.lr == 1.0 and isinstance(cfg.lr, float)
    assert cfg.temperature == 4.0 and isinstance(cfg.temperature, float)
    assert cfg.epochs == 3 and isinstance(cfg.epochs, int)
    assert cfg.batch_size == 16 and cfg.alpha == 0.25


@pytest.mark.parametrize("value", [-0.1, 1.5, float("nan")])
def test_alpha_outside_unit_interval(value):
    with pytest.raises(KDSweepError, match=r"field 'alpha' must be in \[0.0, 1.0\]"):
        SoftConfig.from_dict({"alpha": value})
    with pytest.raises(KDSweepError, match="field 'alpha'"):
        HardConfig.from_dict({"alpha": value})


@pytest.mark.parametrize("value", [0, -1.0, 0.0])
def test_temperature_must_be_positive(value):
    with pytest.raises(KDSweepError, match=r"field 'temperature' must be in \(0.0"):
        SoftConfig.from_dict({"temperature": value})


@pytest.mark.parametrize(
    ("key", "value", "pattern"),
    [
        ("lr", 0.0, r"field 'lr' must be in \(0.0, 1.0\]"),
        ("epochs", 0, r"field 'epochs' must be > 0"),
        ("batch_size", -4, r"field 'batch_size' must be > 0"),
        ("device", "tpu", r"field 'device' must be one of"),
        ("precision", "int8", r"field 'precision' must be one of"),
        ("student_init", "pretrained", r"field 'student_init' must be one of"),
        ("dropout", 1.0, r"field 'dropout' must be in \[0.0, 1.0\)"),
        ("max_len", 4, r"field 'max_len' must be in \[8, 512\]"),
        ("dataset", "", r"field 'dataset' is empty"),
    ],
)
def test_out_of_range_values(key, value, pattern):
    with pytest.raises(KDSweepError, match=pattern) as e:
        TextConfig.from_dict({key: value}, where="grid.yaml")
    assert str(e.value).startswith("grid.yaml: ")


def test_unknown_student_size():
    with pytest.raises(KDSweepError, match=r"field 'student': 'huge' is neither a shape.*L2-H128"):
        TextConfig.from_dict({"student": "huge"})
    with pytest.raises(KDSweepError, match=r"'L2-H100' is not a valid shape"):
        TextConfig.from_dict({"student": "L2-H100"})


def test_reserved_keys_are_ignored():
    assert {"task", "condition"} <= RESERVED_KEYS
    cfg = SoftConfig.from_dict({"task": "text", "condition": "soft", "alpha": 0.7})
    assert cfg.alpha == 0.7
    assert "task" not in cfg.to_dict() and "condition" not in cfg.to_dict()


def test_registry_config_class_and_errors():
    assert registry.config_class("text", "soft") is SoftConfig
    assert registry.config_class("text", "cascade") is CascadeConfig
    with pytest.raises(
        KDSweepError, match=r"field 'task': unknown task 'vision'; choose from .*'text'"
    ):
        registry.config_class("vision", "soft")
    with pytest.raises(KDSweepError, match=r"field 'condition': unknown condition 'sfot'"):
        registry.config_class("text", "sfot")
    cfg = registry.config_for({"task": "text", "condition": "hard", "alpha": 0.5})
    assert isinstance(cfg, HardConfig) and cfg.alpha == 0.5
    assert type(registry.config_for({})) is TextConfig  # defaults: text / independent
    with pytest.raises(KDSweepError, match="unknown condition 'nope'"):
        registry.run_trial({"condition": "nope"})


def test_config_derived_specs():
    cfg = SoftConfig.from_dict(
        {
            "dataset": "rotten_tomatoes",
            "split_seed": 3,
            "per_class": 7,
            "max_len": 48,
            "teacher_epochs": 4,
            "teacher_lr": 1e-4,
        }
    )
    spec = cfg.data_spec()
    assert (spec.dataset, spec.split_seed, spec.per_class) == ("rotten_tomatoes", 3, 7)
    recipe = cfg.teacher_recipe()
    assert (recipe.backbone, recipe.epochs, recipe.lr, recipe.max_len) == ("minilm", 4, 1e-4, 48)


# ---------------------------------------------------------------- sizes and layer maps
def test_old_shape_names_are_errors_that_name_the_shape():
    """`student=tinybert` once built a random-init shape silently: now it says what to write."""
    for name, (shape, _hub) in OLD_SHAPE_NAMES.items():
        with pytest.raises(KDSweepError, match=f"use {shape} for that shape"):
            parse_size(name)
        assert parse_size(shape) is not None


@pytest.mark.parametrize(
    ("name", "shape"),
    [
        ("L2-H128", (2, 128, 2)),
        ("L4-H312", (4, 312, 12)),
        ("L6-H384", (6, 384, 6)),
        ("L3-H384-A12", (3, 384, 12)),
        ("L1-H64-A1", (1, 64, 1)),
    ],
)
def test_parse_size_generic(name, shape):
    assert parse_size(name) == shape


@pytest.mark.parametrize(
    "name",
    ["L0-H128", "L49-H128", "L2-H100", "L2-H4", "L2-H128-A5", "2-128", "l2-h128", "L2H128", ""],
)
def test_parse_size_invalid(name):
    with pytest.raises(KDSweepError, match="field 'student'"):
        parse_size(name)


def test_layer_map_uniform():
    assert layer_map(3, 6) == [2, 4, 6]
    assert layer_map(2, 6) == [3, 6]
    assert layer_map(4, 6) == [2, 3, 5, 6]
    assert layer_map(6, 6) == [1, 2, 3, 4, 5, 6]
    assert layer_map(1, 12) == [12]
    for ls in range(1, 7):
        m = layer_map(ls, 6)
        assert len(m) == ls and m[-1] == 6 and m == sorted(m) and m[0] >= 1


def test_layer_map_explicit():
    assert layer_map(2, 6, "3,6") == [3, 6]
    assert layer_map(3, 6, "1, 1, 2") == [1, 1, 2]


@pytest.mark.parametrize("spec", ["3", "3,6,6", "0,6", "3,7", "a,b", "3;6"])
def test_layer_map_invalid(spec):
    with pytest.raises(KDSweepError, match="field 'layer_map'"):
        layer_map(2, 6, spec)


def test_count_parameters_embeddings_dominate_small_students():
    from transformers import AutoConfig

    tcfg = AutoConfig.from_pretrained(resolve_backbone("minilm"))
    assert tcfg.vocab_size == 30522
    student = build_student("L2-H128", tcfg, num_labels=6)
    counts = count_parameters(student)
    h, v, p = 128, tcfg.vocab_size, tcfg.max_position_embeddings
    emb = (v + p + tcfg.type_vocab_size) * h + 2 * h  # word + position + type + LayerNorm
    per_layer = 4 * (h * h + h) + 2 * (2 * h) + (h * 4 * h + 4 * h) + (4 * h * h + h)
    head = (h * h + h) + (h * 6 + 6)  # pooler + classifier
    assert counts["params_embeddings"] == emb
    assert counts["params_non_embedding"] == 2 * per_layer + head
    assert counts["params"] == emb + 2 * per_layer + head
    assert counts["params_embeddings"] > 0.9 * counts["params"]


@pytest.mark.unit
def test_teacher_checkpoint_goes_only_to_conditions_with_a_teacher():
    """`sweeps/self_distill.py teacher_checkpoint=<pt>` must not hand the checkpoint to the
    independent baseline; a space of teacher-less conditions alone refuses it by name."""
    from driver.space import parse_space
    from trainables.speech.config import ASRConfig, SelfDistillConfig

    assert "teacher_checkpoint" not in ASRConfig.field_names()
    assert "teacher_checkpoint" in SelfDistillConfig.field_names()
    raw = {"task": "asr", "condition": "independent"}
    with pytest.raises(KDSweepError, match="unknown parameter 'teacher_checkpoint'"):
        parse_space(raw, "t.yaml", overrides={"teacher_checkpoint": "/x/ckpt.pt"})


@pytest.mark.unit
def test_relative_paths_become_absolute_before_ray_changes_directory(tmp_path, monkeypatch):
    """Ray runs every trial in its own working directory: `student=runs/my-model` must reach
    the trial as an absolute path (fixed values, grid choices and cascade stages alike)."""
    from driver.space import _absolute, parse_space

    monkeypatch.chdir(tmp_path)
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "my.csv").write_text("text,label\na b,x\nc d,y\n")
    want = str(tmp_path / "data" / "my.csv")
    assert _absolute("data/my.csv") == want
    assert _absolute({"grid": ["data/my.csv", "fortunes"]}) == {"grid": [want, "fortunes"]}
    assert _absolute("fortunes") == "fortunes" and _absolute("2,3") == "2,3"
    space = parse_space({"task": "text", "condition": "soft"}, "t.yaml", {"dataset": "data/my.csv"})
    assert space.fixed["dataset"] == want


# ---------------------------------------------------------------- per-condition params
PER_CONDITION = """
task: text
params:
  temperature: {grid: [1, 2]}     # shared: applies to the conditions that have it
conditions:
  independent: {}
  soft: {}
  hard:
    alpha: {grid: [0.5, 0.8, 1.0]}
"""


def _trials(space) -> list[dict]:
    """The trial dicts Tune would run (one repeat), as the trainable receives them."""
    from ray.tune.search.variant_generator import generate_variants

    return [registry.trial_fields(cfg) for _, cfg in generate_variants(space.param_space())]


def test_per_condition_grid_runs_each_point_once():
    """hard's alpha grid does not re-run independent's or soft's trials; the shared
    temperature grid does not re-run hard's (it has no temperature)."""
    import yaml

    from driver.space import grid_points, parse_space

    space = parse_space(yaml.safe_load(PER_CONDITION), "t.yaml")
    assert space.conditions == ["independent", "soft", "hard"] and not space.uses_optuna
    trials = _trials(space)
    # independent 1 + soft 2 temperatures + hard 3 alphas
    assert grid_points(space) == len(trials) == 6
    seen = {tuple(sorted(t.items())) for t in trials}
    assert len(seen) == 6  # no duplicate trial
    assert {t["alpha"] for t in trials if t["condition"] == "hard"} == {0.5, 0.8, 1.0}
    assert all("temperature" not in t for t in trials if t["condition"] != "soft")
    assert {t["temperature"] for t in trials if t["condition"] == "soft"} == {1, 2}
    for t in trials:  # each one builds its condition's typed config
        registry.config_for(t)
    seeded = parse_space(yaml.safe_load(PER_CONDITION), "t.yaml", seeds=3)
    seeded_trials = _trials(seeded)
    assert grid_points(seeded) == len(seeded_trials) == 18
    assert {t["seed"] for t in seeded_trials} == {0, 1, 2}
    assert "condition" in space.varied and "alpha" in space.varied


def test_per_condition_params_under_optuna_are_scoped_to_their_condition():
    import yaml

    from driver.space import parse_space

    raw = yaml.safe_load(PER_CONDITION)
    raw["conditions"]["hard"] = {"alpha": {"uniform": [0.2, 0.9]}}
    raw["conditions"]["soft"] = {"alpha": 0.3}
    space = parse_space(raw, "t.yaml")
    assert space.uses_optuna
    ps = space.param_space()  # constants only: Optuna suggests the dimensions (define-by-run)
    assert ps == {"task": "text"}
    config = {"task": "text", "condition": "soft", "soft.alpha": 0.3, "hard.alpha": 0.7}
    assert registry.trial_fields(config) == {"task": "text", "condition": "soft", "alpha": 0.3}
    config["condition"] = "hard"
    assert registry.trial_fields(config)["alpha"] == 0.7
    config["condition"] = "independent"
    assert "alpha" not in registry.trial_fields(config)

    # Each suggestion holds only its condition's dimensions, through Ray's OptunaSearch.
    import pickle

    from ray.tune.search.optuna import OptunaSearch

    searcher = OptunaSearch(space=space.optuna_space(), metric="m", mode="max", seed=0)
    seen = {}
    for i in range(24):
        cfg = searcher.suggest(str(i))
        searcher.on_trial_complete(str(i), {"m": float(i % 5)})
        seen.setdefault(cfg["condition"], set()).add(frozenset(cfg))
    assert seen["hard"] == {frozenset({"condition", "hard.alpha"})}
    assert seen["soft"] == {frozenset({"condition", "temperature", "soft.alpha"})}
    assert seen["independent"] == {frozenset({"condition"})}
    restored = pickle.loads(pickle.dumps(space.optuna_space()))  # Tune saves it for resume
    assert restored == space.optuna_space()
    grid_only = parse_space(yaml.safe_load(PER_CONDITION), "t.yaml")
    assert grid_only.optuna_space() is None  # a grid: Tune enumerates the points itself


@pytest.mark.parametrize(
    "text, needle",
    [
        ("conditions: {soft: {beta: 1}}\n", "unknown parameter 'beta' under conditions.soft"),
        ("conditions: {hard: {alpha: {grid: [0.5, 2]}}}\n", "field 'alpha' must be in"),
        ("condition: soft\nconditions: {soft: {}}\n", "not both"),
        ("conditions: [soft, hard]\n", "'conditions' must map each condition"),
        ("conditions: {sfot: {}}\n", "unknown condition 'sfot'"),
    ],
)
def test_bad_per_condition_params_fail_before_any_trial(text, needle):
    import yaml

    from driver.space import parse_space

    with pytest.raises(KDSweepError, match=needle):
        parse_space(yaml.safe_load("task: text\n" + text), "t.yaml")


def test_command_line_wins_over_a_conditions_own_value():
    import yaml

    from driver.space import parse_space

    space = parse_space(yaml.safe_load(PER_CONDITION), "t.yaml", overrides={"alpha": 0.6})
    assert {t["alpha"] for t in _trials(space) if "alpha" in t} == {0.6}


# ---------------------------------------------------------------- fields documented once
def _all_config_classes() -> list[type]:
    from kdsweep.config import BaseConfig

    seen, todo = [], [BaseConfig]
    while todo:
        cls = todo.pop()
        if cls not in seen:
            seen.append(cls)
            todo.extend(cls.__subclasses__())
    return [c for c in seen if c.__module__.startswith(("kdsweep", "trainables"))]


def test_every_field_of_every_config_class_has_help():
    import dataclasses

    classes = _all_config_classes()
    assert len(classes) >= 12  # the text and speech configs, not an empty walk
    missing = [
        f"{cls.__name__}.{f.name}"
        for cls in classes
        for f in dataclasses.fields(cls)
        if not f.metadata.get("help", "").strip()
    ]
    assert not missing, f"fields without help metadata: {missing}"


def test_configuration_reference_is_current():
    from pathlib import Path

    from driver.docs import markdown

    path = Path(__file__).resolve().parents[1] / "docs" / "configuration.md"
    assert path.read_text() == markdown(), (
        "docs/configuration.md is stale: run `python -m driver.docs > docs/configuration.md`"
    )


def test_reference_lists_each_conditions_own_fields_with_type_default_range_help():
    from driver.docs import markdown, sections

    titles = [t for t, _ in sections("text")]
    assert titles[0].startswith("shared by every text condition (TextConfig)")
    soft = dict(sections("text"))[next(t for t in titles if t.startswith("soft "))]
    temp = next(r for r in soft if r["field"] == "temperature")
    assert (temp["type"], temp["default"], temp["range"]) == ("float", "2.0", "in (0.0, 100.0]")
    assert "temperature" in temp["help"]
    md = markdown()
    assert "| `alpha` | float | `0.5` | in [0.0, 1.0] |" in md
    assert "fortunes \\| rotten_tomatoes" in md  # a | inside help does not split the cell


def test_sweep_scripts_list_the_fields_with_help_fields(capsys):
    from driver.cli import build_parser

    with pytest.raises(SystemExit) as e:
        build_parser("temperature", "doc").parse_args(["--help-fields"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "shared by every text condition" in out and "soft (SoftConfig)" in out
    assert "temperature (float, default 2.0, in (0.0, 100.0])" in out
    assert "hard (HardConfig)" not in out  # only this sweep's conditions
    with pytest.raises(SystemExit):  # another space's conditions (their own params included)
        build_parser("strategy", "doc").parse_args(["--space", "decoupled", "--help-fields"])
    out = capsys.readouterr().out
    assert "dkd (DKDConfig)" in out and "beta (float, default 8.0" in out


def test_shipped_per_condition_space_counts_each_trial_once():
    from driver.space import grid_points, load_space

    space = load_space("decoupled")
    assert space.conditions == ["independent", "soft", "dkd"]
    assert grid_points(space) == 1 + 2 + 2 * 2  # independent, soft x T, dkd x T x beta
    assert grid_points(load_space("decoupled", seeds=3)) == 3 * 7
    assert len(_trials(space)) == 7
