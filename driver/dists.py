"""One search dimension of the YAML (`{grid: [...]}`, `{loguniform: [lo, hi]}`, ...): its
checks, the values that stand for it in validation, and its Ray Tune object."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from kdsweep.errors import KDSweepError

DIST_KINDS = {"grid", "choice", "uniform", "loguniform", "randint"}


def parse_dist(key: str, spec: dict, where: str) -> tuple[str, list]:
    """(kind, args) of `key: {kind: args}`, or one error line naming the key and the source."""
    if len(spec) != 1 or next(iter(spec)) not in DIST_KINDS:
        raise KDSweepError(
            f"search space {where}: parameter {key!r} must be a value, a list, or one of "
            f"{{{', '.join(sorted(DIST_KINDS))}: ...}}; got {spec!r}"
        )
    kind, args = next(iter(spec.items()))
    if not isinstance(args, list) or not args:
        raise KDSweepError(
            f"search space {where}: parameter {key!r}: {kind} needs a non-empty list"
        )
    if kind in ("uniform", "loguniform", "randint"):
        if (
            len(args) != 2
            or not all(isinstance(a, int | float) for a in args)
            or args[0] >= args[1]
        ):
            raise KDSweepError(
                f"search space {where}: parameter {key!r}: {kind} needs [low, high] with low < high"
            )
        if kind == "loguniform" and args[0] <= 0:
            raise KDSweepError(f"search space {where}: parameter {key!r}: loguniform needs low > 0")
    return kind, list(args)


def representative_values(kind: str, args: list) -> list:
    """Values that stand for a dimension in validation: every listed value, or both bounds."""
    return list(args) if kind in ("grid", "choice") else [args[0], args[1]]


def tune_dim(kind: str, args: list, enumerate_grid: bool = True) -> Any:
    """The Tune object for one dimension. A grid is enumerated (`grid_search`) unless the
    searcher cannot enumerate (Optuna samples its values as a choice instead)."""
    from ray import tune

    if kind == "grid" and enumerate_grid:
        return tune.grid_search(args)
    if kind in ("grid", "choice"):
        return tune.choice(args)
    if kind == "randint":
        return tune.randint(args[0], args[1] + 1)  # YAML bounds are inclusive
    return tune.uniform(*args) if kind == "uniform" else tune.loguniform(*args)


def optuna_suggest(trial: Any, name: str, kind: str, args: list) -> Any:
    """One dimension suggested on an Optuna trial (define-by-run): bounds inclusive as in the
    YAML, a grid sampled as a choice (Optuna cannot enumerate it)."""
    if kind in ("grid", "choice"):
        return trial.suggest_categorical(name, list(args))
    if kind == "randint":
        return trial.suggest_int(name, args[0], args[1])
    return trial.suggest_float(name, args[0], args[1], log=kind == "loguniform")


@dataclass(frozen=True)
class ConditionalSpace:
    """Optuna's define-by-run space for a sweep whose conditions have params of their own.

    The condition is suggested first, then only the dimensions that condition has: shared ones
    whose field it takes and its own (`<condition>.<field>`). So TPE never models a field on
    trials that ignore it (a flat space would sample `dkd.beta` on every soft trial too and
    fit its density to noise). Returns the condition's own fixed values. Picklable: Tune saves
    the searcher, and with it this object, for resume."""

    conditions: tuple[str, ...]
    dims: dict[str, dict[str, tuple[str, list]]]  # condition -> suggested name -> (kind, args)
    fixed: dict[str, dict[str, Any]]  # condition -> suggested name -> value

    def __call__(self, trial: Any) -> dict[str, Any]:
        condition = trial.suggest_categorical("condition", list(self.conditions))
        for name, (kind, args) in self.dims.get(condition, {}).items():
            optuna_suggest(trial, name, kind, args)
        return dict(self.fixed.get(condition, {}))
