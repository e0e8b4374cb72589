"""torch.compile around a model and each loss: same loss, gradient and statistics as eager."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import eqlosses

C = 5


def _losses() -> dict[str, nn.Module]:
    return {
        "sigmoid_eql": eqlosses.SigmoidEQL(C),
        "softmax_eql": eqlosses.SoftmaxEQL(C),
        "efl": eqlosses.EqualizedFocalLoss(C),
        "eql": eqlosses.EQL([50, 20, 5, 2, 1], 60, threshold=0.1),
    }


@pytest.mark.parametrize("name", list(_losses()))
def test_compiled_step_matches_eager(name: str) -> None:
    torch.manual_seed(0)
    inputs = torch.randn(3, 16, 8)
    labels = torch.randint(0, C + 1, (3, 16))
    if name == "softmax_eql":
        labels = labels.clamp_max(C - 1)

    def run(compiled: bool) -> tuple[list[torch.Tensor], torch.Tensor, torch.Tensor]:
        torch.manual_seed(1)
        model = nn.Linear(8, C)
        loss_fn = _losses()[name]

        def step(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            out: torch.Tensor = loss_fn(model(x), y)
            return out

        fn = torch.compile(step, backend="aot_eager") if compiled else step
        losses = []
        for k in range(3):
            model.zero_grad()
            loss = fn(inputs[k], labels[k])
            loss.backward()
            losses.append(loss.detach())
        assert model.weight.grad is not None
        return losses, model.weight.grad.clone(), loss_fn.statistics.pos_grad.clone()

    torch._dynamo.reset()
    eager_losses, eager_grad, eager_stats = run(False)
    compiled_losses, compiled_grad, compiled_stats = run(True)
    torch.testing.assert_close(torch.stack(compiled_losses), torch.stack(eager_losses))
    torch.testing.assert_close(compiled_grad, eager_grad)
    torch.testing.assert_close(compiled_stats, eager_stats)
