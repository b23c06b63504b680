"""Seeds of one config as one unit: the group key, and a searcher that suggests seed groups.

Trials whose configs differ only in `seed` (and in any key of `ignore`) form one group.
`SeedGroupSearcher` wraps a searcher (OptunaSearch): each suggestion of the wrapped searcher
becomes N trials, one per seed, with the same other parameters, and the wrapped searcher is told
the group's result once all N have completed: the mean over seeds of each seed's best-so-far
metric (the value `GroupASHA` judges a group on), so Optuna learns from the group, never from
one noisy seed. Its state is plain data and comes back with `Tuner.restore` (Tune saves a
wrapper's `get_state()` beside the wrapped searcher's own checkpoint).
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterable, Mapping
from typing import Any

from ray.tune.search import Searcher

from driver.rungs import better, finite

SEED_KEY = "seed"


def group_key(
    config: Mapping[str, Any], seed_key: str = SEED_KEY, ignore: Iterable[str] = ()
) -> str:
    """A stable string naming the config's seed group: the config minus `seed_key` and `ignore`."""
    drop = {seed_key, *ignore}
    rest = {k: v for k, v in config.items() if k not in drop}
    return json.dumps(rest, sort_keys=True, default=str)


class SeedGroupSearcher(Searcher):
    """Wraps `searcher`: each of its suggestions is emitted once per seed in `seeds`.

    Set `num_samples` of the TuneConfig to (number of configs) x len(seeds). The wrapped
    searcher sees only the group's first trial id; on completion of the group's last seed it
    receives `{metric: mean over seeds of their best-so-far metric}` (seeds without a value are
    left out; a group with none is reported as errored). Intermediate results are not forwarded
    (pruning is the scheduler's job, on the group).
    """

    def __init__(self, searcher: Searcher, seeds: int | Iterable[int], seed_key: str = SEED_KEY):
        self.searcher = searcher
        self.seeds = list(range(seeds)) if isinstance(seeds, int) else [int(s) for s in seeds]
        if not self.seeds:
            raise ValueError("SeedGroupSearcher needs at least one seed")
        self.seed_key = seed_key
        self._groups: list[dict[str, Any]] = []  # primary, config, trials, best, done, error
        self._group_of: dict[str, int] = {}
        super().__init__(metric=searcher.metric, mode=searcher.mode)

    # ---- Tune's Searcher API
    def set_search_properties(
        self, metric: str | None, mode: str | None, config: dict, **spec: Any
    ) -> bool:
        """Pass the properties on, without the seed key (it is ours to set, not Optuna's)."""
        config = {k: v for k, v in (config or {}).items() if k != self.seed_key}
        ok = self.searcher.set_search_properties(metric, mode, config, **spec)  # Searcher API
        self._metric = metric or self.searcher.metric
        self._mode = mode or self.searcher.mode
        return ok

    def set_max_concurrency(self, max_concurrent: int) -> bool:
        return False  # let a ConcurrencyLimiter count our trials

    def suggest(self, trial_id: str) -> dict | str | None:
        group = self._groups[-1] if self._groups else None
        if group is None or len(group["trials"]) == len(self.seeds):
            config = self.searcher.suggest(trial_id)
            if config is None or config == Searcher.FINISHED:
                return config
            group = {
                "primary": trial_id,
                "config": copy.deepcopy(config),
                "trials": [],
                "best": {},
                "done": [],
                "error": [],
            }
            self._groups.append(group)
        seed = self.seeds[len(group["trials"])]
        group["trials"].append(trial_id)
        self._group_of[trial_id] = len(self._groups) - 1
        return {**copy.deepcopy(group["config"]), self.seed_key: seed}

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        self._track(trial_id, result)

    def on_trial_complete(
        self, trial_id: str, result: dict | None = None, error: bool = False
    ) -> None:
        if trial_id not in self._group_of:
            return
        group = self._groups[self._group_of[trial_id]]
        if trial_id in group["done"]:
            return
        self._track(trial_id, result)
        group["done"].append(trial_id)
        if error:
            group["error"].append(trial_id)
        if len(group["done"]) < len(self.seeds):
            return
        value = self.group_value(group)
        self.searcher.on_trial_complete(
            group["primary"],
            result=None if value is None else {self._metric: value},
            error=value is None,
        )

    def get_state(self) -> dict:
        state = self.__dict__.copy()
        del state["searcher"]
        return copy.deepcopy(state)

    def set_state(self, state: dict) -> None:
        self.__dict__.update(state)

    def save(self, checkpoint_path: str) -> None:
        self.searcher.save(checkpoint_path)

    def restore(self, checkpoint_path: str) -> None:
        self.searcher.restore(checkpoint_path)

    # ---- ours
    def group_value(self, group: dict[str, Any]) -> float | None:
        """Mean over the group's seeds of their best-so-far metric (None: no seed has one)."""
        values = [v for v in group["best"].values() if v is not None]
        return sum(values) / len(values) if values else None

    def groups(self) -> list[dict[str, Any]]:
        """Every group so far: its primary trial id, config, trial ids and value (when done)."""
        return [
            {
                "primary": g["primary"],
                "config": g["config"],
                "trials": list(g["trials"]),
                "value": self.group_value(g) if len(g["done"]) == len(self.seeds) else None,
            }
            for g in self._groups
        ]

    def _track(self, trial_id: str, result: dict | None) -> None:
        if trial_id not in self._group_of or not result:
            return
        v = finite(result.get(self._metric))
        best = self._groups[self._group_of[trial_id]]["best"]
        if v is not None and better(self._mode, v, best.get(trial_id)):
            best[trial_id] = v
