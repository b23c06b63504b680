"""The one seam between trainables and Ray Tune: report, checkpoint, trial resources.

Ray's trainable API has churned (`tune.report` / `tune.get_checkpoint` / `tune.Checkpoint` in
Ray 2.60; `session.report`, `air`, `ray.train.report` inside Tune are gone or hard errors).
Trainables call only the functions below. Outside a Tune trial (tests, benchmarks, a plain
Python loop) a `LocalSession` stands in: it records reports and keeps checkpoints on disk.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

_LOCAL: LocalSession | None = None
_REPORTED: list[Any] = [0, None]  # reports made by this process, the last one's epoch


@dataclass
class LocalSession:
    """Stand-in for a Tune session: reports land in `results`, checkpoints in `checkpoints`."""

    root: Path
    restore_from: Path | None = None
    cpus: float = 1.0
    # Where OOM-recovery state is kept (stable across the attempts of one trial); None: not kept.
    trial_dir: Path | None = None
    # The GPU share a Tune trial would have been given; None: not a trial (nothing changes).
    gpus: float | None = None
    results: list[dict[str, Any]] = field(default_factory=list)
    checkpoints: list[Path] = field(default_factory=list)

    @property
    def last_checkpoint(self) -> Path | None:
        return self.checkpoints[-1] if self.checkpoints else None


@contextmanager
def local_session(
    root: Path,
    restore_from: Path | None = None,
    cpus: float = 1.0,
    trial_dir: Path | None = None,
    gpus: float | None = None,
) -> Iterator[LocalSession]:
    """Run trainables outside Ray: `with local_session(tmp) as s: soft(config)`.

    `trial_dir` stands for the trial's own folder (OOM-recovery state); share it between two
    sessions to simulate Tune's retry of one trial."""
    global _LOCAL
    prev, _LOCAL = _LOCAL, LocalSession(Path(root), restore_from, cpus, trial_dir, gpus)
    try:
        yield _LOCAL
    finally:
        _LOCAL = prev


def _in_tune() -> bool:
    """Whether this runs inside a Tune trial (public API: outside one, the context's trial id
    is None, with a warning we silence)."""
    import warnings

    from ray import tune

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return tune.get_context().get_trial_id() is not None


def cpu_share() -> float:
    """CPUs granted to this trial (1 outside Tune unless the local session says otherwise)."""
    if _LOCAL is not None:
        return _LOCAL.cpus
    if not _in_tune():
        return 1.0
    from ray import tune

    res = tune.get_context().get_trial_resources().required_resources
    return float(res.get("CPU", 1.0))


def gpu_share() -> float | None:
    """GPUs granted to this trial (0 for a CPU trial); None outside Tune (not a trial)."""
    if _LOCAL is not None:
        return _LOCAL.gpus
    if not _in_tune():
        return None
    from ray import tune

    res = tune.get_context().get_trial_resources().required_resources
    return float(res.get("GPU", 0.0))


def trial_id() -> str:
    if _LOCAL is not None or not _in_tune():
        return "local"
    from ray import tune

    return tune.get_context().get_trial_id()


def trial_dir() -> Path | None:
    """The trial's own folder, the same for every attempt (Tune's retries, a driver resume);
    None outside Tune (no recovery state is kept) unless the local session names one.

    Inside Tune it is the trial's folder in the sweep's storage (`<storage>/<sweep>/<trial_id>`)
    when that storage is a local path: `get_context().get_trial_dir()` is a staging folder under
    the Ray session's /tmp that differs between a fresh and a reused actor and between Ray
    sessions. For remote storage it is that staging folder (kept for retries on the same node).
    """
    if _LOCAL is not None:
        return _LOCAL.trial_dir
    if not _in_tune():
        return None
    import pyarrow.fs
    from ray import tune

    storage = tune.get_context().get_storage()
    if isinstance(storage.storage_filesystem, pyarrow.fs.LocalFileSystem):
        return Path(storage.trial_fs_path)
    return Path(tune.get_context().get_trial_dir())


def reported() -> tuple[int, int | None]:
    """(reports made by this process so far, the epoch of the last one): where a trial was."""
    return _REPORTED[0], _REPORTED[1]


@contextmanager
def restored_checkpoints() -> Iterator[list[Path]]:
    """Checkpoint directories to resume from, most trusted first; empty for a fresh start.

    First the one Tune hands back; then, when it lives on the local disk, the trial's other
    `checkpoint_*` dirs, newest first (see `with_siblings`). The caller loads the first that
    loads (`checkpointing.resume_state`).
    """
    from trainables.checkpointing import with_siblings  # torch: not at this seam's import

    if _LOCAL is not None:
        yield with_siblings(Path(_LOCAL.restore_from)) if _LOCAL.restore_from else []
        return
    if not _in_tune():
        yield []
        return
    import pyarrow.fs
    from ray import tune

    ckpt = tune.get_checkpoint()
    if ckpt is None:
        yield []
    elif isinstance(ckpt.filesystem, pyarrow.fs.LocalFileSystem):
        yield with_siblings(Path(ckpt.path))
    else:  # remote storage: Tune downloads the one checkpoint it recorded
        with ckpt.as_directory() as d:
            yield [Path(d)]


def report(metrics: dict[str, Any], checkpoint_dir: Path | None = None) -> None:
    """Report one epoch's metrics, with the checkpoint written for that epoch.

    A directory from `new_checkpoint_dir()` is consumed: the local session moves it, and after
    `tune.report` (which copies it to the trial's storage before returning) it is removed, so
    every epoch's checkpoint no longer stays behind in /tmp.
    """
    _REPORTED[:] = [_REPORTED[0] + 1, metrics.get("epoch")]
    try:
        _report(metrics, checkpoint_dir)
    finally:
        if checkpoint_dir is not None and _is_scratch(checkpoint_dir):
            shutil.rmtree(checkpoint_dir, ignore_errors=True)


def _is_scratch(path: Path) -> bool:
    path = Path(path)
    return path.name.startswith(_SCRATCH) and path.parent == Path(tempfile.gettempdir())


def _report(metrics: dict[str, Any], checkpoint_dir: Path | None = None) -> None:
    if _LOCAL is not None:
        _LOCAL.results.append(dict(metrics))
        if checkpoint_dir is not None:
            dest = _LOCAL.root / f"checkpoint_{len(_LOCAL.results):06d}"
            keep = shutil.move if _is_scratch(checkpoint_dir) else shutil.copytree
            keep(str(checkpoint_dir), str(dest))
            _LOCAL.checkpoints.append(dest)
        return
    if not _in_tune():
        return
    import ray
    from ray import tune

    # Which Ray node ran this epoch: on a cluster, node_ip/hostname can repeat (several nodes
    # per host, containers); the node id cannot. A string, so it stays out of MLflow metrics.
    metrics = {**metrics, "node_id": ray.get_runtime_context().get_node_id()}
    ckpt = tune.Checkpoint.from_directory(str(checkpoint_dir)) if checkpoint_dir else None
    tune.report(metrics, checkpoint=ckpt)


def new_checkpoint_dir() -> Path:
    """A fresh temporary directory to write a checkpoint into before reporting it.

    Its name carries this process's PID: scratch dirs of workers killed between writing and
    reporting (a SIGKILLed sweep, an OOM kill) are removed here by the next trial, so a weekend
    of crashes and resumes does not fill /tmp with orphaned checkpoints.
    """
    _remove_orphaned_scratch()
    return Path(tempfile.mkdtemp(prefix=f"{_SCRATCH}{os.getpid()}-"))


def orphaned_scratch() -> list[Path]:
    """Scratch checkpoint dirs (`kdsweep-ckpt-<pid>-*`) whose writing process is gone."""
    import psutil

    out = []
    for path in Path(tempfile.gettempdir()).glob(f"{_SCRATCH}*-*"):
        pid = path.name[len(_SCRATCH) :].split("-", 1)[0]
        if pid.isdigit() and not psutil.pid_exists(int(pid)):
            out.append(path)
    return out


def _remove_orphaned_scratch() -> None:
    for path in orphaned_scratch():
        shutil.rmtree(path, ignore_errors=True)


_SCRATCH = "kdsweep-ckpt-"
