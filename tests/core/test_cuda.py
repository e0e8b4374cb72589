"""Every loss on a CUDA device against the same step on the CPU (skipped without a GPU).

A CUDA step must give the CPU's loss, gradient and statistics, and must never make the
host wait for the device: ``torch.cuda.set_sync_debug_mode("error")`` turns any
synchronising call (``.item()``, ``nonzero``, a copy to the host) into an error.
``scripts/gpu_check.sh`` runs this file and the benchmark on a GPU machine.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import torch
from loss_cases import Case, loss_cases

from eqlosses import EQL, FederatedLoss

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

C = 11
N = 300
COUNTS = [900, 400, 200, 120, 60, 30, 15, 8, 4, 2, 1]


# The random losses draw on the logits' device, whose generator differs from the CPU's:
# drop_prob=1 and num_sample_classes=C make their draws certain, so both devices agree.
CASES = loss_cases(COUNTS, num_images=1000, drop_prob=1.0, sample_classes=C)


def _batches(case: Case, dtype: torch.dtype) -> list[tuple[torch.Tensor, ...]]:
    gen = torch.Generator().manual_seed(0)
    batches = []
    for _ in range(3):
        if case.pixels:
            logits = 3 * torch.randn(2, case.columns, 20, 30, generator=gen, dtype=dtype)
            labels = torch.randint(0, case.highest_label + 1, (2, 20, 30), generator=gen)
        else:
            logits = 3 * torch.randn(N, case.columns, generator=gen, dtype=dtype)
            labels = torch.randint(0, case.highest_label + 1, (N,), generator=gen)
        labels.view(-1)[::7] = -100
        weight = torch.rand(labels.shape, generator=gen, dtype=dtype)
        weight.view(-1)[::11] = 0.0
        score = torch.rand(labels.shape, generator=gen, dtype=dtype)
        batches.append((logits, labels, weight, score))
    return batches


@contextmanager
def _no_host_sync() -> Iterator[None]:
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        yield
    finally:
        torch.cuda.set_sync_debug_mode("default")


def _run(case: Case, device: str, dtype: torch.dtype, *, strict: bool) -> list[list[torch.Tensor]]:
    module = case.build().to(device)
    out = []
    for logits, labels, weight, score in _batches(case, dtype):
        z = logits.to(device).requires_grad_()
        extra = (score.to(device),) if case.scored else ()
        args = (z, labels.to(device), *extra)
        if strict:
            with _no_host_sync():
                loss = module(*args, weight=weight.to(device))
                loss.backward()
        else:
            loss = module(*args, weight=weight.to(device))
            loss.backward()
        assert z.grad is not None
        state = [
            v.detach().cpu() for v in module.state_dict().values() if isinstance(v, torch.Tensor)
        ]
        out.append([loss.detach().cpu(), z.grad.cpu(), *state])
    return out


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("name", list(CASES))
def test_a_cuda_step_matches_the_cpu_step(name: str, dtype: torch.dtype) -> None:
    case = CASES[name]
    want = _run(case, "cpu", dtype, strict=False)
    got = _run(case, "cuda", dtype, strict=True)
    tolerance = (
        {"rtol": 1e-10, "atol": 1e-12} if dtype == torch.float64 else {"rtol": 1e-4, "atol": 1e-6}
    )
    for got_step, want_step in zip(got, want, strict=True):
        for a, b in zip(got_step, want_step, strict=True):
            torch.testing.assert_close(a, b, **tolerance)


BAD_LABEL_SCRIPT = """
import torch
from eqlosses import {loss}
module = {loss}(5).cuda()
labels = torch.zeros(64, dtype=torch.long, device="cuda")
labels[7] = 9
module(torch.randn(64, 5, device="cuda", requires_grad=True), labels)
torch.cuda.synchronize()
"""


@pytest.mark.parametrize("loss", ["SigmoidEQL", "EqualizedFocalLoss", "SoftmaxEQL"])
def test_a_bad_label_fails_the_device_with_a_named_assertion(loss: str) -> None:
    # a device-side assertion leaves the CUDA context unusable: in a process of its own
    run = subprocess.run(
        [sys.executable, "-c", BAD_LABEL_SCRIPT.format(loss=loss)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode != 0
    assert "target: expected" in run.stderr + run.stdout, run.stderr[-2000:]


@pytest.mark.parametrize("name", ["eql_softmax", "federated"])
def test_a_cpu_generator_serves_cuda_logits(name: str) -> None:
    # the generator given is a CPU one; the draws on CUDA use a CUDA generator seeded from it
    build = {
        "eql_softmax": lambda: EQL(
            COUNTS,
            1000,
            0.05,
            activation="softmax",
            drop_prob=0.5,
            generator=torch.Generator().manual_seed(1),
        ),
        "federated": lambda: FederatedLoss(
            COUNTS, num_sample_classes=3, generator=torch.Generator().manual_seed(1)
        ),
    }[name]
    case = CASES[name]
    module = build().cuda()
    logits, labels, _, _ = _batches(case, torch.float32)[0]
    module(logits.cuda().requires_grad_(), labels.cuda()).backward()
    resumed = build().cuda()
    resumed.load_state_dict(module.state_dict())
    logits, labels, _, _ = _batches(case, torch.float32)[1]
    assert torch.equal(module(logits.cuda(), labels.cuda()), resumed(logits.cuda(), labels.cuda()))
