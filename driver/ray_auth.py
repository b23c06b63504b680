"""Ray token authentication for every sweep: on by default, checked before Ray starts.

Ray 2.60's gcs_server, raylet and every worker listen on all interfaces whatever
`_node_ip_address` says, so the token is what keeps other hosts from running code on the cluster.

* Local cluster (no `--address`): the token is Ray's default file `~/.ray/auth_token`, created
  here owner-only (0600) when missing, or the file `RAY_AUTH_TOKEN_PATH` names, or `RAY_AUTH_TOKEN`.
* Existing cluster (`--address` / `RAY_ADDRESS`): the cluster's token, shared with every node
  through `RAY_AUTH_TOKEN_PATH` (a file copied to each node or a compose secret) or
  `RAY_AUTH_TOKEN`; never generated here, never in a committed file.

A token file that is missing or empty is a `KDSweepError` naming it; one that the group or others
can read gets one warning line. A user who turns auth off (RAY_AUTH_MODE other than token) is
respected, with one warning line.
Usage: `python -m driver.ray_auth [PATH]` creates (or checks) a token file, 0600.
"""

from __future__ import annotations

import os
import secrets
import stat
import sys
from pathlib import Path

from kdsweep.errors import KDSweepError

MODE_ENV, TOKEN_ENV, PATH_ENV = "RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH"
DISABLED_WARNING = (
    "[kdsweep] warning: RAY_AUTH_MODE={mode}: this Ray cluster accepts anyone who can reach "
    "its ports (all interfaces); unset it to keep token authentication on"
)


def default_token_path() -> Path:
    """Ray's own token file, used when neither RAY_AUTH_TOKEN nor RAY_AUTH_TOKEN_PATH is set."""
    return Path.home() / ".ray" / "auth_token"


def check_token_file(path: Path, log=print) -> Path:
    """A token file that exists and is not empty; one warning line if others can read it."""
    try:
        info = path.stat()
        text = path.read_text().strip() if stat.S_ISREG(info.st_mode) else ""
    except FileNotFoundError:
        raise KDSweepError(f"Ray token file {path}: does not exist") from None
    except OSError as e:
        raise KDSweepError(f"Ray token file {path}: cannot be read ({e.strerror})") from None
    if not text:
        raise KDSweepError(f"Ray token file {path}: missing a token (empty or not a file)")
    if info.st_mode & 0o077:
        log(
            f"[kdsweep] warning: Ray token file {path} is readable by group/others "
            f"(mode {stat.S_IMODE(info.st_mode):o}); chmod 600 {path}"
        )
    return path


def ensure_token(path: Path | None = None, log=print) -> Path:
    """Create a random token file owner-only (0600) if it does not exist, else check it."""
    path = Path(path) if path else default_token_path()
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:  # another sweep created it just now
            return check_token_file(path, log)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(32))  # what Ray's own generator writes: 256 bits
        log(f"[kdsweep] created Ray auth token {path} (owner-only)")
    return check_token_file(path, log)


def configure(address: str | None, log=print) -> Path | None:
    """Set this process's environment (inherited by every Ray process) for token auth.

    Call before `ray.init`. Returns the token file in use (None: token from RAY_AUTH_TOKEN or
    auth turned off by the user). Raises KDSweepError for a missing/empty token file.
    """
    mode = os.environ.get(MODE_ENV, "").strip()
    if mode and mode.lower() != "token":
        log(DISABLED_WARNING.format(mode=mode))
        return None
    path: Path | None = None
    if os.environ.get(TOKEN_ENV, "").strip():
        pass  # Ray reads the token from the environment first
    elif os.environ.get(PATH_ENV, "").strip():
        path = check_token_file(Path(os.environ[PATH_ENV]).expanduser(), log)
    elif address:
        default = default_token_path()
        if not default.exists():
            raise KDSweepError(
                f"--address {address}: no Ray token; set {PATH_ENV} to the cluster's token "
                f"file (or {TOKEN_ENV}), see docs/cluster.md"
            )
        path = check_token_file(default, log)
    else:
        path = ensure_token(log=log)
    os.environ[MODE_ENV] = "token"
    if path is not None:
        os.environ[PATH_ENV] = str(path)
    _refresh_ray_config()
    return path


def _refresh_ray_config() -> None:
    """Make an already imported Ray see the new RAY_AUTH_MODE and token (it caches both)."""
    if "ray._raylet" not in sys.modules:
        return
    from ray._raylet import AuthenticationTokenLoader, Config

    Config.initialize("")
    AuthenticationTokenLoader.instance().reset_cache()


if __name__ == "__main__":
    try:
        print(ensure_token(Path(sys.argv[1]).expanduser() if len(sys.argv) > 1 else None))
    except KDSweepError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
