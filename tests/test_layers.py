"""The code's layers, read from the source with `ast` (every import, function-level ones too):
no import cycle, imports one way (sweeps -> driver -> trainables -> kdsweep), Ray and MLflow only
in the files driver/__init__.py names, and sweeps/ holding only entry scripts."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[1]
LAYERS = ("sweeps", "driver", "trainables", "kdsweep")  # each imports only those after it


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def sources() -> dict[str, Path]:
    return {module_name(p): p for pkg in LAYERS for p in sorted((ROOT / pkg).rglob("*.py"))}


def imported(path: Path, modules: dict[str, Path], this: str = "") -> set[str]:
    """Every module `path` imports anywhere in its body (`from a import b`: a.b if a module)."""
    out: set[str] = set()
    this = this or module_name(path)
    package = this if path.name == "__init__.py" else this.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*up, base] if base else up)
            out.add(base)
            out.update(f"{base}.{a.name}" for a in node.names if f"{base}.{a.name}" in modules)
    return out


def graph() -> dict[str, set[str]]:
    modules = sources()
    return {m: {i for i in imported(p, modules) if i in modules} - {m} for m, p in modules.items()}


def cycles(g: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(g[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in sorted(g):
        if v not in index:
            visit(v)
    return found


def test_the_cycle_finder_finds_a_function_level_cycle(tmp_path):
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []
    f = tmp_path / "m.py"
    f.write_text("def f():\n    from driver import run\n    import ray.tune\n")
    assert {"driver", "ray.tune"} <= imported(f, {}, "m")


def test_no_import_cycle():
    assert cycles(graph()) == []


def test_imports_go_one_way():
    wrong = []
    for mod, deps in graph().items():
        rank = LAYERS.index(mod.split(".")[0])
        wrong += [f"{mod} -> {d}" for d in deps if LAYERS.index(d.split(".")[0]) < rank]
    assert wrong == []


def allowed(lib: str) -> set[str]:
    """The files driver/__init__.py's docstring names for `lib` (ray or mlflow)."""
    doc = ast.get_docstring(ast.parse((ROOT / "driver" / "__init__.py").read_text())) or ""
    block = re.search(rf"^\s*{lib}: (.*?)(?=^\s*\w+: |^\s*$)", doc, re.M | re.S)
    assert block, f"driver/__init__.py names no {lib} files"
    return set(re.findall(r"[\w/]+\.py", block.group(1)))


@pytest.mark.parametrize("lib", ["ray", "mlflow"])
def test_ray_and_mlflow_only_where_named(lib):
    modules = sources()
    users = {
        str(p.relative_to(ROOT))
        for p in modules.values()
        if any(i.split(".")[0] == lib for i in imported(p, modules))
    }
    assert users == allowed(lib)


def test_losses_models_and_data_never_import_ray_or_mlflow():
    modules = sources()
    core = [p for m, p in modules.items() if m.startswith("kdsweep")]
    assert core, "kdsweep/ not found"
    for p in core:
        assert not {i.split(".")[0] for i in imported(p, modules)} & {"ray", "mlflow"}, p


def test_no_private_ray_api():
    """Underscored Ray modules and names stay Ray's (the private ones we still need are listed)."""
    known = {"ray._raylet"}  # token auth: refreshing Ray's cached token (no public API)
    modules = sources()
    used = set()
    for p in modules.values():
        for node in ast.walk(ast.parse(p.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("ray"):
                used |= {f"{node.module}.{a.name}" for a in node.names if a.name.startswith("_")}
                used |= {node.module} if "._" in node.module else set()
    assert used <= known, used - known


def test_sweeps_holds_only_entry_scripts():
    """Each sweeps/*.py is a short command: a docstring, its CLI, and a call into driver/."""
    for p in sorted((ROOT / "sweeps").glob("*.py")):
        tree = ast.parse(p.read_text())
        defs = [n for n in tree.body if isinstance(n, ast.FunctionDef | ast.ClassDef)]
        assert [n.name for n in defs if n.name not in ("main", "parse_args")] == [], p.name
        code = p.read_text().split('"""', 2)[-1] if p.read_text().startswith('"""') else ""
        assert len(code.strip().splitlines()) <= 50, f"{p.name}: {len(code.splitlines())} lines"
