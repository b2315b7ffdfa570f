"""The shape of the package: the domain logic in datalog_platform/core imports nothing of Dagster
(the linter refuses it), no two of our modules import each other in a cycle (imports inside
functions included), and no source module is over 500 lines.

Reads the package's source files with Python's own parser; nothing is imported or run.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "datalog_platform"


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """Each of our modules -> the modules of ours it imports, wherever the import statement stands."""
    modules = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("datalog_platform"):
                targets = [node.module, *(f"{node.module}.{alias.name}" for alias in node.names)]
            elif isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            else:
                continue
            graph[name] |= {t for t in targets if t in modules and t != name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    found: list[list[str]] = []
    state: dict[str, int] = {}
    path: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                found.append([*path[path.index(nxt) :], nxt])
            elif nxt not in state:
                visit(nxt)
        path.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)
    return found


def test_no_import_cycle_between_our_modules() -> None:
    graph = import_graph()
    assert "datalog_platform.cli" in graph and "datalog_platform.defs.wiring" in graph["datalog_platform.cli"]
    assert cycles(graph) == []


def test_a_cycle_is_found_when_there_is_one() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c", "a"]]


def test_no_source_module_over_500_lines() -> None:
    sizes = {module_name(p): len(p.read_text().splitlines()) for p in PACKAGE.rglob("*.py")}
    assert {name: n for name, n in sizes.items() if n > 500} == {}


def test_the_linter_refuses_dagster_in_the_domain_logic() -> None:
    """ruff with the project's configuration flags `import dagster` in core/ and accepts it in defs/."""
    ruff = Path(sys.executable).with_name("ruff")
    source = "import dagster as dg\n\nprint(dg)\n"

    def check(where: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(ruff), "check", "--no-cache", "--stdin-filename", f"datalog_platform/{where}/probe.py", "-"],
            input=source,
            cwd=PACKAGE.parent,
            capture_output=True,
            text=True,
            check=False,
        )

    core, defs = check("core"), check("defs")
    assert core.returncode == 1 and "TID251" in core.stdout, core.stdout
    assert defs.returncode == 0, defs.stdout
