"""The package's shape: lazy top-level names, layers that import only what they use,
and an import graph without circles."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import candle_agents

PACKAGE = Path(candle_agents.__file__).parent


def loaded_after(code: str) -> set[str]:
    """Top-level modules a fresh interpreter has loaded after running ``code``."""
    probe = f"{code}\nimport sys\nprint(' '.join(sorted({{m.split('.')[0] for m in sys.modules}})))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    return set(out.stdout.split())


@pytest.mark.parametrize(
    "code",
    [
        "import candle_agents",
        "import candle_agents.mcp; from candle_agents.mcp import McpClient, McpToolset",
        "from candle_agents.errors import ConfigError",
        "from candle_agents.engine.config import EngineConfig",
    ],
)
def test_light_imports_leave_torch_unloaded(code):
    assert "torch" not in loaded_after(code)


def test_top_level_names_resolve_on_first_use():
    assert "torch" in loaded_after("from candle_agents import Engine")
    for name in candle_agents.__all__:
        assert getattr(candle_agents, name) is not None
    assert "Engine" in dir(candle_agents)
    with pytest.raises(AttributeError, match="no attribute 'Engin'"):
        candle_agents.Engin  # noqa: B018


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path, known: set[str]) -> set[str]:
    """candle_agents modules ``path`` imports, at any level (``from pkg import mod`` names mod)."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parent, base] if base else parent)
            # ``from pkg import mod`` imports mod; ``from mod import name`` imports mod
            targets = [
                f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names
            ]
        else:
            continue
        for target in targets:
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1 on the current path, 2 done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for dep in sorted(graph[node]):
            if state.get(dep) == 1:
                return [*path[path.index(dep) :], dep]
            if dep not in state and (cycle := visit(dep)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_the_import_graph_has_no_circle():
    files = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    known = set(files)
    graph = {name: imported_modules(path, known) for name, path in files.items()}
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph) or [])
