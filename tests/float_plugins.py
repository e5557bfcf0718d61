"""Float-input models for the core-contract tests: a regression MLP audited with the
`random` data plugin, and misbehaving variants (plain tensors, plugins that exit)."""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import time
from collections.abc import Callable, Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from gradaudit import Batch, Forward, hookimpl


class Regression(nn.Module):
    """y_hat = tanh(x W1 + b1) W2; loss = mean squared error; weights as nn.Parameter."""

    def __init__(
        self, shapes: Mapping[str, tuple[int, ...]], classes: Any = None, hidden: int = 16
    ) -> None:
        super().__init__()
        (features,) = shapes["x"]
        self.W1 = nn.Parameter(torch.randn(features, hidden) / features**0.5)
        self.b1 = nn.Parameter(torch.randn(hidden) * 0.1)
        self.W2 = nn.Parameter(torch.randn(hidden, 1) / hidden**0.5)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> Forward:
        pre = x @ self.W1 + self.b1
        h = torch.tanh(pre)
        out = h @ self.W2
        loss = F.mse_loss(out.squeeze(1), y)
        return Forward(loss, {"out": out, "h": h})


class PlainTensorRegression(Regression):
    """The notebook habit: W2 kept as a plain tensor attribute, never cast by .to(dtype)."""

    def __init__(
        self, shapes: Mapping[str, tuple[int, ...]], classes: Any = None, hidden: int = 16
    ) -> None:
        super().__init__(shapes, classes, hidden)
        w2 = self.W2.detach().clone()
        del self.W2
        self.W2 = w2  # type: ignore[assignment]


class Tanh(torch.autograd.Function):
    """tanh with its own backward: autograd's reference then runs this very backward."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        y = torch.tanh(x)
        ctx.save_for_backward(y)
        return y

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        (y,) = ctx.saved_tensors
        return torch.mul(grad, 1 - y * y)


class CustomFunctionRegression(Regression):
    def forward(self, x: torch.Tensor, y: torch.Tensor) -> Forward:
        h: torch.Tensor = Tanh.apply(x @ self.W1 + self.b1)  # type: ignore[no-untyped-call]
        out = h @ self.W2
        return Forward(F.mse_loss(out.squeeze(1), y), {"out": out, "h": h})


class BesselRegression(Regression):
    """Divides by (rows - 1) as a Python number, as a batch norm with Bessel's correction does:
    a forward on one row raises ZeroDivisionError."""

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> Forward:
        scale = 1.0 / (x.shape[0] - 1) * (x.shape[0] - 1)  # 1.0, unless one row
        forward = super().forward(x * scale, y)
        return forward


class DeadRegression(Regression):
    """A loss that no tensor moves: every autograd gradient is zero, so nothing is proven."""

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> Forward:
        forward = super().forward(x, y)
        return Forward(forward.loss * 0.0, dict(forward.intermediates))


class SavingRegression(Regression):
    """Hands the pre-activation to its backward through `saved`: needed, not audited."""

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> Forward:
        pre = x @ self.W1 + self.b1
        h = torch.tanh(pre)
        out = h @ self.W2
        loss = F.mse_loss(out.squeeze(1), y)
        return Forward(loss, {"out": out}, saved={"pre": pre, "tanh": h})


def saved_backward(
    model: nn.Module, batch: Batch, forward: Forward, **options: Any
) -> dict[str, torch.Tensor]:
    x, y = batch["x"], batch["y"]
    out, pre, h = forward.intermediates["out"], forward.saved["pre"], forward.saved["tanh"]
    assert not pre.requires_grad and pre.dtype == x.dtype
    dout = (2.0 / y.numel()) * (out.squeeze(1) - y).unsqueeze(1)
    dpre = (dout @ model.get_parameter("W2").T) * (1 - torch.tanh(pre) ** 2)
    grads = {"out": dout, "W2": h.T @ dout, "W1": x.T @ dpre, "b1": dpre.sum(0)}
    if options.get("scribble"):
        pre.mul_(0.5)  # a backward that reuses a saved buffer as scratch space
    return grads


def zero_backward(
    model: nn.Module, batch: Batch, forward: Forward, **options: Any
) -> dict[str, torch.Tensor]:
    grads = regression_backward(model, batch, forward)
    return {name: torch.zeros_like(g) for name, g in grads.items()}


def regression_backward(
    model: nn.Module, batch: Batch, forward: Forward, **options: Any
) -> dict[str, torch.Tensor]:
    x, y = batch["x"], batch["y"]
    out, h = forward.intermediates["out"], forward.intermediates["h"]
    dout = (2.0 / y.numel()) * (out.squeeze(1) - y).unsqueeze(1)
    dW2 = h.T @ dout
    dh = dout @ model.get_parameter("W2").T
    dpre = dh * (1 - h * h)
    return {"out": dout, "h": dh, "W2": dW2, "W1": x.T @ dpre, "b1": dpre.sum(0)}


def clipped_backward(
    model: nn.Module, batch: Batch, forward: Forward, **options: Any
) -> dict[str, torch.Tensor]:
    """Clips two gradients to +-0.05 on purpose, as min-char-rnn clips to +-5."""
    grads = regression_backward(model, batch, forward)
    for name in ("W1", "b1"):
        grads[name] = grads[name].clamp(-0.05, 0.05)
    return grads


def _exits(how: str) -> Callable[..., dict[str, torch.Tensor]]:
    def backward(model: nn.Module, batch: Batch, forward: Forward, **options: Any) -> Any:
        if how == "sys.exit":
            sys.exit(0)
        if how == "skip":
            import pytest

            pytest.skip("plugin skips itself")
        if how == "sigterm":
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)
        if how == "swallow-timeout":
            with contextlib.suppress(BaseException):
                time.sleep(5)
        return regression_backward(model, batch, forward)

    return backward


@hookimpl
def register_models(register: Callable[[str, Any], None]) -> None:
    register("regression", Regression)
    register("regression-plain-tensor", PlainTensorRegression)
    register("regression-custom-function", CustomFunctionRegression)
    register("regression-bessel", BesselRegression)
    register("regression-dead", DeadRegression)
    register("regression-saving", SavingRegression)


@hookimpl
def register_gradients(register: Callable[[str, Any], None]) -> None:
    register("regression-manual", regression_backward)
    register("regression-clipped", clipped_backward)
    register("regression-zeros", zero_backward)
    register("regression-saved", saved_backward)
    for how in ("sys.exit", "skip", "sigterm", "swallow-timeout"):
        register(f"regression-{how}", _exits(how))
