"""Large inputs with several intra-op threads: the sigmoid and focal kernels run their
blocks with one intra-op thread (no operation waits on the others at a barrier), so
their results are those of a one-thread run, bit for bit, and the thread count is as
it was afterwards."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import pytest
import torch
from torch import nn

from eqlosses import EQL, EqualizedFocalLoss, EqualizedQualityFocalLoss, FocalLoss, SigmoidEQL
from eqlosses.functional import _fused

C = 81
ROWS = 4000  # 324,000 entries: three blocks

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
def test_the_result_does_not_depend_on_the_thread_count(name: str, dtype: torch.dtype) -> None:
    assert ROWS * C > _fused.BLOCK_ELEMENTS  # several blocks
    two = _steps(name, dtype, threads=2)
    one = _steps(name, dtype, threads=1)
    for got_step, want_step in zip(two, one, strict=True):
        for got, want in zip(got_step, want_step, strict=True):
            assert torch.equal(got, want)


@pytest.mark.usefixtures("two_threads")
def test_the_blocks_run_on_one_thread_and_the_count_is_restored(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    inside: list[int] = []
    original = _fused._intra_op_threads

    @contextlib.contextmanager
    def recording(threads: int | None) -> Iterator[None]:
        with original(threads):
            inside.append(torch.get_num_threads())
            yield

    monkeypatch.setattr(_fused, "_intra_op_threads", recording)
    build, columns, _ = CASES["efl"]
    logits = torch.randn(ROWS, columns, requires_grad=True)
    build()(logits, torch.randint(0, C + 1, (ROWS,))).backward()
    assert inside == [1]
    assert torch.get_num_threads() == 2


@pytest.mark.usefixtures("two_threads")
def test_the_thread_count_is_restored_when_a_block_fails() -> None:
    with pytest.raises(RuntimeError, match="inside"), _fused._intra_op_threads(1):
        assert torch.get_num_threads() == 1
        raise RuntimeError("inside")
    assert torch.get_num_threads() == 2
