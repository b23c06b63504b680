"""The cost-marker rule of tests/conftest.py, on a throwaway test file run by a child pytest."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

TESTS = Path(__file__).resolve().parent


def _pytest(tmp_path: Path, body: str, *args: str) -> subprocess.CompletedProcess:
    (tmp_path / "test_tmp.py").write_text("import pytest\n\n" + body)
    (tmp_path / "pytest.ini").write_text("[pytest]\n")  # its own rootdir, no config found above
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]),
    }
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "conftest", "-p", "no:cacheprovider"]
    cmd += ["-W", "ignore::pytest.PytestUnknownMarkWarning", "test_tmp.py", *args]
    return subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)


def test_a_test_without_or_with_two_cost_markers_stops_the_run(tmp_path):
    res = _pytest(
        tmp_path,
        "def test_unmarked():\n    pass\n\n"
        "@pytest.mark.unit\n@pytest.mark.e2e\ndef test_twice():\n    pass\n\n"
        "@pytest.mark.skip\ndef test_other_mark_only():\n    pass\n\n"
        "@pytest.mark.trial\ndef test_fine():\n    pass\n",
    )
    out = res.stdout + res.stderr
    assert res.returncode == pytest.ExitCode.USAGE_ERROR, out
    assert "test_tmp.py::test_unmarked (none)" in out
    assert "test_tmp.py::test_twice (e2e, unit)" in out
    assert "test_other_mark_only (none)" in out and "test_fine" not in out
    assert "passed" not in out  # nothing ran


def test_a_module_marker_covers_its_tests_and_deselecting_hides_nothing(tmp_path):
    body = "pytestmark = pytest.mark.infra\n\ndef test_a():\n    pass\n\ndef test_b():\n    pass\n"
    res = _pytest(tmp_path, body)
    assert res.returncode == 0 and "2 passed" in res.stdout, res.stdout + res.stderr
    res = _pytest(tmp_path, body + "\n@pytest.mark.unit\ndef test_c():\n    pass\n", "-m", "unit")
    assert res.returncode == pytest.ExitCode.USAGE_ERROR  # test_c has infra and unit
    assert "test_tmp.py::test_c (infra, unit)" in res.stdout + res.stderr
