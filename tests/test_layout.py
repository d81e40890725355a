"""The package's shape: stages in pipeline order, no import from a later stage into an earlier one
and no import cycle between modules (imports inside functions count too)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "mriae"
# the pipeline's stages, earliest first; a module may import its own stage and earlier ones only
STAGES = ["errors", "files", "config", "audit", "io", "prepare", "data", "networks", "figures", "train", "evaluate",
          "infer", "compare", "tools", "share"]


def _modules() -> dict[str, Path]:
    out = {}
    for p in PKG.rglob("*.py"):
        parts = p.relative_to(PKG.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = p
    return out


MODULES = _modules()


def _resolve(ref: str) -> str | None:
    """The module a dotted name imports (the longest prefix that is one of ours)."""
    parts = ref.split(".")
    for n in range(len(parts), 0, -1):
        if ".".join(parts[:n]) in MODULES:
            return ".".join(parts[:n])
    return None


def _imports(path: Path) -> set[str]:
    got = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            refs = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            refs = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        else:
            continue
        for r in refs:
            m = _resolve(r) if r.startswith("mriae") else None
            if m:
                got.add(m)
    return got


GRAPH = {m: _imports(p) - {m} for m, p in MODULES.items()}


def _stage(module: str) -> int | None:
    parts = module.split(".")
    return STAGES.index(parts[1]) if len(parts) > 1 and parts[1] in STAGES else None


def test_relative_imports_are_not_used():
    rel = [f"{m}:{n.lineno}" for m, p in MODULES.items() for n in ast.walk(ast.parse(p.read_text()))
           if isinstance(n, ast.ImportFrom) and n.level]
    assert rel == []


def test_every_module_belongs_to_a_stage():
    loose = [m for m in MODULES if m != "mriae" and _stage(m) is None]
    assert loose == [], f"modules outside the stages {STAGES}: {loose}"


@pytest.mark.parametrize("module", sorted(MODULES))
def test_no_import_from_a_later_stage(module):
    own = _stage(module)
    if own is None:  # the package root (repo_root, find_bundle_root) imports only errors
        assert GRAPH[module] <= {"mriae.errors"}
        return
    later = sorted(m for m in GRAPH[module] if m != "mriae" and (_stage(m) or 0) > own)
    assert later == [], f"{module} (stage {STAGES[own]}) imports later stages: {later}"


def test_no_import_cycles():
    state: dict[str, int] = {}
    cycles = []

    def visit(m, path):
        state[m] = 1
        for n in sorted(GRAPH[m]):
            if n == "mriae" or n not in GRAPH:
                continue
            # a package's __init__ importing its own submodules is not a cycle of modules
            if n.startswith(m + ".") or m.startswith(n + "."):
                continue
            if state.get(n) == 1:
                cycles.append(path[path.index(n):] + [n] if n in path else [m, n])
            elif n not in state:
                visit(n, path + [n])
        state[m] = 2

    for m in sorted(GRAPH):
        if m not in state:
            visit(m, [m])
    assert cycles == []
