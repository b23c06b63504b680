"""Whether a sweep folder is resumed: the same command continues an interrupted sweep.

    restore = check_resume(plan)     # True: Tuner.restore; bad cases: one KDSweepError line

A sweep resumes with the search space it started with (a changed one is an error), and only
with the code that can read its saved state: Tune pickles the scheduler, the searcher and the
callbacks by module path, so a sweep started before a module moved (the layout before
driver/ existed: commit 3e5179f) is refused with the commands that finish it.
"""

from __future__ import annotations

import importlib
import json
import pickletools
from pathlib import Path
from typing import Any

from driver.tuner import can_restore
from kdsweep.errors import KDSweepError

SPACE_FILE = "kdsweep_space.json"  # the space a sweep started with, for `--resume` checks
OUR_PACKAGES = ("sweeps", "driver", "trainables", "kdsweep")
OLD_LAYOUT = "3e5179f"  # the last commit before sweeps/ kept only entry scripts
STRING_OPS = {"STRING", "BINSTRING", "SHORT_BINSTRING", "UNICODE", "BINUNICODE"}
STRING_OPS |= {"SHORT_BINUNICODE", "BINUNICODE8"}


def check_resume(path: Path, space_dict: dict[str, Any], resume: bool) -> bool:
    """Whether the sweep at `path` is resumed (`--resume` demands one); refused (KDSweepError)
    when its search space changed or an older kdsweep saved it."""
    restorable = can_restore(path)
    if resume and not restorable:
        raise KDSweepError(f"--resume: nothing to resume at {path}")
    if not restorable:
        return False
    check_saved_by_this_version(path)
    space_file = path / SPACE_FILE
    if space_file.is_file():
        before = json.loads(space_file.read_text())
        now = json.loads(json.dumps(space_dict, default=str))
        if before != now:
            raise KDSweepError(
                f"--resume: the search space of {path} changed since the sweep started "
                f"({space_diff(before, now)}); restore the YAML/overrides, or use --fresh "
                "(a new sweep beside this one, whose results stay)"
            )
    return True


def space_diff(before: dict[str, Any], now: dict[str, Any]) -> str:
    """'key: old -> new' for what differs between two saved spaces (fixed values, dists, ...)."""

    def flat(d: dict[str, Any]) -> dict[str, Any]:
        out = {k: v for k, v in d.items() if k not in ("fixed", "dists")}
        out.update(d.get("fixed", {}))
        out.update({k: f"{kind} {vals}" for k, (kind, vals) in d.get("dists", {}).items()})
        return out

    a, b = flat(before), flat(now)
    keys = sorted(k for k in set(a) | set(b) if a.get(k, "(unset)") != b.get(k, "(unset)"))
    return "; ".join(f"{k}: {a.get(k, '(unset)')} -> {b.get(k, '(unset)')}" for k in keys)


def check_saved_by_this_version(path: Path) -> None:
    """Refuse a sweep whose saved Tune state names a kdsweep module or class this version does
    not have (read from the pickles' opcodes: nothing is unpickled)."""
    for pkl in sorted(path.glob("*.pkl")):
        for module, name in sorted(pickled_globals(pkl.read_bytes())):
            ours = module.split(".")[0] in OUR_PACKAGES and "<" not in name
            if ours and not _exists(module, name):
                old = module.split(".")[0] == "sweeps"
                version = f"`git checkout {OLD_LAYOUT}`" if old else "the version that started it"
                raise KDSweepError(
                    f"{path} was started by an older kdsweep ({pkl.name} needs {module}.{name}, "
                    f"which moved); finish it with {version} and the same command (then "
                    "`git checkout -`), or start a new sweep beside it with --fresh"
                )


def pickled_globals(data: bytes) -> set[tuple[str, str]]:
    """(module, qualified name) of every class or function a pickle refers to."""
    found: set[tuple[str, str]] = set()
    strings: list[str] = []
    memo: dict[int, Any] = {}
    last: Any = None
    for op, arg, _ in pickletools.genops(data):
        if op.name in STRING_OPS:
            last = str(arg)
            strings.append(last)
        elif op.name == "MEMOIZE":
            memo[len(memo)] = last
        elif op.name in ("PUT", "BINPUT", "LONG_BINPUT"):
            memo[int(arg)] = last
        elif op.name in ("GET", "BINGET", "LONG_BINGET"):
            last = memo.get(int(arg))
            if isinstance(last, str):
                strings.append(last)
        elif op.name in ("GLOBAL", "INST"):
            module, name = str(arg).split(" ", 1)
            found.add((module, name))
        elif op.name == "STACK_GLOBAL" and len(strings) >= 2:
            found.add((strings[-2], strings[-1]))
        else:
            last = None
    return found


def _exists(module: str, name: str) -> bool:
    try:
        obj: Any = importlib.import_module(module)
    except ImportError:
        return False
    for part in name.split("."):
        if not hasattr(obj, part):
            return False
        obj = getattr(obj, part)
    return True
