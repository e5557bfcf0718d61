"""Manual backpropagation through time for `CharRNN`, for any batch size and length.

Derivation (N = B*T positions, ' is the derivative):
  dlogits = (softmax(logits) - onehot(y)) / N
  dh_t    = dlogits_t V + da_{t+1} W          (total derivative: later steps included)
  da_t    = dh_t * (1 - h_t^2)                (tanh' from the hidden state)
  dV = sum dlogits^T h,  dc = sum dlogits,  dW = sum da_t^T h_{t-1},
  dU = sum da_t^T x_t,  db = sum da_t,  dC[id] += da_t U  (repeated ids accumulate)
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import cast

import torch
import torch.nn.functional as F
from torch import nn

from gradaudit import Batch, Forward
from gradaudit_charrnn.model import CharRNN


def charrnn_bptt(model: nn.Module, batch: Batch, forward: Forward) -> Mapping[str, torch.Tensor]:
    """Gradients of the loss for every parameter and intermediate of `CharRNN`."""
    rnn = cast(CharRNN, model)
    x, y = batch.inputs, batch.targets
    B, T = x.shape
    logits = forward.intermediates["logits"]
    hs = torch.stack([forward.intermediates[f"h.{t}"] for t in range(1, T + 1)], dim=1)
    h_prev = torch.cat([rnn.h0.expand(B, 1, -1), hs[:, :-1]], dim=1)  # h_0 .. h_{T-1}
    U, W, V = rnn.U.weight, rnn.W.weight, rnn.V.weight
    emb = rnn.C.weight[x]  # (B, T, d_model)

    one_hot = F.one_hot(y, num_classes=logits.shape[-1]).to(logits.dtype)
    dlogits = (torch.softmax(logits, dim=-1) - one_hot) / (B * T)
    dh_local = dlogits @ V  # (B, T, H): each step's own path to the loss

    dh = torch.empty_like(hs)
    da = torch.empty_like(hs)
    carry = torch.zeros_like(hs[:, 0])
    for t in reversed(range(T)):
        dh[:, t] = dh_local[:, t] + carry
        da[:, t] = dh[:, t] * (1 - hs[:, t] ** 2)
        carry = da[:, t] @ W

    flat_da = da.reshape(B * T, -1)
    grads = {
        "logits": dlogits,
        "V.weight": dlogits.reshape(B * T, -1).T @ hs.reshape(B * T, -1),
        "V.bias": dlogits.sum(dim=(0, 1)),
        "W.weight": flat_da.T @ h_prev.reshape(B * T, -1),
        "U.weight": flat_da.T @ emb.reshape(B * T, -1),
        "U.bias": flat_da.sum(dim=0),
        "C.weight": torch.zeros_like(rnn.C.weight).index_add_(
            0, x.reshape(-1), (flat_da @ U).to(rnn.C.weight.dtype)
        ),
    }
    grads |= {f"h.{t + 1}": dh[:, t] for t in range(T)}
    return grads
