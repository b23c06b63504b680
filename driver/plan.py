"""One sweep, described once: the validated, immutable `SweepPlan` every driver step reads.

driver/cli.py builds it from the command line, the YAML and the overrides (`build_plan`); from
there down nothing reads argparse. A derived run (the confirm stage, a cascade's stage) is
`dataclasses.replace(plan, ...)`.

    plan = build_plan("temperature", args)           # driver/cli.py
    plan.n_trials                                    # what Tune runs, printed and packed
    plan.source_of("teacher_layers")                 # 'command line', '--smoke preset', ...

Provenance: every config value knows where it came from: the user (command line flags and
key=value overrides), the YAML, the `--smoke` preset, a teacher checkpoint (the fields its
tensors fix), or the config's default. A smoke preset never replaces what the user gave or what
a checkpoint fixes, and a bad value's error names the source it blames (`compose_space`).
"""

from __future__ import annotations

import copy
import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from driver.space import SweepSpace, parse_space
from kdsweep.errors import KDSweepError
from trainables.metrics import METRIC, MODE

PROJECT_DIR = Path(__file__).resolve().parents[1]
USER = "command line"
SMOKE_PRESET = "--smoke preset"
DEFAULT = "default"


def yaml_source(where: str) -> str:
    """The source label of a YAML value (the prefix every YAML error has always had)."""
    return f"search space {where}"


def checkpoint_source(path: Any) -> str:
    return f"checkpoint {path}"


@dataclass(frozen=True)
class Scheduler:
    """ASHA's settings (or FIFO when `asha` is off): epochs are the time unit."""

    asha: bool = True
    max_t: int = 1  # ASHA's max_t (YAML `asha: {max_t}`, else the most epochs a trial runs)
    grace_period: int = 1
    reduction_factor: float = 2.0
    min_epochs: int = 0


@dataclass(frozen=True)
class Confirm:
    """`--confirm K --confirm-seeds M`: rerun the top K configs + baseline on M fresh seeds."""

    k: int | None = None
    seeds: int = 3


@dataclass(frozen=True)
class SweepPlan:
    """Everything a sweep runs with, validated; derived runs use `dataclasses.replace`."""

    script: str  # sweeps/<script>.py
    name: str  # the sweep's folder under `storage` and its MLflow experiment kdsweep/<name>
    space: SweepSpace
    storage: Path
    tracking_uri: str
    seeds: int = 0  # `--seeds N`: each config runs with seeds 0..N-1 (a seed group)
    max_epochs: int = 1  # the most epochs any trial runs
    max_failures: int = 1  # Tune's retries per trial (one per OOM halving of the batch + 1)
    scheduler: Scheduler = field(default_factory=Scheduler)
    cpu: float = 1.0  # per trial
    gpu: float | str = 0.0  # per trial: a share, whole GPUs, or "auto" (measured, packing.py)
    confirm: Confirm = field(default_factory=Confirm)
    optuna_storage: str | None = None
    address: str | None = None  # an existing Ray cluster (None: a local Ray)
    searcher_seed: int = 0
    smoke: bool = False
    test: bool = True  # evaluate the best trial on test once (`--no-test`: False)
    quiet: bool = False
    verbose: bool = False
    resume: bool = False  # demand a sweep to resume
    fresh: bool = False
    sources: Mapping[str, str] = field(default_factory=dict)  # key -> where its value came from

    def __post_init__(self) -> None:
        if self.seeds < 0:
            raise KDSweepError(f"--seeds {self.seeds}: give 0 (one seed) or more")
        if self.cpu <= 0:
            raise KDSweepError(f"resources: cpu must be > 0 (got {self.cpu})")
        gpu = self.gpu
        if gpu != "auto" and (
            not isinstance(gpu, int | float) or gpu < 0 or gpu > 1 and not float(gpu).is_integer()
        ):
            raise KDSweepError(
                f"resources: gpu must be auto, a share <= 1 or whole GPUs (got {gpu})"
            )

    @property
    def path(self) -> Path:
        """The sweep's folder (Tune's experiment directory)."""
        return self.storage / self.name

    @property
    def metric(self) -> str:
        return METRIC[self.space.task]

    @property
    def mode(self) -> str:
        return MODE[self.space.task]

    @property
    def seed_groups(self) -> int:
        """Trials per config: the seeds of a seed group (1 without `--seeds`)."""
        return max(1, self.seeds)

    @property
    def tune_num_samples(self) -> int:
        """TuneConfig.num_samples: grid repeats (the grid holds the seeds), or Optuna
        suggestions x seeds (SeedGroupSearcher turns each suggestion into a seed group)."""
        if self.space.uses_optuna:
            return self.space.num_samples * self.seed_groups
        return self.space.num_samples

    @property
    def n_trials(self) -> int:
        """How many trials Tune runs: the one number printed, packed and handed to Tune."""
        if self.space.uses_optuna:
            return self.tune_num_samples
        return self.space.num_samples * self.space.grid_size()

    def source_of(self, key: str) -> str:
        return self.sources.get(key, DEFAULT)

    def describe(self) -> str:
        """What `--dry-run` prints: the sweep as it would run, nothing prepared or started."""
        s, sch = self.space, self.scheduler
        search = "Optuna TPE" if s.uses_optuna else "grid"
        seeds = f", {self.seed_groups} seeds per config" if self.seeds else ""
        asha = f"grace {sch.grace_period}, reduction {sch.reduction_factor:g}, max_t {sch.max_t}"
        stop = f"ASHA ({asha})" if sch.asha else "none (every trial runs to the end)"
        lines = [
            f"[kdsweep] plan of sweep {self.name} ({self.path}), nothing started:",
            f"  task {s.task}; conditions {', '.join(s.conditions)}; "
            f"metric {self.metric} ({self.mode}) on dev",
            f"  {self.n_trials} trial(s) ({search}{seeds}), up to {self.max_epochs} epoch(s) each; "
            f"early stopping: {stop}",
            f"  per trial: {self.cpu:g} CPU, GPU {self.gpu}",
        ]
        lines += [f"  {k}: {kind} {vals}" for k, (kind, vals) in sorted(s.dists.items())]
        if self.confirm.k:
            lines.append(
                f"  then the confirm stage: top {self.confirm.k} + the independent baseline on "
                f"{self.confirm.seeds} fresh seeds, tested once"
            )
        return "\n".join(lines)


def max_epochs(space: SweepSpace) -> int:
    """The most epochs any trial runs (ASHA's max_t): the space's, or the config default."""
    epochs = [space.fixed.get("epochs", 0), *space.dists.get("epochs", ("", [0]))[1]]
    return int(max(epochs)) or int(space.default("epochs"))


def max_failures(space: SweepSpace) -> int:
    """Tune's retries per trial: one for any failure, plus one per possible out-of-memory
    halving of the largest batch size (trainables/oom_guard.py: 32 -> 16 -> ... -> 1)."""
    sizes = [space.fixed.get("batch_size", 0), *space.dists.get("batch_size", ("", []))[1]]
    biggest = max([int(b) for b in sizes if isinstance(b, int | float)] or [0])
    if biggest < 1:
        biggest = int(space.default("batch_size"))
    return 1 + math.ceil(math.log2(max(1, biggest)))


def scheduler_settings(
    space: SweepSpace,
    epochs: int,
    asha: bool = True,
    grace_period: int | None = None,
    reduction_factor: float | None = None,
) -> Scheduler:
    """ASHA's settings: the command line's, else the YAML's `asha:`, else 1 and 2."""
    grace = grace_period or space.asha.get("grace_period", 1)
    rf = reduction_factor or space.asha.get("reduction_factor", 2)
    return Scheduler(
        asha=asha,
        max_t=int(space.asha.get("max_t", epochs)),
        grace_period=int(grace),
        reduction_factor=float(rf),
        min_epochs=int(space.asha.get("min_epochs", 0)),
    )


# ------------------------------------------------------------------ the space, with provenance
def checkpoint_fixed(space: SweepSpace) -> set[str]:
    """The fields a `teacher_checkpoint` of the space (fixed, or among a grid's values) fixes:
    its tensors' shape, for the space's conditions."""
    grid = space.dists.get("teacher_checkpoint", ("", []))[1]
    if not any([space.fixed.get("teacher_checkpoint"), *grid]):
        return set()
    fixed: set[str] = set()
    for cond in space.conditions:
        fixed.update(getattr(space.config_class(cond), "CHECKPOINT_FIXES", ()))
    return fixed


def compose_space(
    raw: Any,
    where: str,
    user: dict[str, Any],
    smoke: Mapping[str, Any] | None = None,
    slow: tuple[str, ...] = (),
    seeds: int = 0,
) -> tuple[SweepSpace, dict[str, str]]:
    """YAML `raw` + the `smoke` preset + the `user`'s values -> (validated space, sources).

    The user's values win over the preset and the YAML; the preset fills in what the user left
    and no checkpoint fixes, and with `slow` keys replaces the YAML's grid of them (smoke fixes
    what would make it slow). With a preset, the real sweep's space is validated too: a smoke
    run must not hide a bad YAML value its preset happens to replace (e.g. `lr: abc`)."""
    params = raw.get("params") if isinstance(raw, dict) else None
    yaml_keys = set(params) if isinstance(params, dict) else set()
    sources = {k: yaml_source(where) for k in yaml_keys} | {k: USER for k in user}
    space = parse_space(raw, where, user, seeds=seeds, sources=sources)
    if smoke is None:
        return space, _with_checkpoint(space, sources)
    pinned = set(user) | checkpoint_fixed(space)
    preset = {k: v for k, v in smoke.items() if k not in pinned}
    sources.update({k: SMOKE_PRESET for k in preset})
    space = parse_space(raw, where, {**preset, **user}, seeds=seeds, sources=sources)
    for k in slow:
        if k in space.dists and k in preset:
            del space.dists[k]
            space.fixed[k] = preset[k]
    return space, _with_checkpoint(space, sources)


def _with_checkpoint(space: SweepSpace, sources: dict[str, str]) -> dict[str, str]:
    """`sources` + the fields the space's teacher checkpoint fixes, blamed on that checkpoint."""
    fixed = checkpoint_fixed(space)
    ckpt = checkpoint_source(space.fixed.get("teacher_checkpoint", "of the grid"))
    return {**sources, **{k: ckpt for k in fixed if k not in sources}}


def derive(plan: SweepPlan, **changes: Any) -> SweepPlan:
    """`dataclasses.replace` with a copy of the space (a stage may edit its own)."""
    if "space" not in changes:
        changes["space"] = copy.deepcopy(plan.space)
    return dataclasses.replace(plan, **changes)
