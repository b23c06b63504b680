"""Outgrowing one machine, tested for real on this one.

* An existing Ray cluster: two Ray nodes on loopback (`ray start --head` + `ray start --address`),
  a smoke sweep with `--address`; trials must land on BOTH nodes (each epoch's report carries
  the Ray node id, see trainables/tune_io.py) and write to the one storage path.
* MLflow on PostgreSQL: a throwaway server (initdb + pg_ctl on a loopback port), a smoke sweep
  logging straight into it (`--mlflow-uri postgresql://...`), and one through `mlflow server`
  started with the flags docker/compose.yaml uses.

Every process a test starts is stopped by the test (Ray nodes by process group, never by
`ray stop`, which would stop every Ray on the machine; postgres by `pg_ctl stop`).
"""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest
from sweep_helpers import group_members

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable
SWEEP_DIR = "temperature-text-fortunes-smoke"


# ---------------------------------------------------------------- helpers
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(cache_dir: Path, **extra: str) -> dict[str, str]:
    env = dict(os.environ)
    for k in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI"):
        env.pop(k, None)
    env.update(
        KDSWEEP_HOME=str(cache_dir),
        PYTHONUNBUFFERED="1",
        RAY_USAGE_STATS_ENABLED="0",
        **extra,
    )
    return env


def _sweep(tmp: Path, env: dict[str, str], *extra: str, timeout: int = 500):
    cmd = [PY, str(ROOT / "sweeps" / "temperature.py"), "--smoke", "--storage", str(tmp / "runs")]
    res = subprocess.run(
        [*cmd, *extra], env=env, capture_output=True, text=True, timeout=timeout, cwd=tmp
    )
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert "best: soft T=" in res.stdout, res.stdout[-3000:]
    # every MLflow event was sent (the live status's "N pending" counts trials, not events)
    assert "MLflow event(s) pending" not in res.stdout, res.stdout[-3000:]
    return res


def _stop_groups(pgids: list[int], grace: float = 10.0) -> None:
    """SIGTERM the process groups we started, then SIGKILL whatever is left."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for g in pgids:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(g, sig)
        deadline = time.time() + grace
        while time.time() < deadline and any(group_members(g) for g in pgids):
            time.sleep(0.5)
        if not any(group_members(g) for g in pgids):
            return


# ---------------------------------------------------------------- cluster resources (fast)
def _args(*argv: str):
    from driver.cli import build_parser, build_plan

    return build_plan("temperature", build_parser("temperature", None).parse_args(list(argv)))


@pytest.mark.unit
def test_gpu_request_is_kept_on_a_cluster(monkeypatch, capsys):
    """The driver's machine may have no GPU; the cluster's nodes decide, not the local check."""
    import torch

    from driver.tuner import resolve_resources

    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    res = resolve_resources(_args("--address", "127.0.0.1:6379", "--gpus-per-trial", "0.25"))
    assert res == {"cpu": 1.0, "gpu": 0.25}
    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:6379")
    assert resolve_resources(_args("--gpus-per-trial", "1"))["gpu"] == 1.0
    assert "no GPU found" not in capsys.readouterr().out
    monkeypatch.delenv("RAY_ADDRESS")  # local: no GPU here -> CPU, said in one line
    assert resolve_resources(_args("--gpus-per-trial", "0.25"))["gpu"] == 0.0
    assert "no GPU found" in capsys.readouterr().out


@pytest.mark.unit
@pytest.mark.parametrize("how", ["flag", "env"])
def test_cluster_resources_come_from_the_cluster(monkeypatch, tmp_path, how):
    """With an address, ray.init only connects: no num_cpus/num_gpus, no PID bookkeeping."""
    import ray

    from driver.tuner import init_ray

    calls = []
    monkeypatch.setattr(ray, "init", lambda **kw: calls.append(kw))
    monkeypatch.setattr(ray, "cluster_resources", lambda: {"CPU": 64.0, "GPU": 8.0})
    monkeypatch.setenv("KDSWEEP_HOME", str(tmp_path / "cache"))
    (tmp_path / "token").write_text("f" * 64)
    monkeypatch.setenv("RAY_AUTH_MODE", "token")  # set here, so what init_ray sets is undone
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(tmp_path / "token"))  # the cluster's token
    if how == "flag":
        monkeypatch.delenv("RAY_ADDRESS", raising=False)
        args = _args("--address", "10.1.2.3:6379")
    else:
        monkeypatch.setenv("RAY_ADDRESS", "10.1.2.3:6379")
        args = _args()
    pids = tmp_path / "ray_pids.json"
    assert init_ray(args, pids, {"cpu": 1.0, "gpu": 0.25}) == {"CPU": 64.0, "GPU": 8.0}
    (kw,) = calls
    assert kw["address"] == "10.1.2.3:6379"
    assert not {"num_cpus", "num_gpus", "resources"} & set(kw)
    assert kw["runtime_env"]["env_vars"]["KDSWEEP_HOME"] == str(tmp_path / "cache")
    assert not pids.exists()  # a cluster's processes are not ours to reap


# ---------------------------------------------------------------- a two-node Ray cluster
@dataclass
class RayCluster:
    address: str
    root: Path
    env: dict[str, str]


@pytest.fixture
def ray_cluster():
    """Head + one worker node, 1 CPU each, on 127.0.0.1; stopped by process group afterwards."""
    ray_bin = str(Path(PY).with_name("ray"))
    root = Path(tempfile.mkdtemp(prefix="kdray-", dir="/tmp"))  # short: Ray's socket paths
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_AUTH_TOKEN")}
    from driver.ray_auth import ensure_token

    token = ensure_token(root / "auth_token")  # shared by both nodes and the sweep, 0600
    env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(token), RAY_USAGE_STATS_ENABLED="0")
    port = _free_port()
    groups: list[int] = []

    def start(name: str, *args: str) -> None:
        with (root / f"{name}.log").open("w") as log:
            proc = subprocess.Popen(
                [ray_bin, "start", *args, "--num-cpus=1", "--num-gpus=0",
                 "--node-ip-address=127.0.0.1", f"--temp-dir={root / name}",
                 "--object-store-memory=100000000", "--disable-usage-stats"],
                env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip
            groups.append(proc.pid)  # its own session: every node process shares this pgid
            rc = proc.wait(timeout=240)
        assert rc == 0, (root / f"{name}.log").read_text()[-3000:]

    try:
        start(
            "head",
            "--head",
            f"--port={port}",
            "--include-dashboard=false",
            f"--dashboard-port={_free_port()}",
        )
        start("worker", f"--address=127.0.0.1:{port}")
        yield RayCluster(f"127.0.0.1:{port}", root, env)
    finally:
        _stop_groups(groups)
        left = [p for g in groups for p in group_members(g)]
        shutil.rmtree(root, ignore_errors=True)
        assert not left, f"Ray processes left running: {left}"


def _cluster_nodes(cluster: RayCluster) -> dict[str, str]:
    """Alive node id -> 'head' | 'worker', asked from the cluster itself."""
    code = (
        "import json, ray\n"
        f"ray.init(address={cluster.address!r}, log_to_driver=False, logging_level='ERROR')\n"
        "print(json.dumps({n['NodeID']: 'head' if 'node:__internal_head__' in n['Resources']"
        " else 'worker' for n in ray.nodes() if n['Alive']}))\n"
    )
    res = subprocess.run(
        [PY, "-c", code], env=cluster.env, capture_output=True, text=True, timeout=120
    )
    assert res.returncode == 0, res.stderr[-3000:]
    return json.loads(res.stdout.strip().splitlines()[-1])


def _placement(sweep_dir: Path) -> dict[str, tuple[str, set[str]]]:
    """trial id -> (temperature, node ids that reported its epochs), from Tune's result.json."""
    out = {}
    for result in sorted(sweep_dir.glob("*/result.json")):
        rows = [json.loads(ln) for ln in result.read_text().splitlines() if ln.strip()]
        temp = str(rows[0]["config"]["temperature"])
        out[result.parent.name] = (temp, {r["node_id"] for r in rows})
    return out


@pytest.mark.infra
def test_sweep_on_a_two_node_cluster(ray_cluster, tmp_path, cache_dir):
    """--address: trials run on both nodes, storage is one path, MLflow from the environment."""
    nodes = _cluster_nodes(ray_cluster)
    assert sorted(nodes.values()) == ["head", "worker"], nodes
    db = tmp_path / "mlruns.db"
    token = ray_cluster.env["RAY_AUTH_TOKEN_PATH"]  # the cluster's token, shared as compose does
    env = _env(cache_dir, MLFLOW_TRACKING_URI=f"sqlite:///{db}", RAY_AUTH_TOKEN_PATH=token)
    t0 = time.time()
    res = _sweep(tmp_path, env, "--address", ray_cluster.address)
    wall = time.time() - t0
    assert "4 trial(s), 2 at a time, 1 CPU / 0 GPU each" in res.stdout  # the cluster's 2 CPUs
    assert f"MLflow: sqlite:///{db}" in res.stdout

    placement = _placement(tmp_path / "runs" / SWEEP_DIR)
    assert sorted(t for t, _ in placement.values()) == ["1", "2", "4", "8"]
    for trial, (_, ids) in placement.items():
        assert len(ids) == 1 and ids <= set(nodes), (trial, ids, nodes)  # one node per trial
    used = {nodes[next(iter(ids))] for _, ids in placement.values()}
    assert used == {"head", "worker"}, placement
    print(f"\n[two-node sweep: {wall:.0f} s]")
    for trial, (temp, ids) in placement.items():
        node = next(iter(ids))
        print(f"  trial {trial} T={temp}: {nodes[node]} node {node[:12]}")

    # every trial's checkpoints are in the one storage path, whichever node wrote them
    for trial in placement:
        assert list((tmp_path / "runs" / SWEEP_DIR / trial).glob("checkpoint_*")), trial
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{db}")
    runs = [
        r
        for e in client.search_experiments()
        for r in client.search_runs([e.experiment_id], max_results=100)
    ]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert len(children) == 4 and all(c.info.status == "FINISHED" for c in children)


# ---------------------------------------------------------------- MLflow on PostgreSQL
@dataclass
class Postgres:
    port: int
    user: str
    bindir: Path
    run_as: list[str]

    def uri(self, db: str, driver: str = "postgresql") -> str:
        return f"{driver}://{self.user}@127.0.0.1:{self.port}/{db}"

    def createdb(self, name: str) -> str:
        subprocess.run(
            [*self.run_as, str(self.bindir / "createdb"), "-h", "127.0.0.1"]
            + ["-p", str(self.port), "-U", self.user, name],
            check=True,
            capture_output=True,
        )
        return name


def _pg_bindir() -> Path | None:
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"))  # Debian's layout
    if found:
        return found[-1].parent
    pg_ctl = shutil.which("pg_ctl")
    return Path(pg_ctl).parent if pg_ctl else None


@pytest.fixture(scope="module")
def postgres():
    """A throwaway PostgreSQL server on a loopback port (as user postgres when we are root)."""
    bindir = _pg_bindir()
    if bindir is None or not (bindir / "initdb").is_file():
        pytest.skip("PostgreSQL server binaries not installed (Debian package: postgresql)")
    run_as: list[str] = []
    root = Path(tempfile.mkdtemp(prefix="kdpg-", dir="/tmp"))
    if os.geteuid() == 0:  # postgres refuses to run as root
        try:
            pw = pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("running as root and there is no 'postgres' user to run the server")
        run_as = ["runuser", "-u", "postgres", "--"]
        os.chmod(root, 0o755)
        os.chown(root, pw.pw_uid, pw.pw_gid)
    pg = Postgres(_free_port(), "kdsweep", bindir, run_as)
    data, log = root / "data", root / "server.log"
    subprocess.run(
        [*run_as, str(bindir / "initdb"), "-D", str(data), "-U", pg.user, "-A", "trust"]
        + ["-E", "UTF8", "--no-sync"],
        check=True,
        capture_output=True,
    )
    pg_ctl = [*run_as, str(bindir / "pg_ctl"), "-D", str(data)]
    opts = f"-p {pg.port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off"
    subprocess.run(
        [*pg_ctl, "-l", str(log), "-w", "-t", "60", "-o", opts, "start"],
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        yield pg
    finally:
        subprocess.run(
            [*pg_ctl, "-m", "fast", "-w", "-t", "60", "stop"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        shutil.rmtree(root, ignore_errors=True)


def _runs_in_postgres(pg: Postgres, db: str) -> list[tuple]:
    """(run id, name, status, parent run id) of every run, read with SQL from the store."""
    import psycopg

    with psycopg.connect(host="127.0.0.1", port=pg.port, user=pg.user, dbname=db) as conn:
        return conn.execute(
            "SELECT r.run_uuid, r.name, r.status, t.value FROM runs r LEFT JOIN tags t"
            " ON t.run_uuid = r.run_uuid AND t.key = 'mlflow.parentRunId' ORDER BY r.name"
        ).fetchall()


def _check_nested_in_postgres(pg: Postgres, db: str) -> list[tuple]:
    rows = _runs_in_postgres(pg, db)
    parents = [r for r in rows if r[3] is None]
    children = [r for r in rows if r[3] is not None]
    assert len(parents) == 1 and parents[0][2] == "FINISHED", rows
    assert len(children) == 4, rows
    assert {c[3] for c in children} == {parents[0][0]}
    assert all(c[2] == "FINISHED" for c in children), rows
    assert sorted(c[1] for c in children) == [f"soft T={t} L2-H128" for t in (1, 2, 4, 8)]
    # and through MLflow's own API: per-epoch metrics on every child run
    from mlflow.tracking import MlflowClient

    client = MlflowClient(pg.uri(db))
    for run_id, *_ in children:
        steps = [m.step for m in client.get_metric_history(run_id, "dev_accuracy")]
        assert steps == [1, 2], steps
    return rows


@pytest.mark.infra
def test_mlflow_on_postgresql(postgres, tmp_path, cache_dir):
    db = postgres.createdb("kdsweep_direct")
    t0 = time.time()
    res = _sweep(tmp_path, _env(cache_dir), "--mlflow-uri", postgres.uri(db))
    assert f"MLflow: {postgres.uri(db)}" in res.stdout
    rows = _check_nested_in_postgres(postgres, db)
    print(f"\n[postgresql:// sweep: {time.time() - t0:.0f} s]")
    for run_id, name, status, parent in rows:
        print(f"  {run_id[:8]} {name!r} {status} parent={parent[:8] if parent else '-'}")


def _get(url: str, host: str | None = None) -> int:
    req = urllib.request.Request(url, headers={"Host": host} if host else {})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


@pytest.mark.infra
def test_mlflow_server_on_postgresql(postgres, tmp_path, cache_dir):
    """`mlflow server` with docker/compose.yaml's flags, on PostgreSQL; the sweep logs over HTTP."""
    db = postgres.createdb("kdsweep_server")
    port = _free_port()
    cmd = [
        str(Path(PY).with_name("mlflow")), "server",
        "--backend-store-uri", postgres.uri(db),
        "--artifacts-destination", str(tmp_path / "mlartifacts"),
        "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
        "--allowed-hosts", f"mlflow,mlflow:5000,localhost:{port},127.0.0.1:{port}",
    ]  # fmt: skip
    log = (tmp_path / "mlflow-server.log").open("w")
    server = subprocess.Popen(
        cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, cwd=tmp_path
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 180
        while time.time() < deadline:
            try:
                if _get(f"{base}/health") == 200:
                    break
            except OSError:
                pass
            assert server.poll() is None, (tmp_path / "mlflow-server.log").read_text()[-3000:]
            time.sleep(1)
        else:
            pytest.fail("mlflow server did not come up: " + (tmp_path / "mlflow-server.log")
                        .read_text()[-3000:])  # fmt: skip
        api = f"{base}/api/2.0/mlflow/experiments/search?max_results=1"
        assert _get(api, host="mlflow:5000") == 200  # compose's service name is allowed
        assert _get(api, host="evil.example:5000") == 403  # DNS-rebinding guard still on
        t0 = time.time()
        env = _env(cache_dir, MLFLOW_TRACKING_URI=base)
        res = _sweep(tmp_path, env)
        assert f"MLflow: {base}" in res.stdout
        rows = _check_nested_in_postgres(postgres, db)
        print(f"\n[mlflow server sweep: {time.time() - t0:.0f} s, {len(rows)} runs in postgres]")
    finally:
        _stop_groups([server.pid])
        log.close()


@pytest.mark.unit
def test_postgresql_uri_driver_is_installed():
    """Plain `postgresql://` means SQLAlchemy's default driver (psycopg 3 since SQLAlchemy 2.1);
    requirements.txt pins it, so the URI in docker/compose.yaml and the docs works as written."""
    import importlib

    import sqlalchemy

    driver = sqlalchemy.engine.make_url("postgresql://u@127.0.0.1/db").get_dialect().driver
    importlib.import_module(driver)
    assert f"{driver}[binary]==" in (ROOT / "requirements.txt").read_text()
