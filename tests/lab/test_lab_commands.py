"""The lab's commands on an installation without the lab extra, and the lab's layout: the
core's public API only, no import cycle."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

import eqlosses
import eqlosses.functional
import eqlosses.losses
from eqlosses_lab.cli import LAB_MODULES

SRC = Path(__file__).resolve().parents[2] / "src"
LAB = SRC / "eqlosses_lab"
PUBLIC_CORE = {"eqlosses", "eqlosses.functional", "eqlosses.losses"}

# Runs `python -m eqlosses ARGS` with the lab extra's packages made absent: a path finder
# that finds none of them, the way Python sees a package that is not installed.
WITHOUT_LAB = """
import importlib.machinery, runpy, sys
BLOCKED = set(sys.argv[1].split(","))
class WithoutLab(importlib.machinery.PathFinder):
    @classmethod
    def find_spec(cls, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            return None
        return super().find_spec(name, path, target)
sys.meta_path[sys.meta_path.index(importlib.machinery.PathFinder)] = WithoutLab
sys.argv = ["eqlosses", *sys.argv[2:]]
runpy.run_module("eqlosses", run_name="__main__", alter_sys=True)
"""


def _without_lab(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")]),
    }
    return subprocess.run(
        [sys.executable, "-c", WITHOUT_LAB, ",".join(sorted(LAB_MODULES)), *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        timeout=120,
    )


def test_the_blocker_really_hides_the_lab_extra(tmp_path: Path) -> None:
    code = "import importlib.util as u; print(u.find_spec('numpy'), u.find_spec('matplotlib'))"
    script = WITHOUT_LAB.replace(
        'runpy.run_module("eqlosses", run_name="__main__", alter_sys=True)', code
    )
    done = subprocess.run(
        [sys.executable, "-c", script, ",".join(sorted(LAB_MODULES))],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=60,
    )
    assert done.stdout.split() == ["None", "None"], done.stderr


def test_help_lists_the_commands_without_the_lab_extra(tmp_path: Path) -> None:
    done = _without_lab("--help", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "compare" in done.stdout and "benchmark" in done.stdout
    assert "pip install 'eqlosses[lab]'" in done.stdout
    for command in ("compare", "benchmark"):
        done = _without_lab(command, "--help", cwd=tmp_path)
        assert done.returncode == 0, done.stderr
        assert "--losses" in done.stdout


def test_compare_without_the_lab_extra_names_it(tmp_path: Path) -> None:
    done = _without_lab("compare", "--epochs", "1", "--seeds", "0", cwd=tmp_path)
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    message = [line for line in done.stderr.splitlines() if line.startswith("eqlosses compare:")]
    assert len(message) == 1
    assert "pip install 'eqlosses[lab]'" in message[0] and "numpy" in message[0]
    assert not (tmp_path / "runs").exists()


def _imports(path: Path) -> list[tuple[str, int]]:
    """(absolute module imported, line) for every import in ``path``, at any depth."""
    package = ".".join(path.relative_to(SRC).with_suffix("").parts)
    if path.name == "__init__.py":
        package = package.removesuffix(".__init__")
    else:
        package = package.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parts, base]) if base else ".".join(parts)
            found.append((base, node.lineno))
            # `from package import module` imports the module too
            found += [(f"{base}.{alias.name}", node.lineno) for alias in node.names]
    return found


def _lab_modules() -> dict[str, Path]:
    modules = {}
    for path in LAB.rglob("*.py"):
        name = ".".join(path.relative_to(SRC).with_suffix("").parts)
        modules[name.removesuffix(".__init__")] = path
    return modules


def test_the_lab_uses_the_public_api_of_the_core_only() -> None:
    assert {"StatisticsLoss", "SigmoidEQL"} <= set(eqlosses.__all__)
    private = []
    for name, path in _lab_modules().items():
        for module, line in _imports(path):
            if module.split(".")[0] != "eqlosses":
                continue
            importable = module in PUBLIC_CORE or (
                module.rpartition(".")[0] in PUBLIC_CORE
                and module.rpartition(".")[2]
                in vars(sys.modules[module.rpartition(".")[0]]).get("__all__", ())
            )
            if not importable:
                private.append(f"{name}:{line} imports {module}")
    assert private == []


def test_no_import_cycle_among_the_lab_modules() -> None:
    modules = _lab_modules()
    graph = {
        name: {m for m, _ in _imports(path) if m in modules and m != name}
        for name, path in modules.items()
    }
    # a package's __init__ is reached from its modules by Python itself, not a cycle
    for name in graph:
        graph[name] = {m for m in graph[name] if not name.startswith(m + ".")}
    cycles = []
    state: dict[str, int] = {}

    def visit(node: str, trail: list[str]) -> None:
        state[node] = 1
        for target in sorted(graph[node]):
            if state.get(target) == 1:
                cycles.append(" -> ".join([*trail[trail.index(target) :], target]))
            elif target not in state:
                visit(target, [*trail, target])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    assert cycles == []


@pytest.mark.parametrize("name", ["eqlosses.functional", "eqlosses.losses"])
def test_public_core_modules_declare_their_names(name: str) -> None:
    # the public-API check above reads __all__; a core module without one would pass
    # everything through
    assert vars(sys.modules[name]).get("__all__")
