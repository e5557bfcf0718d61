"""Negative controls: a gradaudit plugin of deliberately wrong CharRNN BPTTs (not a test file).

Load it from a spec with `plugins: [/abs/path/to/tests/negative_controls.py]` and pick one with
`gradients: {plugin: bptt-...}`. Each wrong gradient is a realistic BPTT slip, reimplemented from
the derivation in plugins/gradaudit_charrnn/bptt.py with one thing changed:

  bptt-sign-error       dlogits = onehot - softmax               -> every tensor is wrong
  bptt-tanh-sign        tanh' taken as (1 + h^2)                 -> wrong below the last step
  bptt-over-T           mean over T instead of B*T               -> everything wrong when B > 1
  bptt-W-transposed     recurrent carry da @ W.T instead of da @ W
  bptt-no-recurrence    the recurrent carry is dropped
  bptt-raises           raises RuntimeError("boom")
  bptt-correct          the shipped charrnn-bptt (a positive control)
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from functools import partial
from typing import Any

import torch
import torch.nn.functional as F
from gradaudit_charrnn.bptt import charrnn_bptt
from torch import nn

from gradaudit import Batch, Forward, hookimpl

# Tensors each bug gets wrong, as a function of the sequence length T; the rest must still pass.
ALL = "all"
BELOW_LAST_STEP = "below-last-step"  # h.1..h.{T-1}, W, U, b, C; logits, h.T, V, c stay right
EXPECTED_WRONG = {
    "bptt-sign-error": ALL,
    "bptt-tanh-sign": BELOW_LAST_STEP,
    "bptt-over-T": ALL,
    "bptt-W-transposed": BELOW_LAST_STEP,
    "bptt-no-recurrence": BELOW_LAST_STEP,
}


def tensor_names(T: int) -> list[str]:
    """The CharRNN's audited tensors, in the order gradaudit reports them."""
    return [
        "logits",
        *(f"h.{t}" for t in range(1, T + 1)),
        "C.weight",
        "U.weight",
        "U.bias",
        "W.weight",
        "V.weight",
        "V.bias",
    ]


def expected_wrong(name: str, T: int) -> set[str]:
    kind = EXPECTED_WRONG[name]
    if kind == ALL:
        return set(tensor_names(T))
    return {f"h.{t}" for t in range(1, T)} | {"W.weight", "U.weight", "U.bias", "C.weight"}


def bptt(
    model: nn.Module,
    batch: Batch,
    forward: Forward,
    *,
    flip_dlogits: bool = False,
    tanh_plus: bool = False,
    mean_over_t_only: bool = False,
    recurrence: str = "W",
) -> Mapping[str, torch.Tensor]:
    """The CharRNN's manual BPTT, with switches for the bugs above (defaults: correct)."""
    rnn: Any = model  # a CharRNN: C, U, W, V and the constant h0
    x, y = batch.inputs, batch.targets
    B, T = x.shape
    logits = forward.intermediates["logits"]
    hs = torch.stack([forward.intermediates[f"h.{t}"] for t in range(1, T + 1)], dim=1)
    h_prev = torch.cat([rnn.h0.expand(B, 1, -1), hs[:, :-1]], dim=1)
    U, W, V = rnn.U.weight, rnn.W.weight, rnn.V.weight
    emb = rnn.C.weight[x]

    one_hot = F.one_hot(y, num_classes=logits.shape[-1]).to(logits.dtype)
    softmax = torch.softmax(logits, dim=-1)
    diff = one_hot - softmax if flip_dlogits else softmax - one_hot
    dlogits = diff / (T if mean_over_t_only else B * T)
    dh_local = dlogits @ V

    dh = torch.empty_like(hs)
    da = torch.empty_like(hs)
    carry = torch.zeros_like(hs[:, 0])
    for t in reversed(range(T)):
        dh[:, t] = dh_local[:, t] + carry
        h = hs[:, t]
        da[:, t] = dh[:, t] * ((1 + h**2) if tanh_plus else (1 - h**2))
        if recurrence == "W":
            carry = da[:, t] @ W
        elif recurrence == "W.T":
            carry = da[:, t] @ W.T
        elif recurrence == "none":
            carry = torch.zeros_like(carry)
        else:
            raise ValueError(f"unknown recurrence {recurrence!r}")

    flat_da = da.reshape(B * T, -1)
    grads = {
        "logits": dlogits,
        "V.weight": dlogits.reshape(B * T, -1).T @ hs.reshape(B * T, -1),
        "V.bias": dlogits.sum(dim=(0, 1)),
        "W.weight": flat_da.T @ h_prev.reshape(B * T, -1),
        "U.weight": flat_da.T @ emb.reshape(B * T, -1),
        "U.bias": flat_da.sum(dim=0),
        "C.weight": torch.zeros_like(rnn.C.weight).index_add_(0, x.reshape(-1), flat_da @ U),
    }
    grads |= {f"h.{t + 1}": dh[:, t] for t in range(T)}
    return grads


def bptt_raises(model: nn.Module, batch: Batch, forward: Forward) -> Mapping[str, torch.Tensor]:
    raise RuntimeError("boom")


GRADIENTS: dict[str, Callable[..., Mapping[str, torch.Tensor]]] = {
    "bptt-sign-error": partial(bptt, flip_dlogits=True),
    "bptt-tanh-sign": partial(bptt, tanh_plus=True),
    "bptt-over-T": partial(bptt, mean_over_t_only=True),
    "bptt-W-transposed": partial(bptt, recurrence="W.T"),
    "bptt-no-recurrence": partial(bptt, recurrence="none"),
    "bptt-raises": bptt_raises,
    "bptt-correct": charrnn_bptt,
    "bptt-rewritten": bptt,  # this file's own derivation with no switch on: must be right too
}


@hookimpl
def register_gradients(register: Callable[[str, Any], None]) -> None:
    for name, fn in GRADIENTS.items():
        register(name, fn)
