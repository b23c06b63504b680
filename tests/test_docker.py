"""docker/: the image and compose.yaml, run for real by docker/smoke.sh.

smoke.sh runs a `--smoke` sweep in one container (MLflow runs in a mounted folder), then brings
up PostgreSQL + MLflow + a Ray head + a CPU worker with compose, runs a smoke sweep through
`--address` with token auth on, reads its runs from PostgreSQL and checks that `compose down`
leaves nothing behind (measured on 2 busy shared cores with the image built: ~6.5 min for
each part).

Runs where a container engine works AND the image is already built, or when
KDSWEEP_DOCKER_TEST=1 asks for it (then a missing image is built first with docker/build.sh:
a ~9 GB image, ~30 min on 2 cores). Under CI (CI set) only with KDSWEEP_DOCKER_TEST=1: the
smoke alone would take a third of CI's budget. KDSWEEP_DOCKER_TEST=0 always skips.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
IMAGE = os.environ.get("KDSWEEP_IMAGE", "kdsweep:0.1.0")
PUBLIC_POSTGRES = "postgres:15-bookworm"
LOCAL_POSTGRES = "localhost/kdsweep-postgres:15"  # docker/build.sh with LOCAL_BASE=1


def _engine() -> str | None:
    want = os.environ.get("ENGINE")
    for name in [want] if want else ["podman", "docker"]:
        if shutil.which(name):
            return name
    return None


def _has_image(engine: str, image: str) -> bool:
    res = subprocess.run([engine, "image", "inspect", image], capture_output=True, timeout=60)
    return res.returncode == 0


@pytest.mark.infra
def test_image_and_compose_smoke():
    ask = os.environ.get("KDSWEEP_DOCKER_TEST", "")
    if ask == "0":
        pytest.skip("KDSWEEP_DOCKER_TEST=0")
    if os.environ.get("CI") and ask != "1":  # CI's budget: ~13 min and ~9 GB of memory headroom
        pytest.skip(
            "CI: the container smoke (~13 min, an ~9 GB image) runs with KDSWEEP_DOCKER_TEST=1"
        )
    engine = _engine()
    if engine is None:
        pytest.skip("no container engine: neither podman nor docker is installed")
    info = subprocess.run([engine, "info"], capture_output=True, text=True, timeout=120)
    if info.returncode != 0:
        pytest.skip(f"{engine} cannot run here: {(info.stderr or info.stdout).strip()[-300:]}")

    env = dict(os.environ, ENGINE=engine, KDSWEEP_IMAGE=IMAGE)
    if not _has_image(engine, IMAGE):
        if ask != "1":
            pytest.skip(
                f"image {IMAGE} not built; building it (~9 GB, ~30 min on 2 cores) would "
                "exceed this test's budget: run `bash docker/build.sh` (LOCAL_BASE=1 without "
                "an image registry) or set KDSWEEP_DOCKER_TEST=1"
            )
        can_pull = (
            subprocess.run(
                [engine, "pull", "python:3.11-slim-bookworm"], capture_output=True, timeout=600
            ).returncode
            == 0
        )
        build_env = dict(env, LOCAL_BASE="0" if can_pull else "1")
        subprocess.run(
            ["bash", str(ROOT / "docker" / "build.sh")], env=build_env, check=True, timeout=3600
        )
    if "POSTGRES_IMAGE" not in env:
        env["POSTGRES_IMAGE"] = (
            LOCAL_POSTGRES
            if _has_image(engine, LOCAL_POSTGRES) and not _has_image(engine, PUBLIC_POSTGRES)
            else PUBLIC_POSTGRES
        )

    res = subprocess.run(
        ["bash", str(ROOT / "docker" / "smoke.sh")],
        env=env,
        capture_output=True,
        text=True,
        timeout=1500,
    )
    out = res.stdout[-6000:] + res.stderr[-4000:]
    assert res.returncode == 0, out
    assert "runs, all FINISHED" in res.stdout, out  # 1: MLflow runs in the mounted folder
    assert "refused (as it should be)" in res.stdout, out  # 2: token auth on
    assert "containers left: none; volumes left: none; networks left: none" in res.stdout, (
        out
    )  # 2: down is clean
