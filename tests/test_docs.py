"""Every command the README and docs/ show is run here (or by CI: `make test`, `make sweep`).

A sweep command runs with `--dry-run`: the command line, the YAML and the overrides are built
into the sweep's plan and validated exactly as a real run would (a misspelt key or flag fails
here), without preparing or starting anything. Commands of the other scripts (report, decode,
bench, scripts) run with `--help` and must know every flag the docs give them; `make` targets
must exist. Placeholders (`<sweep>`, HEAD_IP) and files the user brings are stood in for.
"""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from driver.cli import main as sweep_main

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
CMD = re.compile(r"(?:\.venv/bin/)?python (sweeps|bench|scripts)/(\w+)\.py([^`\n#]*)")
NOT_SWEEPS = {"report", "decode", "sync_mlflow"}  # sweeps/ scripts that run no sweep


def documented() -> list[tuple[str, str, str]]:
    """(folder, script, arguments) of every command shown, once each."""
    seen: dict[tuple[str, str, str], None] = {}
    for page in PAGES:
        for m in CMD.finditer(page.read_text()):
            args = m.group(3).strip().rstrip("\\").strip()
            seen[(m.group(1), m.group(2), args)] = None
    return list(seen)


@pytest.mark.unit
def test_the_docs_show_commands():
    cmds = documented()
    assert len(cmds) > 20 and any(s == "temperature" for _, s, _ in cmds)


@pytest.mark.unit
@pytest.mark.parametrize(
    "script,args",
    [(s, a) for f, s, a in documented() if f == "sweeps" and s not in NOT_SWEEPS],
)
def test_documented_sweep_commands_build_their_plan(script, args, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data").mkdir()  # a user's CSV, as the docs name it
    (tmp_path / "data" / "legal.csv").write_text(
        "body,area\n" + "".join(f"text {i},{'ab'[i % 2]}\n" for i in range(40))
    )
    argv = shlex.split(args.replace("HEAD_IP", "127.0.0.1"))
    # A hub name or a model directory the user has: stood in for by the shipped teacher.
    argv = [a.replace("nlpaueb/legal-bert-base-uncased", "minilm") for a in argv]
    argv = [_stand_in(a, tmp_path) for a in argv]
    plan = sweep_main(script, None, [*argv, "--dry-run", "--storage", str(tmp_path / "runs")])
    assert plan.n_trials >= 1


def _stand_in(arg: str, tmp: Path) -> str:
    """A file the docs assume the user has, made small and real."""
    key, _, value = arg.partition("=")
    if key == "student" and value.startswith("runs/"):
        return f"student={_tiny_student(tmp)}"
    if key == "teacher_checkpoint":
        return f"teacher_checkpoint={_tiny_bilstm(tmp)}"
    return arg


def _tiny_student(tmp: Path) -> Path:
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    from kdsweep.text.models import resolve_backbone

    out = tmp / "student"
    cfg = BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=1,
                     num_attention_heads=2, intermediate_size=64)  # fmt: skip
    BertForSequenceClassification(cfg).save_pretrained(out)
    AutoTokenizer.from_pretrained(resolve_backbone("minilm")).save_pretrained(out)
    return out


def _tiny_bilstm(tmp: Path) -> Path:
    """A 1-layer BiLSTM-CTC state dict in kdsweep's layout (docs/conditions.md)."""
    import torch

    from kdsweep.speech.models import BiLSTMCTC

    path = tmp / "teacher.pt"
    torch.save(BiLSTMCTC(layers=1, hidden=32).state_dict(), path)
    return path


@pytest.mark.unit
@pytest.mark.parametrize(
    "folder,script,args",
    [(f, s, a) for f, s, a in documented() if f != "sweeps" or s in NOT_SWEEPS],
)
def test_documented_script_commands_know_their_flags(folder, script, args):
    out = subprocess.run(
        [sys.executable, str(ROOT / folder / f"{script}.py"), "--help"],
        capture_output=True, text=True, timeout=300, cwd=ROOT,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    for flag in re.findall(r"(?<![\w-])--[\w-]+", args):
        assert flag in out.stdout, f"{folder}/{script}.py has no {flag}"


@pytest.mark.unit
def test_documented_make_targets_exist():
    make = (ROOT / "Makefile").read_text()
    targets = set(re.findall(r"^([\w -]+):", make, re.M))
    targets = {t for line in targets for t in line.split()}
    for page in PAGES:
        for target in re.findall(r"`make ([\w-]+)`", page.read_text()):
            assert target in targets, f"{page.name}: make {target}"
