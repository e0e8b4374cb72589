"""Large inputs with several intra-op threads: the blocks are shared out to threads.

The threaded path cuts smaller blocks than the serial one, so sums are grouped
differently; the results must agree with the serial path to rounding and be the same
from run to run whichever thread ran which block.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
import torch
from torch import nn

from eqlosses import EQL, EqualizedFocalLoss, EqualizedQualityFocalLoss, FocalLoss, SigmoidEQL
from eqlosses.functional import _fused

C = 81
ROWS = 1500  # 121,500 entries: several threaded blocks

CASES: dict[str, tuple[Callable[[], nn.Module], int, bool]] = {
    "sigmoid_eql": (lambda: SigmoidEQL(C, objectness=True), C + 1, False),
    "eql": (lambda: EQL([500 - 5 * k for k in range(C)], 600, 0.3), C, False),
    "efl": (lambda: EqualizedFocalLoss(C), C, False),
    "eqfl": (lambda: EqualizedQualityFocalLoss(C), C, True),
    "focal": (lambda: FocalLoss(C), C, False),
}


@pytest.fixture
def two_threads() -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


def _steps(name: str, dtype: torch.dtype, threads: int) -> list[list[torch.Tensor]]:
    build, columns, scored = CASES[name]
    torch.set_num_threads(threads)
    module = build()
    gen = torch.Generator().manual_seed(0)
    out = []
    for _ in range(3):
        logits = (3 * torch.randn(ROWS, columns, generator=gen)).to(dtype).requires_grad_()
        labels = torch.randint(0, C + 1, (ROWS,), generator=gen)
        labels[::4] = C
        labels[::9] = -100
        extra = (torch.rand(ROWS, generator=gen, dtype=dtype),) if scored else ()
        weight = torch.rand(ROWS, generator=gen, dtype=dtype)
        loss = module(logits, labels, *extra, weight=weight)
        loss.backward()
        stats = (
            [module.pos_grad.clone(), module.neg_grad.clone()]
            if hasattr(module, "pos_grad")
            else []
        )
        out.append([loss.detach(), logits.grad, *stats])
    return out


@pytest.mark.usefixtures("two_threads")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("name", list(CASES))
def test_threaded_blocks_agree_with_the_serial_path(name: str, dtype: torch.dtype) -> None:
    assert ROWS * C > _fused.THREADED_BLOCK_ELEMENTS * 3
    threaded = _steps(name, dtype, threads=2)
    serial = _steps(name, dtype, threads=1)
    tolerance = (
        {"rtol": 1e-5, "atol": 1e-7} if dtype == torch.float32 else {"rtol": 1e-12, "atol": 1e-14}
    )
    for got_step, want_step in zip(threaded, serial, strict=True):
        for got, want in zip(got_step, want_step, strict=True):
            torch.testing.assert_close(got, want, **tolerance)


@pytest.mark.usefixtures("two_threads")
@pytest.mark.parametrize("name", ["sigmoid_eql", "efl"])
def test_threaded_blocks_give_the_same_result_every_run(name: str) -> None:
    first = _steps(name, torch.float32, threads=2)
    for _ in range(3):
        again = _steps(name, torch.float32, threads=2)
        for got_step, want_step in zip(again, first, strict=True):
            for got, want in zip(got_step, want_step, strict=True):
                assert torch.equal(got, want)


@pytest.mark.usefixtures("two_threads")
def test_the_threaded_path_is_taken(monkeypatch: pytest.MonkeyPatch) -> None:
    # the tests above compare two paths, not one path with itself
    used: list[int] = []
    original = _fused._block_pool

    def spy(threads: int) -> object:
        used.append(threads)
        return original(threads)

    monkeypatch.setattr(_fused, "_block_pool", spy)
    _steps("efl", torch.float32, threads=2)
    assert used and set(used) == {2}
    used.clear()
    _steps("efl", torch.float32, threads=1)
    assert used == []
