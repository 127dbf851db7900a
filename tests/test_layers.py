"""The architecture holds: arrows point one way, no import cycle, small modules.

Layers (STYLE.md): the delivery core (everything a worker runs) never imports
the Celery glue (``tasks``) or the app layer; the glue never imports the app
layer; nothing needs a function-level import of our own code to dodge a cycle.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT

APP_LAYER = {
    "neoforge.api",
    "neoforge.console",
    "neoforge.cli",
    "neoforge.cli_policy",
    "neoforge.service",
    "neoforge.bulk",
    "neoforge.deadletters",
    "neoforge.embedded",
    "neoforge.devstack",
    "neoforge.flower",
    "neoforge.main",
    "neoforge.catcher",
    "neoforge.mailviewer",
    "neoforge.processes",
}


def _modules() -> dict[str, Path]:
    found = {}
    for package in ("neoforge", "tasks"):
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    return found


MODULES = _modules()


def _layer(module: str) -> str:
    if module.startswith("tasks"):
        return "glue"
    if any(module == app or module.startswith(app + ".") for app in APP_LAYER):
        return "app"
    return "core"


def _imports(path: Path, *, top_level: bool) -> set[str]:
    """Our modules imported by PATH, at module level (TOP_LEVEL) or inside functions."""
    tree = ast.parse(path.read_text())
    nodes = (
        tree.body
        if top_level
        else [n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)]
    )
    found: set[str] = set()
    for holder in nodes:
        for node in ast.walk(holder) if not top_level else [holder]:
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
            else:
                continue
            found |= {name for name in names if name in MODULES}
    return found


def test_layers_point_one_way() -> None:
    allowed = {"core": {"core"}, "glue": {"core", "glue"}, "app": {"core", "glue", "app"}}
    wrong = [
        f"{module} ({_layer(module)}) imports {target} ({_layer(target)})"
        for module, path in MODULES.items()
        for target in _imports(path, top_level=True)
        if _layer(target) not in allowed[_layer(module)]
    ]
    assert not wrong, wrong


def test_no_function_level_import_of_our_own_code() -> None:
    lazy = {
        module: sorted(found)
        for module, path in MODULES.items()
        if (found := _imports(path, top_level=False))
    }
    assert not lazy, lazy


def test_no_import_cycle_module_by_module() -> None:
    graph = {module: _imports(path, top_level=True) - {module} for module, path in MODULES.items()}
    cycles: list[list[str]] = []
    state: dict[str, int] = {}

    def visit(module: str, trail: list[str]) -> None:
        state[module] = 1
        for target in sorted(graph[module]):
            if state.get(target) == 1:
                cycles.append([*trail[trail.index(target) :], target])
            elif target not in state:
                visit(target, [*trail, target])
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert not cycles, cycles


def test_every_module_imports_on_its_own() -> None:
    """Each module imported first, in a fresh interpreter: no import order hides a cycle."""
    script = (
        "import importlib, sys\n"
        "failed = []\n"
        f"for name in {sorted(m for m in MODULES if m != 'neoforge.main')!r}:\n"
        "    ours = ('neoforge', 'tasks', 'celeryconfig')\n"
        "    for loaded in [m for m in sys.modules if m.split('.')[0] in ours]:\n"
        "        del sys.modules[loaded]\n"
        "    try:\n"
        "        importlib.import_module(name)\n"
        "    except Exception as exc:\n"
        "        failed.append(f'{name}: {type(exc).__name__}: {exc}')\n"
        "print('\\n'.join(failed))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "", done.stdout


@pytest.mark.parametrize("module", sorted(MODULES))
def test_modules_stay_small(module: str) -> None:
    lines = len(MODULES[module].read_text().splitlines())
    assert lines <= 400, f"{module} has {lines} lines: split it by job"
