"""log_softmax along any `dim`, with a hand-written backward:
dx = g - exp(y) * sum(g, dim), y = log_softmax(x, dim)."""

from __future__ import annotations

from typing import Any

import torch


class LogSoftmaxFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, dim: int = -1) -> torch.Tensor:
        y = x - torch.logsumexp(x, dim, keepdim=True)
        ctx.save_for_backward(y)
        ctx.dim = dim
        return y

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        (y,) = ctx.saved_tensors
        return grad - torch.exp(y) * grad.sum(ctx.dim, keepdim=True), None


def log_softmax(x: torch.Tensor, dim: int = -1) -> torch.Tensor:
    return LogSoftmaxFunction.apply(x, dim)  # type: ignore[no-untyped-call,no-any-return]


def log_softmax_reference(x: torch.Tensor, dim: int = -1) -> torch.Tensor:
    return torch.log_softmax(x, dim)
