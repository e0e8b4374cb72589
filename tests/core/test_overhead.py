"""A small head's fixed cost: the tensor operations one training step dispatches.

Timings of a millisecond are too noisy for a test, but the number of operations a step
dispatches is exact, and on a small head each one costs several microseconds whatever
its size. The budgets are the current counts with a little room; a change that needs
more operations should say why and raise them. (What a step reads from an accelerator
is counted in test_device_path.py.)
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from eqlosses import EQL, EqualizedFocalLoss, EqualizedQualityFocalLoss, SigmoidEQL, SoftmaxEQL

ROWS = 16
C = 80


class _CountOperations(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.counts: Counter[str] = Counter()

    def __torch_dispatch__(
        self,
        func: Any,
        types: Any,
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
    ) -> Any:
        self.counts[str(func.overloadpacket)] += 1
        return func(*args, **(kwargs or {}))


# name: (module factory, logit columns, highest label, takes a quality score, budget)
CASES: dict[str, tuple[Callable[[], nn.Module], int, int, bool, int]] = {
    "sigmoid_eql": (lambda: SigmoidEQL(C, objectness=True), C + 1, C, False, 66),
    "eql": (lambda: EQL([100 - k for k in range(C)], 200, 0.3), C, C, False, 66),
    "efl": (lambda: EqualizedFocalLoss(C), C, C, False, 98),
    "eqfl": (lambda: EqualizedQualityFocalLoss(C), C, C, True, 113),
    "softmax_eql": (lambda: SoftmaxEQL(C), C, C - 1, False, 50),
}


def _step_operations(name: str) -> Counter[str]:
    build, columns, highest, scored, _ = CASES[name]
    module = build()
    gen = torch.Generator().manual_seed(0)
    labels = torch.randint(0, highest + 1, (ROWS,), generator=gen)
    extra = (torch.rand(ROWS, generator=gen),) if scored else ()

    def step() -> None:
        logits = torch.randn(ROWS, columns, generator=gen).requires_grad_()
        module(logits, labels, *extra).backward()

    step()  # warm: the counted step is a later one, with statistics in place
    mode = _CountOperations()
    with mode:
        step()
    # the step's own inputs are made inside the counted region
    mode.counts["aten.randn"] -= 1
    return mode.counts


@pytest.mark.parametrize("name", list(CASES))
def test_a_small_head_step_stays_within_its_operation_budget(name: str) -> None:
    counts = _step_operations(name)
    total = sum(counts.values())
    budget = CASES[name][-1]
    assert total <= budget, f"{total} operations (budget {budget}): {dict(counts.most_common())}"
