"""One search dimension of the YAML (`{grid: [...]}`, `{loguniform: [lo, hi]}`, ...): its
checks, the values that stand for it in validation, and its Ray Tune object."""

from __future__ import annotations

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
