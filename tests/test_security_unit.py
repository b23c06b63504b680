"""Token auth settings, pure pieces (driver/ray_auth.py) and a scan of the project's files."""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path

import pytest

from driver import ray_auth
from kdsweep.errors import KDSweepError

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def clean_env(monkeypatch, tmp_path):
    """No Ray auth settings from the caller; $HOME in tmp (Ray's default token path)."""
    for k in (ray_auth.MODE_ENV, ray_auth.TOKEN_ENV, ray_auth.PATH_ENV):
        monkeypatch.setenv(k, "")  # recorded, so what configure() sets is undone afterwards
        monkeypatch.delenv(k)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    return tmp_path


def test_local_cluster_gets_an_owner_only_token(clean_env, capsys):
    path = ray_auth.configure(None)
    assert path == clean_env / "home" / ".ray" / "auth_token"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert re.fullmatch(r"[0-9a-f]{64}", path.read_text())
    assert os.environ["RAY_AUTH_MODE"] == "token" and os.environ["RAY_AUTH_TOKEN_PATH"] == str(path)
    token = path.read_text()
    assert ray_auth.configure(None) == path and path.read_text() == token  # reused, not replaced
    assert "warning" not in capsys.readouterr().out


def test_token_file_from_env_is_checked(clean_env, monkeypatch, capsys):
    token = clean_env / "tok"
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(token))
    with pytest.raises(KDSweepError, match=f"Ray token file {token}: does not exist"):
        ray_auth.configure(None)
    token.write_text("  \n")
    with pytest.raises(KDSweepError, match=f"Ray token file {token}: missing a token"):
        ray_auth.configure("127.0.0.1:6379")
    token.write_text("abc123")
    token.chmod(0o644)
    assert ray_auth.configure("127.0.0.1:6379") == token
    (line,) = capsys.readouterr().out.splitlines()
    assert line.startswith("[kdsweep] warning: Ray token file") and "chmod 600" in line
    token.chmod(0o600)
    ray_auth.configure(None)
    assert capsys.readouterr().out == ""
    assert not (clean_env / "home" / ".ray").exists()  # no token of our own when one is given


def test_address_needs_the_clusters_token(clean_env, monkeypatch):
    with pytest.raises(KDSweepError, match="--address 10.0.0.5:6379: no Ray token"):
        ray_auth.configure("10.0.0.5:6379")
    assert not (clean_env / "home" / ".ray").exists()  # never generated for someone else's cluster
    monkeypatch.setenv("RAY_AUTH_TOKEN", "f" * 64)
    assert ray_auth.configure("10.0.0.5:6379") is None
    assert os.environ["RAY_AUTH_MODE"] == "token"


@pytest.mark.parametrize("mode", ["disabled", "DISABLED"])
def test_user_turning_auth_off_is_warned_once(clean_env, monkeypatch, capsys, mode):
    monkeypatch.setenv("RAY_AUTH_MODE", mode)
    assert ray_auth.configure(None) is None
    (line,) = capsys.readouterr().out.splitlines()
    assert line.startswith(f"[kdsweep] warning: RAY_AUTH_MODE={mode}:")
    assert os.environ["RAY_AUTH_MODE"] == mode  # respected
    assert not (clean_env / "home" / ".ray").exists()


def test_cli_error_for_a_missing_token_file(clean_env, monkeypatch, capsys):
    """The sweep CLI turns the KDSweepError into one `error:` line and exit 2, before anything
    is prepared or written (run_sweep checks the token first)."""
    from driver.cli import main

    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(clean_env / "nope"))
    storage = clean_env / "runs"
    with pytest.raises(SystemExit) as exc:
        main("temperature", None, ["--smoke", "--storage", str(storage)])
    assert not storage.exists()
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: Ray token file {clean_env / 'nope'}: does not exist"]


# ---------------------------------------------------------------- nothing turns auth off
SCANNED = ["sweeps", "driver", "trainables", "kdsweep", "bench", "scripts", "docker", "tests"]
SCANNED_FILES = ["Makefile", "README.md", "pyproject.toml"]
SCANNED.append("docs")
# RAY_AUTH_MODE given the value disabled in any syntax: env var, dict, compose, export, setdefault.
TURNS_OFF = re.compile(r"""RAY_AUTH_MODE['"]?\s*(?:=|:|,|\?=)\s*['"]?disabled""", re.IGNORECASE)
ALLOWED = {Path(__file__).resolve()}  # this test names the pattern it looks for


def _project_files() -> list[Path]:
    files = [ROOT / f for f in SCANNED_FILES if (ROOT / f).is_file()]
    for d in SCANNED:
        files += [p for p in (ROOT / d).rglob("*") if p.is_file() and "__pycache__" not in p.parts]
    return [p for p in files if p.resolve() not in ALLOWED]


def test_the_scan_finds_every_way_of_turning_auth_off():
    for text in (
        'os.environ.setdefault("RAY_AUTH_MODE", "disabled")',
        "export RAY_AUTH_MODE ?= disabled",
        "    RAY_AUTH_MODE: disabled # comment",
        '"RAY_AUTH_MODE": "disabled",',
        'env.update(RAY_AUTH_MODE="disabled")',
        "export RAY_AUTH_MODE=disabled KDSWEEP_HOME=/x",
    ):
        assert TURNS_OFF.search(text), text
    assert not TURNS_OFF.search(ray_auth.DISABLED_WARNING)  # the warning names it, sets nothing
    assert not TURNS_OFF.search('os.environ["RAY_AUTH_MODE"] = "token"')


def test_no_project_file_turns_ray_auth_off():
    files = _project_files()
    assert len(files) > 50 and ROOT / "driver" / "ray_auth.py" in files
    found = [
        f"{p.relative_to(ROOT)}:{n}: {line.strip()}"
        for p in files
        for n, line in enumerate(p.read_text(errors="replace").splitlines(), 1)
        if TURNS_OFF.search(line)
    ]
    assert not found, "\n".join(found)


# ---------------------------------------------------------------- the rest of the surface
def test_local_cluster_has_no_dashboard_and_token_auth_on(clean_env, monkeypatch):
    """What a sweep asks of a local Ray: token mode set before ray.init, no dashboard."""
    import ray

    from driver import ray_procs
    from driver.cli import build_parser, build_plan
    from driver.tuner import init_ray

    seen = []
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setattr(ray, "init", lambda **kw: seen.append((kw, os.environ["RAY_AUTH_MODE"])))
    monkeypatch.setattr(ray, "cluster_resources", lambda: {"CPU": 2.0})
    monkeypatch.setattr(ray_procs, "reap", lambda pid_file: 0)
    monkeypatch.setattr(ray_procs, "record", lambda pid_file: 0)
    plan = build_plan("temperature", build_parser("temperature", None).parse_args([]))
    ray_auth.configure(plan.address)  # run_sweep's first step
    init_ray(plan, clean_env / "ray_pids.json", {"cpu": 1.0, "gpu": 0.0})
    ((kw, mode),) = seen
    assert mode == "token" and kw["include_dashboard"] is False
    assert kw.get("dashboard_host", "127.0.0.1") == "127.0.0.1"
    assert (clean_env / "home" / ".ray" / "auth_token").stat().st_mode & 0o077 == 0


def test_mlflow_binds_loopback_only():
    make = (ROOT / "Makefile").read_text()
    (ui,) = [ln for ln in make.splitlines() if "mlflow ui" in ln]
    assert "--host 127.0.0.1" in ui
    docs = "".join(
        p.read_text() for p in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    )
    servers = re.findall(r"mlflow server [^`\n]*", docs)
    assert servers and all("--host 127.0.0.1" in s for s in servers), servers
    import yaml

    compose = yaml.safe_load((ROOT / "docker" / "compose.yaml").read_text())
    published = {
        name: svc.get("ports", []) for name, svc in compose["services"].items() if svc.get("ports")
    }
    assert published == {"mlflow": ["127.0.0.1:5000:5000"]}  # no Ray port leaves the host
    node_env = compose["x-ray-node"]["environment"]
    assert node_env["RAY_AUTH_MODE"] == "token" and node_env["RAY_AUTH_TOKEN"].startswith("${")


def test_credentials_are_not_logged_as_params():
    from driver.tracking import _public

    cfg = {"lr": 1e-3, "hf_token": "x", "db_password": "y", "RAY_AUTH_TOKEN": "z", "api_key": "k"}
    assert _public(cfg) == {"lr": 1e-3}
