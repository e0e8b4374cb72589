"""The examples of the README and of the documentation pages, and every docstring
example, run as shown.

Blocks fenced ```python run here; fragments that need a framework or a data set to run
(a training config, a ``LightningModule`` excerpt) are fenced ```py.
"""

from __future__ import annotations

import pkgutil
import re
from pathlib import Path

import pytest
import torch
from docstring_examples import assert_examples_pass

import eqlosses

ROOT = Path(__file__).resolve().parents[2]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]


def _python_blocks() -> list[pytest.ParameterSet]:
    """Every Python block of the README and the documentation pages, named by place."""
    blocks = []
    for page in PAGES:
        found = re.findall(r"```python\n(.*?)```", page.read_text(), flags=re.DOTALL)
        name = page.relative_to(ROOT)
        blocks.extend(pytest.param(code, id=f"{name}:{index}") for index, code in enumerate(found))
    return blocks


@pytest.mark.parametrize("code", _python_blocks())
def test_example_runs(code: str, request: pytest.FixtureRequest) -> None:
    torch.manual_seed(0)
    exec(compile(code, request.node.callspec.id, "exec"), {})


def _library_modules() -> list[str]:
    return [info.name for info in pkgutil.walk_packages(eqlosses.__path__, prefix="eqlosses.")]


@pytest.mark.parametrize("name", _library_modules())
def test_docstring_examples(name: str) -> None:
    if name.startswith("eqlosses.integrations."):
        # an adapter needs its framework (the integrations extra)
        pytest.importorskip(name.split(".")[2])
    assert_examples_pass(name)
