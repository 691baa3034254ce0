"""The package's import structure: layers only import downwards, and no module cycle exists.

Every ``import medistill...`` in every module counts, also those inside functions: a lazy
import is still a dependency. The layers, lowest first (docs/DESIGN.md, "Layers"):
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "medistill"

LAYERS = [
    {"__init__", "errors", "fileio", "locking", "console", "distribute", "runtimes"},
    {"data"},
    {"networks", "losses", "boxes"},
    {"export", "teachers"},
    {"predict"},
    {"evaluate"},
    {"train"},
    {"distill"},
    {"cli", "__main__"},
]


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "medistill":
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name.split(".")[0] == "medistill")
    return found


def _graph() -> dict[str, set[str]]:
    modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph = {}
    for name, path in modules.items():
        targets = {m for m in _imports(path) if m in modules}
        # a submodule importing its own parent package (for a sibling) is not a dependency on it
        graph[name] = {t for t in targets if t != name and not name.startswith(t + ".")}
    return graph


def _layer(module: str) -> int:
    top = module.split(".")[1] if "." in module else "__init__"
    for index, names in enumerate(LAYERS):
        if top in names:
            return index
    raise AssertionError(f"{module}: its package {top!r} has no layer in tests/test_layers.py; add it")


def test_every_import_goes_down_or_stays_in_its_package():
    upward = []
    for module, targets in _graph().items():
        for target in targets:
            same_package = module.split(".")[:2] == target.split(".")[:2]
            if not same_package and _layer(target) > _layer(module):
                upward.append(f"{module} -> {target}")
    assert upward == [], "lower layers import higher ones:\n" + "\n".join(sorted(upward))


def test_no_import_cycle():
    graph = _graph()
    state: dict[str, int] = {}
    cycles: list[list[str]] = []

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycles.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, stack + [nxt])
        state[node] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert cycles == [], "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_the_checker_sees_a_lazy_upward_import(tmp_path):
    """The test itself works: an import inside a function is found."""
    module = tmp_path / "m.py"
    module.write_text("def f():\n    from medistill.cli import main\n")
    assert "medistill.cli" in _imports(module)
