"""Every docstring example of the lab runs as shown."""

from __future__ import annotations

import doctest
import importlib
import pkgutil

import pytest
from docstring_examples import assert_examples_pass

import eqlosses_lab


def _lab_modules() -> list[str]:
    return [
        info.name for info in pkgutil.walk_packages(eqlosses_lab.__path__, prefix="eqlosses_lab.")
    ]


def test_the_lab_has_docstring_examples() -> None:
    finder = doctest.DocTestFinder()
    examples = sum(
        len(test.examples)
        for name in _lab_modules()
        for test in finder.find(importlib.import_module(name))
    )
    assert examples >= 20  # the walk reaches the modules that carry them


@pytest.mark.parametrize("name", _lab_modules())
def test_docstring_examples(name: str) -> None:
    assert_examples_pass(name)
