"""Where shared code lives: the plumbing every entry point shares is in src/config.py, entry
points are only entry points, and test modules share tests/helpers, never each other."""

from __future__ import annotations

import ast
import subprocess
import sys
from functools import cache
from pathlib import Path

import pytest

from tests.helpers.jobs import ROOT, child_env

SRC = ROOT / "src"


@cache
def imported_modules(path: Path) -> frozenset[str]:
    """Every module a file imports, at its top or inside a function."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found |= {node.module, *(f"{node.module}.{alias.name}" for alias in node.names)}
    return frozenset(found)


def is_entry_point(path: Path) -> bool:
    """`python -m <module>` runs it: a package's __main__.py or a module with a __main__ block."""
    return path.name == "__main__.py" or 'if __name__ == "__main__":' in path.read_text()


def python_files(*folders: Path) -> list[Path]:
    return sorted(p for folder in folders for p in folder.rglob("*.py"))


def test_no_test_module_imports_another_test_module():
    offenders = {
        f"{path.relative_to(ROOT)} imports {name}"
        for path in python_files(ROOT / "tests")
        for name in imported_modules(path)
        if name.startswith("tests.") and not name.startswith("tests.helpers")
    }
    assert not offenders, sorted(offenders)


def test_nothing_imports_the_train_entry_point():
    """src/train.py is `python -m src.train` only; the job itself is src.training."""
    offenders = [
        str(path.relative_to(ROOT))
        for path in python_files(SRC, ROOT / "tests", ROOT / "hydra_plugins", ROOT / "experiments")
        if {"src.train", "src.train.train", "src.train.main"} & imported_modules(path)
    ]
    assert not offenders, offenders


def test_only_entry_points_read_the_hydra_singleton():
    """Library code takes the job's choices as an argument (src.config.run_tags)."""
    offenders = [
        str(path.relative_to(ROOT))
        for path in python_files(SRC)
        if "HydraConfig.get(" in path.read_text()
        and not is_entry_point(path)
        and path != SRC / "cli.py"  # the entry points' shared wrapper
    ]
    assert not offenders, offenders


def test_only_the_tracking_context_sets_the_process_tracking_uri():
    """mlflow.set_tracking_uri is process-wide: library code borrows a store through
    src.tracking.store.tracking, which puts the caller's URI back."""
    offenders = [
        str(path.relative_to(ROOT))
        for path in python_files(SRC)
        if "mlflow.set_tracking_uri(" in path.read_text() and path != SRC / "tracking" / "store.py"
    ]
    assert not offenders, offenders


def test_no_two_packages_of_src_import_each_other():
    """The package-level import graph (src.x.* collapsed to src.x) has no cycle."""
    graph: dict[str, set[str]] = {}
    for path in python_files(SRC):
        parts = path.relative_to(ROOT).with_suffix("").parts
        package = ".".join(parts[:2])
        targets = {
            ".".join(n.split(".")[:2]) for n in imported_modules(path) if n.startswith("src.")
        }
        graph.setdefault(package, set()).update(targets - {package})

    def reaches(start: str, goal: str, seen: set[str]) -> bool:
        for step in graph.get(start, ()):
            if step == goal or (step not in seen and reaches(step, goal, seen | {step})):
                return True
        return False

    cycles = sorted(p for p in graph if reaches(p, p, {p}))
    assert not cycles, cycles


ENTRY_POINTS = [
    "src.train",
    "src.eval",
    "src.predict",
    "src.export",
    "src.posthoc",
    "src.explain",
    "src.similarity",
    "src.similarity.report",
    "src.report",
    "src.advise",
    "src.bench",
    "src.tracking.ui",
]


def test_every_entry_point_is_listed_here():
    found = {
        ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__main__")
        for path in python_files(SRC)
        if is_entry_point(path)
    }
    assert found == set(ENTRY_POINTS)


@pytest.mark.slow
@pytest.mark.parametrize("module", ENTRY_POINTS)
def test_every_entry_point_answers_help(module):
    done = subprocess.run(
        [sys.executable, "-m", module, "--help"],
        cwd=ROOT,
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "Powered by Hydra" in done.stdout or "usage:" in done.stdout, done.stdout[-2000:]
    output = done.stdout + done.stderr
    assert "Traceback" not in output and "Error" not in output
    for key in REQUIRED.get(module, []):  # what a user must give is named
        assert key in output, key
    for base in ("_datamodule", "_medmnist", "_timm"):  # base files are no options
        assert base not in output


# Keys an entry point's --help must name: what it cannot run without, or its main choices.
REQUIRED = {
    "src.advise": ["dataset", "budget", "dataset.source.root"],
    "src.eval": ["run_id", "ckpt_path"],
    "src.predict": ["images", "run_id"],
    "src.export": ["run_id", "formats"],
    "src.posthoc": ["method", "run_id", "parent_run_id"],
    "src.explain": ["run_id", "cam", "layer", "split"],
    "src.train": ["dataset", "dataset.source.root"],
    "src.similarity": ["backbone", "dataset"],
}


def test_strategies_are_policies():
    """A strategy decides (what trains, when, at which lr, which pipeline); it never runs
    Lightning itself and never imports the computation (src/pipelines, src/caching), which the
    road (src/training.py) builds from the import path the strategy names."""
    import re

    runs_lightning = re.compile(r"trainer\.(fit|validate|test|predict)\(")
    offenders = [
        f"{path.relative_to(ROOT)}: {name}"
        for path in python_files(SRC / "strategies")
        for name in imported_modules(path)
        if name.startswith(("src.pipelines", "src.caching"))
    ] + [
        str(path.relative_to(ROOT))
        for path in python_files(SRC / "strategies")
        if runs_lightning.search(path.read_text())
    ]
    assert not offenders, offenders
    assert "trainer.fit(" not in (SRC / "training.py").read_text()  # the pipeline fits


# `--help` ends in a SystemExit like every refusal: answering it must not import Lightning or
# torch (was: src.cli asked whether the exit was Lightning's SIGTERMException by importing it,
# 10-20 s per --help on a shared CPU).
HELP_IMPORTS = """
import runpy, sys
sys.argv = [sys.argv[1], "--help"]
try:
    runpy.run_module(sys.argv[0], run_name="__main__")
except SystemExit as stop:
    print(stop.code, sorted(m for m in ("torch", "lightning") if m in sys.modules))
"""


@pytest.mark.parametrize("module", [m for m in ENTRY_POINTS if m not in ("src.bench",)])
def test_help_imports_neither_torch_nor_lightning(module):
    done = subprocess.run(
        [sys.executable, "-c", HELP_IMPORTS, module],
        cwd=ROOT,
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.stdout.strip().splitlines()[-1] == "0 []", done.stdout[-500:] + done.stderr[-1500:]
