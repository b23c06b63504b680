"""Token auth end to end: a smoke sweep runs with it on; clients without the token are refused.

The cluster is started as a sweep starts it (sweeps/ray_auth.configure, then ray.init for a
local cluster) in a subprocess of its own; clients on 127.0.0.1 then try `ray.init(address=...)`.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from sweep_helpers import run_sweep_script
from test_cluster import _stop_groups

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[1]
AUTH_VARS = ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", "RAY_ADDRESS")

SERVER = """
import sys, ray
from driver import ray_auth
ray_auth.configure(None)
ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False, logging_level="ERROR",
         object_store_memory=100_000_000)
print("GCS", ray.get_runtime_context().gcs_address, flush=True)
sys.stdin.read()  # until the test closes our stdin
"""
CLIENT = """
import sys, ray
try:
    ray.init(address=sys.argv[1], log_to_driver=False, logging_level="ERROR")
    print("CONNECTED", ray.get(ray.put(41)) + 1)
except Exception as e:
    chain = [e]
    while chain[-1].__cause__ is not None:
        chain.append(chain[-1].__cause__)
    why = [ln for c in chain for ln in str(c).splitlines() if "uthenticat" in ln]
    print("REFUSED", type(e).__name__, "|", (why or [str(e)])[-1].strip()[:150])
"""


def _env(home: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in AUTH_VARS}
    env.update(HOME=str(home), PYTHONPATH=str(ROOT), RAY_USAGE_STATS_ENABLED="0", **extra)
    return env


@pytest.fixture(scope="module")
def token_cluster():
    """A local cluster as a sweep starts it, with its token in a 0600 file; stopped afterwards."""
    root = Path(tempfile.mkdtemp(prefix="kdsec-", dir="/tmp"))
    token = root / "auth_token"
    env = _env(root / "home", RAY_AUTH_TOKEN_PATH=str(token))
    subprocess.run(
        [sys.executable, "-m", "driver.ray_auth", str(token)], env=env, check=True, cwd=ROOT
    )
    server = subprocess.Popen(
        [sys.executable, "-c", SERVER], env=env, cwd=root, text=True, start_new_session=True,
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        lines = []
        for line in server.stdout:
            lines.append(line)
            if line.startswith("GCS "):
                break
        else:
            pytest.fail("cluster did not start:\n" + "".join(lines)[-3000:])
        yield line.split()[1], token, root
    finally:
        server.stdin.close()
        with contextlib.suppress(subprocess.TimeoutExpired):
            server.wait(timeout=60)
        _stop_groups([server.pid])
        shutil.rmtree(root, ignore_errors=True)


def _client(address: str, env: dict[str, str]) -> str:
    res = subprocess.run(
        [sys.executable, "-c", CLIENT, address],
        env=env, capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    out = [ln for ln in res.stdout.splitlines() if ln.startswith(("CONNECTED", "REFUSED"))]
    assert out, res.stdout[-2000:] + res.stderr[-2000:]
    return out[-1]


def test_the_token_file_is_owner_only(token_cluster):
    _, token, _ = token_cluster
    assert token.stat().st_mode & 0o777 == 0o600


def test_client_with_the_token_connects(token_cluster):
    address, token, root = token_cluster
    env = _env(root / "home", RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(token))
    assert _client(address, env) == "CONNECTED 42"


@pytest.mark.parametrize("how", ["no token", "wrong token", "auth off"])
def test_client_without_the_right_token_is_refused(token_cluster, how, capsys):
    """The cluster itself refuses (InvalidAuthToken from its GCS), not just the client's checks."""
    address, _, root = token_cluster
    stranger = root / "stranger"  # a $HOME without ~/.ray/auth_token
    extra = {
        "no token": {},
        "wrong token": {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": "0" * 64},
        "auth off": {"RAY_AUTH_MODE": "dis" + "abled"},  # what main used to set for every sweep
    }[how]
    out = _client(address, _env(stranger, **extra))
    with capsys.disabled():
        print(f"\n[{how}] {out}")
    assert out.startswith("REFUSED") and "InvalidAuthToken" in out, out


def test_client_without_any_token_in_token_mode_stops_before_connecting(token_cluster):
    address, _, root = token_cluster
    out = _client(address, _env(root / "stranger", RAY_AUTH_MODE="token"))
    assert out.startswith("REFUSED AuthenticationError") and "no authentication token" in out, out


def test_smoke_sweep_runs_with_token_auth(tmp_path, cache_dir, monkeypatch):
    """The default local cluster: token on (Ray warns about nothing), the sweep finishes."""
    token = tmp_path / "auth_token"
    subprocess.run(
        [sys.executable, "-m", "driver.ray_auth", str(token)], env=_env(tmp_path), check=True,
        cwd=ROOT,
    )  # fmt: skip
    for k in AUTH_VARS:
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(token))  # sweep_env passes it on
    res = run_sweep_script("temperature", tmp_path, cache_dir)
    out = res.stdout + res.stderr
    assert res.returncode == 0, out[-3000:]
    assert "best: soft T=" in res.stdout
    assert "Token authentication is disabled" not in out and "warning: RAY_AUTH_MODE" not in out
