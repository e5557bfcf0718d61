"""A numpy vanilla RNN with hand-written BPTT in the style of min-char-rnn's `lossFun`,
and the same model in torch for autograd (test support, not a test file). Also a gradaudit
plugin file (`plugins: [tests/minchar_rnn.py]`): model `minchar-rnn`, gradients
`minchar-numpy`.

`lossFun` handles one sequence (lists of ids), keeps its one-hots in float64 as the
original does (`np.zeros((vocab_size, 1))`), and clips every gradient to ±5 in place.
`recurrent=False` drops the recurrent term `dhnext`: a realistic slip that must fail.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from gradaudit import Forward, hookimpl

Array = Any  # numpy arrays; the original is untyped and reads best that way


def lossFun(
    inputs: Array,
    targets: Array,
    hprev: Array,
    Wxh: Array,
    Whh: Array,
    Why: Array,
    bh: Array,
    by: Array,
    recurrent: bool = True,
) -> tuple[Any, ...]:
    """Loss, gradients on the parameters (clipped to ±5) and the last hidden state."""
    vocab_size = Wxh.shape[1]
    xs, hs, ys, ps = {}, {}, {}, {}
    hs[-1] = np.copy(hprev)
    loss = 0.0
    for t in range(len(inputs)):
        xs[t] = np.zeros((vocab_size, 1))
        xs[t][inputs[t]] = 1
        hs[t] = np.tanh(np.dot(Wxh, xs[t]) + np.dot(Whh, hs[t - 1]) + bh)
        ys[t] = np.dot(Why, hs[t]) + by
        ps[t] = np.exp(ys[t]) / np.sum(np.exp(ys[t]))
        loss += -np.log(ps[t][targets[t], 0])
    dWxh, dWhh, dWhy = np.zeros_like(Wxh), np.zeros_like(Whh), np.zeros_like(Why)
    dbh, dby = np.zeros_like(bh), np.zeros_like(by)
    dhnext = np.zeros_like(hs[0])
    for t in reversed(range(len(inputs))):
        dy = np.copy(ps[t])
        dy[targets[t]] -= 1
        dWhy += np.dot(dy, hs[t].T)
        dby += dy
        dh = np.dot(Why.T, dy) + (dhnext if recurrent else 0.0)
        dhraw = (1 - hs[t] * hs[t]) * dh
        dbh += dhraw
        dWxh += np.dot(dhraw, xs[t].T)
        dWhh += np.dot(dhraw, hs[t - 1].T)
        dhnext = np.dot(Whh.T, dhraw)
    for dparam in [dWxh, dWhh, dWhy, dbh, dby]:
        np.clip(dparam, -5, 5, out=dparam)  # mitigate exploding gradients
    return loss, dWxh, dWhh, dWhy, dbh, dby, hs[len(inputs) - 1]


class MinCharRNN(nn.Module):
    """The same RNN in torch over a (B, T) batch; the loss sums over rows and steps."""

    def __init__(self, vocab_size: int, hidden_size: int) -> None:
        super().__init__()
        self.Wxh = nn.Parameter(torch.randn(hidden_size, vocab_size) * 0.01)
        self.Whh = nn.Parameter(torch.randn(hidden_size, hidden_size) * 0.01)
        self.Why = nn.Parameter(torch.randn(vocab_size, hidden_size) * 0.01)
        self.bh = nn.Parameter(torch.zeros(hidden_size, 1))
        self.by = nn.Parameter(torch.zeros(vocab_size, 1))

    def forward(self, inputs: torch.Tensor, targets: torch.Tensor) -> Forward:
        h = torch.zeros(inputs.shape[0], self.Whh.shape[0], dtype=self.Whh.dtype)
        loss = torch.zeros((), dtype=self.Whh.dtype)
        for t in range(inputs.shape[1]):
            x = F.one_hot(inputs[:, t], self.Wxh.shape[1]).to(self.Wxh.dtype)
            h = torch.tanh(x @ self.Wxh.T + h @ self.Whh.T + self.bh.T)
            logits = h @ self.Why.T + self.by.T
            loss = loss + F.cross_entropy(logits, targets[:, t], reduction="sum")
        return Forward(loss)


def sequence(vocab_size: int, length: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(inputs, targets) of one row where one character recurs often, so that dby for it
    passes -5 and min-char-rnn's clipping changes it (as on real text)."""
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab_size, (length + 1,), generator=generator)
    ids[::2] = 0  # character 0 is every other target
    return ids[:-1].unsqueeze(0), ids[1:].unsqueeze(0)


def numpy_bptt(hidden_size: int = 16, recurrent: bool = True) -> Any:
    """lossFun as a gradaudit manual gradient (the whole wrapper; hidden_size is the model's)."""
    from gradaudit.numpy_adapter import from_numpy

    return from_numpy(
        lambda p, row: lossFun(
            row["inputs"], row["targets"], np.zeros((hidden_size, 1)), **p, recurrent=recurrent
        ),
        per_row=True,
        combine="sum",
        names=(None, "Wxh", "Whh", "Why", "bh", "by", None),
    )


@hookimpl
def register_models(register: Callable[[str, Any], None]) -> None:
    register(
        "minchar-rnn",
        lambda vocab_size, block_size, hidden_size=16: MinCharRNN(vocab_size, hidden_size),
    )


@hookimpl
def register_gradients(register: Callable[[str, Any], None]) -> None:
    register("minchar-numpy", numpy_bptt())
