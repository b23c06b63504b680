"""The MLflow UI, checked in a real (headless) browser over a real smoke sweep's store.

    python sweeps/temperature.py --smoke ...      -> sqlite store: 1 parent run + 4 trial runs
    mlflow server --backend-store-uri sqlite:///... --host 127.0.0.1 --port <free> --workers 1
    chromium --headless --dump-dom / --screenshot  -> run names listed, metric charts drawn

Marker `infra` (a sweep, a server start and four browser loads: 2-5 minutes on 2 busy cores): it
runs with `make test` / `make test-infra`. Needs Debian's `chromium` (scripts/setup.sh installs it).
The screenshots stay in the test's tmp dir (paths printed); a copy of the runs page goes to
/tmp/kdsweep_mlflow_ui.png.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
from sweep_helpers import sweep_env as _env

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
SWEEP = "temperature-text-fortunes-smoke"
TRIALS = [f"soft T={t} L2-H128" for t in (1, 2, 4, 8)]
SCREENSHOT_COPY = Path("/tmp/kdsweep_mlflow_ui.png")

pytestmark = [
    pytest.mark.infra,
    pytest.mark.skipif(CHROMIUM is None, reason="needs Debian chromium (scripts/setup.sh)"),
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run_group(cmd: list[str], timeout: float, **kw) -> subprocess.CompletedProcess:
    """Run in its own process group; on timeout the whole group (browser helpers too) goes."""
    proc = subprocess.Popen(
        cmd, start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kw
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def _api(base: str, path: str, body: dict | None = None) -> dict:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(
        base + path, data=data, headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.loads(r.read())


def _chromium(url: str, tmp: Path, screenshot: Path | None = None) -> str:
    """Load `url` headless; return the rendered DOM (or write a screenshot)."""
    profile = tmp / f"chromium-profile-{time.monotonic_ns()}"  # fresh profile every load
    cmd = [
        CHROMIUM,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={profile}",
        # virtual time: the page's timers and fetches run to completion without waiting for
        # real time; 15 s lists the runs, the lazily drawn Plotly charts need longer.
        "--virtual-time-budget=60000",
        "--run-all-compositor-stages-before-draw",
        "--window-size=1400,900",
        f"--screenshot={screenshot}" if screenshot else "--dump-dom",
        url,
    ]
    res = _run_group(cmd, timeout=240, cwd=tmp)
    assert res.returncode == 0, res.stderr.decode(errors="replace")[-2000:]
    return res.stdout.decode(errors="replace")


def _text(dom: str) -> str:
    import html
    import re

    dom = re.sub(r"<(script|style)\b.*?</\1>", " ", dom, flags=re.S)
    return " ".join(html.unescape(re.sub(r"<[^>]+>", " ", dom)).split())


def _colors(png: Path) -> tuple[int, float]:
    """(distinct colors, fraction of non-white pixels) of a screenshot."""
    from PIL import Image

    img = Image.open(png).convert("RGB")
    colors = img.getcolors(maxcolors=1 << 20) or []
    white = sum(n for n, c in colors if min(c) >= 245)
    return len(colors), 1 - white / (img.width * img.height)


@pytest.fixture
def mlflow_server(tmp_path, cache_dir):
    """A smoke sweep's store behind `mlflow server` on a free 127.0.0.1 port."""
    db = tmp_path / "mlruns.db"
    res = _run_group(
        [
            PY,
            str(ROOT / "sweeps" / "temperature.py"),
            "--smoke",
            "--storage",
            str(tmp_path / "runs"),
            "--mlflow-uri",
            f"sqlite:///{db}",
        ],
        timeout=600,
        env=_env(cache_dir),
        cwd=tmp_path,
    )
    assert res.returncode == 0, res.stdout.decode()[-3000:] + res.stderr.decode()[-3000:]
    (tmp_path / "sweep_stdout.txt").write_bytes(res.stdout)
    # the analysis report, logged on the parent run: the UI should serve it as an artifact
    # (it computes the attribution similarity the search's trials skipped)
    res = _run_group(
        [PY, str(ROOT / "sweeps" / "report.py"), SWEEP, "--mlflow-uri", f"sqlite:///{db}"]
        + ["--out", str(tmp_path / "report"), "--storage", str(tmp_path / "runs")],
        timeout=300,
        env=_env(cache_dir),
        cwd=tmp_path,
    )
    assert res.returncode == 0, res.stderr.decode()[-3000:]

    port = _free_port()
    log = (tmp_path / "mlflow_server.log").open("wb")
    server = subprocess.Popen(
        [
            str(Path(PY).parent / "mlflow"),
            "server",
            "--backend-store-uri",
            f"sqlite:///{db}",
            "--default-artifact-root",
            str(tmp_path / "mlartifacts"),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
        ],
        cwd=tmp_path,
        env=_env(cache_dir),
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # its own process group: uvicorn workers are killed with it
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120  # ~20 s on an idle machine, longer on a busy one
        while True:
            try:
                with urllib.request.urlopen(base + "/health", timeout=5) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            assert server.poll() is None, (tmp_path / "mlflow_server.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "mlflow server: no /health within 120 s"
            time.sleep(1)
        yield base
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
        log.close()


def test_mlflow_ui_shows_the_sweep_runs_and_charts(mlflow_server, tmp_path):
    base = mlflow_server
    # ---- structure through the REST API the UI itself uses
    exp = _api(base, "/api/2.0/mlflow/experiments/get-by-name?experiment_name=kdsweep/" + SWEEP)
    exp_id = exp["experiment"]["experiment_id"]
    exp_tags = {t["key"]: t["value"] for t in exp["experiment"].get("tags", [])}
    assert exp_tags.get("mlflow.experimentKind") == "custom_model_development"  # not GenAI
    runs = _api(
        base, "/api/2.0/mlflow/runs/search", {"experiment_ids": [exp_id], "max_results": 100}
    )["runs"]
    tags = {r["info"]["run_id"]: {t["key"]: t["value"] for t in r["data"]["tags"]} for r in runs}
    parents = [r for r in runs if "mlflow.parentRunId" not in tags[r["info"]["run_id"]]]
    assert [p["info"]["run_name"] for p in parents] == [SWEEP]
    parent_id = parents[0]["info"]["run_id"]
    children = [r for r in runs if r not in parents]
    assert sorted(c["info"]["run_name"] for c in children) == TRIALS
    for c in children:
        assert tags[c["info"]["run_id"]]["mlflow.parentRunId"] == parent_id
        metrics = {m["key"] for m in c["data"]["metrics"]}
        # per-epoch dev metrics, the final epoch's efficiency metrics, and the attribution
        # similarity the search skipped, computed and logged by the report from checkpoints
        assert {"dev_accuracy", "attr_cosine", "attr_spearman", "throughput", "latency_ms"} <= (
            metrics
        )
        history = _api(base, f"/api/2.0/mlflow/metrics/get-history?run_id={c['info']['run_id']}"
                       "&metric_key=analysis_seconds")["metrics"]  # fmt: skip
        assert len(history) == 1  # the final epoch's analysis only
    listed = _api(base, f"/api/2.0/mlflow/artifacts/list?run_id={parent_id}&path=report").get(
        "files", []
    )
    assert {"report/report.md", "report/metric_by_method.png"} <= {f["path"] for f in listed}

    # ---- the link the sweep prints opens the model-training runs view (MLflow 3.17 opens an
    # experiment in its GenAI view by default: an overview of traces and token usage, and its
    # runs page under the GenAI side bar: Observability, Traces, Sessions, Evaluation, ...)
    printed = (tmp_path / "sweep_stdout.txt").read_text()
    link = next(ln for ln in printed.splitlines() if ln.startswith("[kdsweep] MLflow UI: "))
    local = "http://127.0.0.1:5000/"
    assert f"{local}#/experiments/{exp_id}/runs?workflowType=machine_learning" in link, link
    view_url = link.split()[3].replace(local, base + "/")
    text = _text(_chromium(view_url, tmp_path))
    assert SWEEP in text and "5 matching runs" in text, text[:2000]
    assert "Observability" not in text and "Model registry" in text, text[:2000]

    # ---- the page the README points to: the sweep's parent run is listed
    runs_url = f"{base}/#/experiments/{exp_id}/runs"
    text = _text(_chromium(runs_url, tmp_path))
    assert SWEEP in text and "5 matching runs" in text, text[:2000]

    # ---- nested trials are folded under the parent there; a search filter + sort by name
    # lists them flat, and the chart view draws their metrics (Plotly)
    query = urllib.parse.urlencode(
        {
            "searchFilter": "attributes.status = 'FINISHED'",
            "orderByKey": "tags.`mlflow.runName`",
            "orderByAsc": "true",
            "compareRunsMode": "CHART",
        },
        quote_via=urllib.parse.quote,
    )
    flat_url = f"{runs_url}?{query}"
    dom = _chromium(flat_url, tmp_path)
    text = _text(dom)
    for name in [*TRIALS, SWEEP]:
        assert name in text, f"{name!r} not on the runs page: {text[:2000]}"
    assert "js-plotly-plot" in dom and 'class="trace' in dom, "no metric chart was drawn"
    shot = tmp_path / "mlflow_ui_runs.png"
    _chromium(flat_url, tmp_path, screenshot=shot)
    n_colors, ink = _colors(shot)
    assert n_colors > 200 and ink > 0.05, (n_colors, ink)
    shutil.copy(shot, SCREENSHOT_COPY)
    print(f"\n[mlflow-ui] runs page screenshot: {shot} (copy: {SCREENSHOT_COPY})")

    # ---- one trial's page: its per-epoch dev_accuracy chart
    t4 = next(c for c in children if c["info"]["run_name"] == "soft T=4 L2-H128")
    run_url = f"{base}/#/experiments/{exp_id}/runs/{t4['info']['run_id']}/model-metrics"
    dom = _chromium(run_url, tmp_path)
    assert "soft T=4 L2-H128" in _text(dom)
    assert "dev_accuracy" in _text(dom) and "js-plotly-plot" in dom
    shot = tmp_path / "mlflow_ui_run.png"
    _chromium(run_url, tmp_path, screenshot=shot)
    assert _colors(shot)[0] > 200
    print(f"[mlflow-ui] trial page screenshot: {shot}")
