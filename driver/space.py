"""Search-space YAML: load, validate against the trainables' typed configs, convert for Tune.

The format is flat and readable (see search_spaces/*.yaml):

    task: text                      # text | asr
    condition: soft                 # one condition, or {grid: [independent, soft, ...]}
    num_samples: 1                  # grid: repeats of the grid; optuna: number of trials
    asha: {grace_period: 1, reduction_factor: 2}
    params:                         # config field -> value
      alpha: 0.9                    #   a fixed value
      temperature: {grid: [1, 2, 4, 8]}   # every value (exhaustive)
      student: [L2-H128, L4-H256]   #   a plain list = a choice sampled by the searcher
      lr: {loguniform: [1.0e-4, 3.0e-3]}  # also uniform, randint, choice

One condition can have parameters and a grid of its own, without re-running the others' trials
for each of its values: list the conditions under `conditions:` (instead of `condition:`), each
with its own params in the same form (`{}`: none of its own). `params` stay shared: each applies
to the conditions that have the field.

    conditions:
      soft: {}                      # soft's trials: the shared grid only
      dkd:                          # dkd's trials: the shared grid x its beta grid
        alpha: 1.0
        beta: {grid: [2, 8]}

Everything is checked before Ray starts: unknown keys, values of the wrong type or range, each
condition's own params against that condition's typed config.
"""

from __future__ import annotations

import copy
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from driver.dists import ConditionalSpace, parse_dist, representative_values, tune_dim
from kdsweep.errors import KDSweepError
from trainables.registry import CONFIGS, config_class

SPACES_DIR = Path(__file__).resolve().parents[1] / "search_spaces"
TOP_KEYS = {
    "task",
    "condition",
    "num_samples",
    "asha",
    "params",
    "resources",
    "description",
    "stages",
    "conditions",
}
ASHA_KEYS = {"grace_period", "reduction_factor", "max_t", "min_epochs"}
SEED = "seed"  # --seeds: a grid of its own, crossed with every grid point (seed groups)
POINT = "grid_point"  # per-condition grids: the index of a trial's point (not a config field)


@dataclass
class OwnParams:
    """One condition's own params (`conditions:` in the YAML), over the shared ones."""

    fixed: dict[str, Any] = field(default_factory=dict)
    dists: dict[str, tuple[str, list]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"fixed": self.fixed, "dists": {k: [kd, a] for k, (kd, a) in self.dists.items()}}


@dataclass
class SweepSpace:
    """A validated search space."""

    source: str
    task: str
    conditions: list[str]
    condition_is_grid: bool
    fixed: dict[str, Any] = field(default_factory=dict)
    dists: dict[str, tuple[str, list]] = field(default_factory=dict)  # name -> (kind, args)
    num_samples: int = 1
    asha: dict[str, Any] = field(default_factory=dict)
    resources: dict[str, float] = field(default_factory=dict)
    stages: list[str] = field(default_factory=list)  # cascade: the students, in order
    # `conditions:` in the YAML: each condition's own params ({} = none), over the shared ones
    own: dict[str, OwnParams] = field(default_factory=dict)

    @property
    def uses_optuna(self) -> bool:
        """Continuous or sampled dimensions go to Optuna (TPE); a pure grid is enumerated."""
        dists = [*self.dists.values(), *(d for o in self.own.values() for d in o.dists.values())]
        return any(kind != "grid" for kind, _ in dists)

    @property
    def restore_with_param_space(self) -> bool:
        """A grid of per-condition points resolves with tune.sample_from: Tune must get the
        param space back on restore (driver/tuner.py)."""
        return bool(self.own) and not self.uses_optuna

    @property
    def varied(self) -> list[str]:
        names = list(self.dists)
        for own in self.own.values():
            names += [k for k in [*own.dists, *own.fixed] if k not in names]
        return (["condition"] if len(self.conditions) > 1 else []) + names

    def grid_size(self) -> int:
        """Grid points of one repeat (`num_samples` repeats them): see `grid_points`."""
        if self.own:
            return len(_points(self)) * len(self.dists.get(SEED, ("grid", [0]))[1])
        n = len(self.conditions) if self.condition_is_grid else 1
        for kind, args in self.dists.values():
            if kind == "grid":
                n *= len(args)
        return n

    def optuna_space(self) -> ConditionalSpace | None:
        """Optuna's define-by-run space when conditions have params of their own (each trial
        suggests only its condition's dimensions); None: the flat param space suffices."""
        if not (self.own and self.uses_optuna):
            return None
        dims: dict[str, dict[str, tuple[str, list]]] = {}
        for cond in self.conditions:
            names, own = self.config_class(cond).field_names(), self.own.get(cond, OwnParams())
            shared = {k: d for k, d in self.dists.items() if k in names and k != SEED}
            dims[cond] = shared | {f"{cond}.{k}": d for k, d in own.dists.items()}
        fixed = {c: {f"{c}.{k}": v for k, v in o.fixed.items()} for c, o in self.own.items()}
        return ConditionalSpace(tuple(self.conditions), dims, fixed)

    def config_class(self, condition: str) -> type:
        """The typed config class of one of the space's conditions."""
        return config_class(self.task, condition)

    def default(self, key: str) -> Any:
        """A config field's default (of the first condition): the one place the driver asks
        the trainables' configs for defaults."""
        return getattr(self.config_class(self.conditions[0])(), key)

    def to_dict(self) -> dict[str, Any]:
        """Canonical form, stored with a sweep so `--resume` can detect a changed space."""
        out = {
            "task": self.task,
            "conditions": self.conditions,
            "fixed": self.fixed,
            "dists": {k: [kind, args] for k, (kind, args) in self.dists.items()},
            "num_samples": self.num_samples,
        }
        if self.own:
            out["own"] = {c: o.to_dict() for c, o in self.own.items()}
        return out

    def param_space(self) -> dict[str, Any]:
        """The dict handed to tune.Tuner(param_space=...)."""
        from ray import tune

        if self.own:
            return _own_param_space(self)
        space: dict[str, Any] = {"task": self.task, **self.fixed}
        if len(self.conditions) == 1:
            space["condition"] = self.conditions[0]
        elif self.condition_is_grid and not self.uses_optuna:
            space["condition"] = tune.grid_search(self.conditions)
        else:
            space["condition"] = tune.choice(self.conditions)
        for name, (kind, args) in self.dists.items():
            space[name] = tune_dim(kind, args, enumerate_grid=not self.uses_optuna)
        return space


def grid_points(space: SweepSpace) -> int:
    """The exact number of trials one repeat of a grid runs (seeds included); Tune runs
    `num_samples` repeats of it. (With Optuna, `num_samples` alone counts the trials.)"""
    return space.grid_size()


def _points(space: SweepSpace) -> list[dict[str, Any]]:
    """Per-condition grids: every (condition, grid values) point once, seeds aside. A shared
    grid applies to the conditions that have the field; a condition's own grid to it alone."""
    from itertools import product

    points = []
    for cond in space.conditions:
        cls, own = config_class(space.task, cond), space.own.get(cond, OwnParams())
        names = cls.field_names()
        dims = {k: args for k, (kind, args) in space.dists.items() if kind == "grid"}
        dims = {k: v for k, v in dims.items() if k in names and k != SEED}
        dims |= {k: args for k, (_, args) in own.dists.items()}
        for values in product(*dims.values()):
            points.append({"condition": cond, **own.fixed, **dict(zip(dims, values, strict=True))})
    return points


def _own_param_space(space: SweepSpace) -> dict[str, Any]:
    """Tune's param space with per-condition params. A grid: one grid over the points' index,
    each key resolved from its point (tune.sample_from; a key a condition has but its point
    does not set takes the shared value or the field's default, a key it lacks is None and
    dropped by run_trial). Optuna: the constants only; each trial's dimensions come from
    `optuna_space()` (its condition's own under `<condition>.<field>`, which run_trial maps
    back to the field)."""
    from ray import tune

    out: dict[str, Any] = {"task": space.task}
    if space.uses_optuna:  # constants only: the dimensions are `optuna_space()`'s
        return out | {k: v for k, v in space.fixed.items()}
    points = _points(space)
    keys = sorted({k for p in points for k in p} - {"condition"})
    out |= {k: v for k, v in space.fixed.items() if k not in keys}
    for p in points:
        cls = config_class(space.task, p["condition"])
        for k in keys:
            if k not in p and k in cls.field_names():
                p[k] = space.fixed.get(k, cls.__dataclass_fields__[k].default)
    out[POINT] = tune.grid_search(list(range(len(points))))
    if SEED in space.dists:
        out[SEED] = tune.grid_search(list(space.dists[SEED][1]))
    for k in ["condition", *keys]:  # resolved after the grid: the value of this trial's point
        out[k] = tune.sample_from(lambda config, k=k: points[config[POINT]].get(k))
    return out


def _condition_spec(raw: dict, overrides: dict[str, Any], where: str) -> Any:
    """The YAML's (or the command line's) `condition`; with `conditions:`, a grid of its keys."""
    own_raw = raw.get("conditions")
    if own_raw is not None and ("condition" in raw or "condition" in overrides):
        raise KDSweepError(
            f"search space {where}: give 'condition' or 'conditions' (per-condition params), "
            "not both"
        )
    cond_raw = overrides.pop("condition", raw.get("condition", "independent"))
    return cond_raw if own_raw is None else {"grid": _own_names(own_raw, where)}


def _own_params(raw: dict, overrides: dict[str, Any], where: str) -> dict[str, OwnParams]:
    """Each condition's own params (`conditions:`); a command-line override wins over them."""
    out = {}
    for cond, own in raw.items():
        if not isinstance(own, dict | None):
            raise KDSweepError(
                f"search space {where}: conditions.{cond} must be a mapping of params"
            )
        fixed, dists = _split({k: _absolute(v) for k, v in (own or {}).items()}, where)
        out[str(cond)] = OwnParams(
            {k: v for k, v in fixed.items() if k not in overrides},
            {k: v for k, v in dists.items() if k not in overrides},
        )
    return out


def _own_names(raw: Any, where: str) -> list[str]:
    if not isinstance(raw, dict) or not raw:
        raise KDSweepError(
            f"search space {where}: 'conditions' must map each condition to its own params "
            "({} for none)"
        )
    return [str(c) for c in raw]


def _yaml_reason(e: yaml.YAMLError) -> str:
    """One line: where (1-based line/column) and what, instead of PyYAML's caret drawing."""
    mark = getattr(e, "problem_mark", None)
    what = " ".join(str(getattr(e, "problem", None) or e).split())
    context = getattr(e, "context", None)
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
    return f"{where}{what}" + (f" ({' '.join(context.split())})" if context else "")


def load_space(
    name_or_path: str, overrides: dict[str, Any] | None = None, seeds: int = 0
) -> SweepSpace:
    """Read `search_spaces/<name>.yaml` (or a path), apply CLI overrides, validate."""
    raw, where = read_space(name_or_path)
    return parse_space(raw, where, overrides or {}, seeds)


def read_space(name_or_path: str) -> tuple[Any, str]:
    """The YAML document of `search_spaces/<name>.yaml` (or a path), and that path."""
    path = Path(name_or_path)
    if not path.suffix:
        path = SPACES_DIR / f"{name_or_path}.yaml"
    if not path.is_file():
        raise KDSweepError(f"search space {path}: file not found")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise KDSweepError(f"search space {path}: invalid YAML: {_yaml_reason(e)}") from None
    return raw, str(path)


def parse_space(
    raw: Any,
    where: str,
    overrides: dict[str, Any] | None = None,
    seeds: int = 0,
    sources: dict[str, str] | None = None,
) -> SweepSpace:
    """Validate a loaded YAML document (see the module docstring for the format); `sources`
    (key -> where its value came from, driver/plan.py) names the source a bad value blames."""
    if not isinstance(raw, dict):
        raise KDSweepError(f"search space {where}: expected a mapping at the top level")
    unknown = set(raw) - TOP_KEYS
    if unknown:
        raise KDSweepError(
            f"search space {where}: unknown top-level key(s) {sorted(unknown)}; "
            f"allowed: {sorted(TOP_KEYS)}"
        )
    task = raw.get("task", "text")
    if task not in CONFIGS:
        raise KDSweepError(f"search space {where}: task {task!r} is not one of {sorted(CONFIGS)}")
    overrides = dict(overrides or {})
    task = overrides.pop("task", task)
    own_raw = raw.get("conditions")
    cond_raw = _condition_spec(raw, overrides, where)
    conditions, cond_grid = _conditions(cond_raw, where)
    for c in conditions:
        try:
            config_class(task, c)
        except KDSweepError as e:
            raise KDSweepError(f"search space {where}: {e}") from None

    params = copy.deepcopy(raw.get("params") or {})
    if not isinstance(params, dict):
        raise KDSweepError(f"search space {where}: 'params' must be a mapping")
    params.update(overrides)
    params = {k: _absolute(v) for k, v in params.items()}
    if seeds:
        params["seed"] = {"grid": list(range(seeds))}

    space = SweepSpace(source=where, task=task, conditions=conditions, condition_is_grid=cond_grid)
    space.fixed, space.dists = _split(params, where)
    space.own = _own_params(own_raw or {}, overrides, where)
    _settings(space, raw, where)
    validate(space, sources)
    return space


def _settings(space: SweepSpace, raw: dict, where: str) -> None:
    """The YAML's num_samples, asha, resources and (cascade) stages, checked, into `space`."""
    task, conditions = space.task, space.conditions
    space.num_samples = _int(raw.get("num_samples", 1), "num_samples", where, minimum=1)
    asha = raw.get("asha") or {}
    if not isinstance(asha, dict) or set(asha) - ASHA_KEYS:
        raise KDSweepError(f"search space {where}: 'asha' keys must be among {sorted(ASHA_KEYS)}")
    space.asha = dict(asha)
    res = raw.get("resources") or {}
    if not isinstance(res, dict) or set(res) - {"cpu", "gpu"}:
        raise KDSweepError(f"search space {where}: 'resources' takes cpu and gpu only")
    space.resources = {k: float(v) for k, v in res.items()}
    stages = raw.get("stages") or []
    if not isinstance(stages, list) or not all(isinstance(x, str) for x in stages):
        raise KDSweepError(f"search space {where}: 'stages' must be a list of student sizes")
    space.stages = [_absolute(x) for x in stages]
    for student in stages:
        config_class(task, conditions[0]).from_dict(
            {"student": student}, where=f"search space {where}, stages"
        )


def _absolute(value: Any) -> Any:
    """A string naming an existing relative path (a model dir, data file, checkpoint, LM) ->
    its absolute path, in lists and grid/choice values too: Ray runs each trial in a working
    directory of its own, where `runs/my-model` would name nothing."""
    if isinstance(value, list):
        return [_absolute(v) for v in value]
    if isinstance(value, dict):
        return {k: _absolute(v) if k in ("grid", "choice") else v for k, v in value.items()}
    if isinstance(value, str) and value and not os.path.isabs(value) and "\n" not in value:
        path = Path(value)
        if not value.startswith("~") and path.exists():
            return str(path.resolve())
    return value


def _split(params: dict[str, Any], where: str) -> tuple[dict[str, Any], dict[str, tuple]]:
    """(fixed values, distributions) of a params mapping."""
    fixed, dists = {}, {}
    for key, value in params.items():
        if isinstance(value, dict):
            dists[key] = parse_dist(key, value, where)
        elif isinstance(value, list):
            dists[key] = parse_dist(key, {"choice": value}, where)
        else:
            fixed[key] = value
    return fixed, dists


def _conditions(raw: Any, where: str) -> tuple[list[str], bool]:
    if isinstance(raw, str):
        return [raw], False
    if isinstance(raw, list) and raw:
        return [str(c) for c in raw], False
    if isinstance(raw, dict) and set(raw) <= {"grid", "choice"} and len(raw) == 1:
        values = next(iter(raw.values()))
        if isinstance(values, list) and values:
            return [str(c) for c in values], "grid" in raw
    raise KDSweepError(
        f"search space {where}: 'condition' must be a name, a list or {{grid: [..]}}"
    )


def _int(value: Any, key: str, where: str, minimum: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise KDSweepError(f"search space {where}: {key!r} must be an integer >= {minimum}")
    return value


def validate(space: SweepSpace, sources: dict[str, str] | None = None) -> None:
    """Every key must be a field of some condition's config, and every value must pass that
    config's checks (each dimension's values tried one at a time on top of the fixed ones).
    A bad value's error names its source (`sources`; default: the YAML)."""
    classes = {c: config_class(space.task, c) for c in space.conditions}
    all_fields = set().union(*(cls.field_names() for cls in classes.values()))
    for key in [*space.fixed, *space.dists]:
        if key not in all_fields:
            import difflib

            close = difflib.get_close_matches(key, sorted(all_fields), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise KDSweepError(
                f"search space {space.source}: unknown parameter {key!r} for condition(s) "
                f"{space.conditions}{hint}"
            )
    for cond, cls in classes.items():
        names = cls.field_names()
        own = space.own.get(cond, OwnParams())
        where = f"search space {space.source} (condition {cond})"
        for key in [*own.fixed, *own.dists]:
            if key not in names:
                raise KDSweepError(
                    f"{where}: unknown parameter {key!r} under conditions.{cond}; "
                    f"{cls.__name__} has no such field"
                )
        fixed = {k: v for k, v in space.fixed.items() if k in names} | own.fixed
        try:
            cls.from_dict(fixed, where=where)
            for key, (kind, args) in (space.dists | own.dists).items():
                if key not in names:
                    continue
                for value in representative_values(kind, args):
                    where = f"search space {space.source} (condition {cond}), {key}={value!r}"
                    cls.from_dict({**fixed, key: value}, where=where)
        except KDSweepError as e:
            raise _blamed(e, where, cond, sources or {}) from None


def _blamed(e: KDSweepError, where: str, cond: str, sources: dict[str, str]) -> KDSweepError:
    """The error with its `where` naming the source of the field it is about (the command
    line, the --smoke preset, a checkpoint), not the YAML, where the value came from there."""
    text = str(e)
    found = re.search(r"(?:field|key|parameter) '(\w+)'", text)
    source = sources.get(found.group(1), "") if found else ""
    if not text.startswith(f"{where}: ") or not source or source.startswith("search space"):
        return e
    return KDSweepError(f"{source} (condition {cond}): {text[len(where) + 2 :]}")


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """CLI `key=value` pairs; values parsed as YAML scalars/lists (`T=4`, `student=[a,b]`)."""
    out = {}
    for item in items:
        if "=" not in item:
            raise KDSweepError(f"override {item!r}: expected key=value")
        key, value = item.split("=", 1)
        try:
            out[key.strip()] = yaml.safe_load(value)
        except yaml.YAMLError:
            out[key.strip()] = value
    return out
