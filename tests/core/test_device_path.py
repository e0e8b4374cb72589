"""The path a training step takes on an accelerator, run on CPU tensors.

On the CPU the value checks read the labels on the host (free there, and the error can
quote the bad value). On any other device a read of a tensor value would make the host
wait for the device, so the checks become device-side assertions and nothing is read.
Emptying ``eqlosses.checks.HOST_CHECKED_DEVICES`` makes CPU tensors take that path, so
this file counts, exactly, what a step would read from an accelerator: the operations
the dispatcher sees (``aten._local_scalar_dense`` behind ``.item()``/``bool()``/
``float()``, ``nonzero`` without a size, ``equal``) and the conversions it does not see
(``Tensor.tolist``, ``Tensor.numpy``).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import torch
from loss_cases import Case, loss_cases
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

import eqlosses.checks

C = 7
N = 24
COUNTS = [300, 120, 60, 20, 9, 3, 1]

HOST_READS = {"aten._local_scalar_dense", "aten.item", "aten.nonzero", "aten.equal"}


CASES = loss_cases(COUNTS, num_images=400, drop_prob=0.9, sample_classes=3)
NAMES = list(CASES)


class _Count(TorchDispatchMode):
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


@contextmanager
def _counted(monkeypatch: pytest.MonkeyPatch) -> Iterator[Counter[str]]:
    """Count the operations of the block, and the host conversions the dispatcher does
    not see."""
    mode = _Count()
    for method in ("tolist", "numpy"):
        original = getattr(torch.Tensor, method)

        def counting(self: torch.Tensor, *args: Any, _m: str = method, _f: Any = original) -> Any:
            mode.counts[f"Tensor.{_m}"] += 1
            return _f(self, *args)

        monkeypatch.setattr(torch.Tensor, method, counting)
    with mode:
        yield mode.counts
    monkeypatch.undo()


@pytest.fixture
def device_path(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(eqlosses.checks, "HOST_CHECKED_DEVICES", frozenset())


def _batch(
    case: Case, gen: torch.Generator, *, ignored: bool, weighted: bool, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor, tuple[torch.Tensor, ...], dict[str, torch.Tensor]]:
    if case.pixels:
        logits = torch.randn(2, case.columns, 3, 4, generator=gen, dtype=dtype)
        labels = torch.randint(0, case.highest_label + 1, (2, 3, 4), generator=gen)
    else:
        logits = torch.randn(N, case.columns, generator=gen, dtype=dtype)
        labels = torch.randint(0, case.highest_label + 1, (N,), generator=gen)
    if ignored:
        labels.view(-1)[::5] = -100
        # what an ignored row holds must reach nothing, on either path
        rows = logits.movedim(1, -1) if case.pixels else logits
        rows[labels == -100] = float("nan")
        rows[..., 0][labels == -100] = float("inf")
    extra = (torch.rand(labels.shape, generator=gen, dtype=dtype),) if case.scored else ()
    kw = {"weight": torch.rand(labels.shape, generator=gen, dtype=dtype)} if weighted else {}
    return logits, labels, extra, kw


def _training_step(
    module: nn.Module,
    logits: torch.Tensor,
    labels: torch.Tensor,
    extra: tuple[torch.Tensor, ...],
    kw: dict[str, torch.Tensor],
) -> tuple[torch.Tensor, torch.Tensor]:
    z = logits.clone().requires_grad_()
    loss = module(z, labels, *extra, **kw)
    loss.backward()
    assert z.grad is not None
    return loss.detach(), z.grad


def _reads(counts: Counter[str]) -> dict[str, int]:
    seen = {
        name: n for name, n in counts.items() if name in HOST_READS or name.startswith("Tensor.")
    }
    return {name: n for name, n in seen.items() if n}


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.usefixtures("device_path")
def test_a_training_step_reads_nothing_from_the_device(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    case = CASES[name]
    module = case.build()
    gen = torch.Generator().manual_seed(0)
    _training_step(module, *_batch(case, gen, ignored=False, weighted=False, dtype=torch.float32))
    batch = _batch(case, gen, ignored=True, weighted=False, dtype=torch.float32)
    with _counted(monkeypatch) as counts:
        _training_step(module, *batch)
    assert _reads(counts) == {}, dict(counts)
    if name not in {"focal"}:
        assert counts["aten._assert_async"] >= 1  # the label check is still there


@pytest.mark.parametrize("name", ["sigmoid_eql", "softmax_eql", "efl"])
def test_the_count_sees_the_host_path_reads(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # the counter works: on the CPU's own path the label check reads the labels
    case = CASES[name]
    gen = torch.Generator().manual_seed(0)
    batch = _batch(case, gen, ignored=True, weighted=False, dtype=torch.float32)
    with _counted(monkeypatch) as counts:
        _training_step(case.build(), *batch)
    assert _reads(counts).get("Tensor.tolist", 0) >= 1


@pytest.mark.parametrize("weighted", [False, True], ids=["unweighted", "weighted"])
@pytest.mark.parametrize("ignored", [False, True], ids=["all-rows", "ignored-rows"])
@pytest.mark.parametrize("name", NAMES)
def test_the_device_path_trains_like_the_host_path(
    name: str, ignored: bool, weighted: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    case = CASES[name]
    results = []
    for host in (True, False):
        if not host:
            monkeypatch.setattr(eqlosses.checks, "HOST_CHECKED_DEVICES", frozenset())
        torch.manual_seed(0)  # the same random source for the losses that draw
        module = case.build().double()
        gen = torch.Generator().manual_seed(1)
        steps = []
        for _ in range(3):
            batch = _batch(case, gen, ignored=ignored, weighted=weighted, dtype=torch.float64)
            steps.append(_training_step(module, *batch))
        results.append(
            (
                steps,
                {
                    k: v.clone()
                    for k, v in module.state_dict().items()
                    if isinstance(v, torch.Tensor)
                },
            )
        )
    (host_steps, host_state), (device_steps, device_state) = results
    for (loss_h, grad_h), (loss_d, grad_d) in zip(host_steps, device_steps, strict=True):
        torch.testing.assert_close(loss_d, loss_h, rtol=1e-12, atol=1e-15)
        torch.testing.assert_close(grad_d, grad_h, rtol=1e-12, atol=1e-15)
    for key, value in host_state.items():
        torch.testing.assert_close(device_state[key], value, rtol=1e-12, atol=1e-15)


BAD_INPUTS: dict[str, tuple[str, Callable[[Case], dict[str, Any]]]] = {
    "label": ("target", lambda case: {"labels": case.highest_label + 1}),
    "weight": ("weight", lambda case: {"weight": -1.0}),
}


@pytest.mark.parametrize("bad", list(BAD_INPUTS))
@pytest.mark.parametrize("name", [n for n in NAMES if n != "softmax_eql_per_pixel"])
@pytest.mark.usefixtures("device_path")
def test_device_assertions_name_the_argument(name: str, bad: str) -> None:
    case = CASES[name]
    argument, make = BAD_INPUTS[bad]
    gen = torch.Generator().manual_seed(2)
    logits, labels, extra, _ = _batch(case, gen, ignored=False, weighted=False, dtype=torch.float32)
    change = make(case)
    kw: dict[str, torch.Tensor] = {}
    if "labels" in change:
        labels[3] = change["labels"]
    else:
        weight = torch.ones(N)
        weight[3] = change["weight"]
        kw["weight"] = weight
    module = case.build()
    before = {k: v.clone() for k, v in module.state_dict().items() if isinstance(v, torch.Tensor)}
    # torch._assert_async raises at once on the CPU; on an accelerator it fails the
    # device's next synchronisation with the same message
    with pytest.raises(RuntimeError, match=rf"^{argument}: expected"):
        module(logits.requires_grad_(), labels, *extra, **kw)
    for key, value in module.state_dict().items():
        if isinstance(value, torch.Tensor):
            assert torch.equal(value, before[key]), key


@pytest.mark.usefixtures("device_path")
def test_device_assertion_of_a_quality_score() -> None:
    case = CASES["eqfl"]
    gen = torch.Generator().manual_seed(3)
    logits, labels, (score,), _ = _batch(
        case, gen, ignored=False, weighted=False, dtype=torch.float32
    )
    labels[:] = 0
    score[2] = 1.5
    with pytest.raises(RuntimeError, match=r"^score: expected values in \[0, 1\]"):
        case.build()(logits, labels, score)


@pytest.mark.usefixtures("device_path")
def test_device_assertion_of_an_avg_factor() -> None:
    case = CASES["efl"]
    gen = torch.Generator().manual_seed(4)
    logits, labels, _, _ = _batch(case, gen, ignored=False, weighted=False, dtype=torch.float32)
    with pytest.raises(RuntimeError, match=r"^avg_factor: expected a finite number > 0"):
        case.build()(logits, labels, avg_factor=torch.tensor(-1.0))


def _few_classes(batch: Any) -> Any:
    """One class and background rows: the federated loss then draws most of its classes."""
    logits, labels, extra, kw = batch
    labels = torch.where(torch.arange(labels.numel()) < 2, 0, C - 1)
    return logits, labels, extra, kw


@pytest.mark.parametrize("name", ["eql_softmax", "federated"])
def test_a_resumed_loss_draws_what_the_uninterrupted_one_draws(name: str) -> None:
    case = CASES[name]
    gen = torch.Generator().manual_seed(5)
    batches = [
        _batch(case, gen, ignored=True, weighted=False, dtype=torch.float64) for _ in range(4)
    ]
    running = case.build().double()
    for batch in batches[:2]:
        _training_step(running, *batch)
    checkpoint = running.state_dict()
    resumed = case.build().double()  # another random source until the checkpoint is loaded
    resumed.load_state_dict(checkpoint)
    for batch in batches[2:]:
        want = _training_step(running, *batch)
        got = _training_step(resumed, *batch)
        assert torch.equal(got[0], want[0])
        assert torch.equal(got[1], want[1])


@pytest.mark.parametrize("name", ["eql_softmax", "federated"])
def test_without_the_checkpointed_draws_the_loss_differs(name: str) -> None:
    # the check above can fail: a fresh random source gives other draws
    case = CASES[name]
    gen = torch.Generator().manual_seed(5)
    batch = _few_classes(_batch(case, gen, ignored=False, weighted=False, dtype=torch.float64))
    losses = set()
    for seed in range(4):
        torch.manual_seed(seed)
        losses.add(float(_training_step(case.build().double(), *batch)[0]))
    assert len(losses) > 1
