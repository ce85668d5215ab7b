"""Where shared code lives: test modules share helpers (tests/helpers), never each other."""

from __future__ import annotations

import ast
from pathlib import Path

from tests.helpers.jobs import ROOT


def imported_modules(path: Path) -> set[str]:
    """Every module a file imports, at its top or inside a function."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found |= {node.module, *(f"{node.module}.{alias.name}" for alias in node.names)}
    return found


def test_no_test_module_imports_another_test_module():
    offenders = {
        f"{path.relative_to(ROOT)} imports {name}"
        for path in (ROOT / "tests").rglob("*.py")
        for name in imported_modules(path)
        if name.startswith("tests.") and not name.startswith("tests.helpers")
    }
    assert not offenders, sorted(offenders)
