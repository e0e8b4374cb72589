"""Runs the docstring examples of a module, the way the docs tests check them."""

from __future__ import annotations

import doctest
import importlib

import torch


def assert_examples_pass(name: str) -> None:
    """Run every docstring example in module ``name`` (seeded, ``torch`` and the module's
    names in scope); fail with the count of those that did not pass."""
    module = importlib.import_module(name)
    torch.manual_seed(0)
    finder = doctest.DocTestFinder()
    runner = doctest.DocTestRunner(optionflags=doctest.NORMALIZE_WHITESPACE)
    for test in finder.find(module, globs={"torch": torch, **vars(module)}):
        runner.run(test)
    assert runner.failures == 0, f"{runner.failures} docstring example(s) failed in {name}"
