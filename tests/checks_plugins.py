"""Test plugins for the extra checks (not a test file; load through a spec's `plugins:`).

- model `charrnn-badtanh`: the CharRNN with tanh as a custom autograd.Function whose
  backward is wrong ((1 + h^2) instead of (1 - h^2)); `charrnn-goodtanh`: the same with a
  correct backward. Paired with the negative control
  `bptt-tanh-sign` (the same mistake by hand), manual and autograd agree with each other:
  only the finite-difference check can tell that both are wrong.
- gradients `bptt-noisy`: the correct BPTT plus fresh noise on every call (nondeterministic).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
import torch.nn.functional as F
from gradaudit_charrnn.bptt import charrnn_bptt
from gradaudit_charrnn.model import CharRNN
from torch import nn

from gradaudit import Batch, Forward, hookimpl


class BadTanh(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, a: torch.Tensor) -> torch.Tensor:
        h = torch.tanh(a)
        ctx.save_for_backward(h)
        return h

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        (h,) = ctx.saved_tensors
        wrong: torch.Tensor = grad * (1 + h * h)  # the bug: tanh' is 1 - h^2
        return wrong


class GoodTanh(BadTanh):
    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        (h,) = ctx.saved_tensors
        right: torch.Tensor = grad * (1 - h * h)
        return right


class BadTanhRNN(CharRNN):
    tanh: Any = BadTanh

    def forward(self, inputs: torch.Tensor, targets: torch.Tensor) -> Forward:
        batch, steps = inputs.shape
        emb = self.C(inputs)
        h = self.h0.expand(batch, -1)
        hidden = []
        for t in range(steps):
            h = self.tanh.apply(self.U(emb[:, t]) + self.W(h))
            hidden.append(h)
        logits = self.V(torch.stack(hidden, dim=1))
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))
        return Forward(loss, {"logits": logits} | {f"h.{t + 1}": h for t, h in enumerate(hidden)})


class GoodTanhRNN(BadTanhRNN):
    tanh = GoodTanh


def noisy_bptt(model: nn.Module, batch: Batch, forward: Forward) -> Mapping[str, torch.Tensor]:
    grads = charrnn_bptt(model, batch, forward)
    return {name: g + 1e-3 * g.abs().max() * torch.randn_like(g) for name, g in grads.items()}


@hookimpl
def register_models(register: Callable[[str, Any], None]) -> None:
    register(
        "charrnn-badtanh",
        lambda vocab_size, block_size, **options: BadTanhRNN(vocab_size, **options),
    )
    register(
        "charrnn-goodtanh",
        lambda vocab_size, block_size, **options: GoodTanhRNN(vocab_size, **options),
    )


@hookimpl
def register_gradients(register: Callable[[str, Any], None]) -> None:
    register("bptt-noisy", noisy_bptt)
