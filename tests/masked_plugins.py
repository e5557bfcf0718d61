"""A model whose loss is a mean over masked tokens (a padding mask), for the micro_batch
check's `weight`: micro-batches then weigh by their tokens, not their rows."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn

from gradaudit import Batch, Forward, hookimpl

CONFIGURED_ROWS = 12  # the tests' batches.size, hard-coded by the buggy gradient


class MaskedRegression(nn.Module):
    """Per token: y_hat = tanh(x W1 + b1) W2; loss = sum over unmasked tokens of the squared
    error / their count (rows of x: [tokens, features], mask: [tokens])."""

    def __init__(
        self, shapes: Mapping[str, tuple[int, ...]], classes: Any = None, hidden: int = 8
    ) -> None:
        super().__init__()
        _, features = shapes["x"]
        self.W1 = nn.Parameter(torch.randn(features, hidden) / features**0.5)
        self.b1 = nn.Parameter(torch.randn(hidden) * 0.1)
        self.W2 = nn.Parameter(torch.randn(hidden, 1) / hidden**0.5)

    def forward(self, x: torch.Tensor, y: torch.Tensor, mask: torch.Tensor) -> Forward:
        h = torch.tanh(x @ self.W1 + self.b1)
        out = h @ self.W2
        loss = ((out.squeeze(-1) - y) ** 2 * mask).sum() / mask.sum()
        return Forward(loss, {"out": out, "h": h})


def _backward(
    model: nn.Module, batch: Batch, forward: Forward, count: torch.Tensor
) -> dict[str, torch.Tensor]:
    x, y, mask = batch["x"], batch["y"], batch["mask"]
    out, h = forward.intermediates["out"], forward.intermediates["h"]
    dout = (2.0 * (out.squeeze(-1) - y) * mask / count).unsqueeze(-1)
    hidden, features = h.shape[-1], x.shape[-1]
    dh = dout @ model.get_parameter("W2").T
    dpre = dh * (1 - h * h)
    return {
        "out": dout,
        "h": dh,
        "W2": h.reshape(-1, hidden).T @ dout.reshape(-1, 1),
        "W1": x.reshape(-1, features).T @ dpre.reshape(-1, hidden),
        "b1": dpre.sum((0, 1)),
    }


def masked_backward(
    model: nn.Module, batch: Batch, forward: Forward, **options: Any
) -> dict[str, torch.Tensor]:
    return _backward(model, batch, forward, batch["mask"].sum())


def configured_rows_backward(
    model: nn.Module, batch: Batch, forward: Forward, **options: Any
) -> dict[str, torch.Tensor]:
    """The slip: the token count as the mask's density times the configured batch size,
    which is the batch's count on batches of CONFIGURED_ROWS rows only."""
    mask = batch["mask"]
    count = mask.to(batch["x"].dtype).mean() * CONFIGURED_ROWS * mask.shape[1]
    return _backward(model, batch, forward, count)


@hookimpl
def register_models(register: Callable[[str, Any], None]) -> None:
    register("masked-regression", MaskedRegression)


@hookimpl
def register_gradients(register: Callable[[str, Any], None]) -> None:
    register("masked-regression-manual", masked_backward)
    register("masked-regression-bug-configured-rows", configured_rows_backward)
