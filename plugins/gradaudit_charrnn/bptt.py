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
from torch import nn

from gradaudit import Batch, Forward
from gradaudit_charrnn.model import CharRNN


def charrnn_bptt(model: nn.Module, batch: Batch, forward: Forward) -> Mapping[str, torch.Tensor]:
    """Gradients of the loss for every parameter and intermediate of `CharRNN`.

    Works time-major, (T, B, ...), so that each step of the backward loop reads and writes
    contiguous memory; sums over all positions do not care about the order.
    """
    rnn = cast(CharRNN, model)
    x, y = batch.inputs, batch.targets
    B, T = x.shape
    N = B * T
    hs = torch.stack([forward.intermediates[f"h.{t}"] for t in range(1, T + 1)])  # (T, B, H)
    U, W, V = rnn.U.weight, rnn.W.weight, rnn.V.weight
    ids = x.T.reshape(-1)  # time-major token ids

    # dlogits = (softmax - onehot) / N, without materialising the one-hot
    dlogits = torch.softmax(forward.intermediates["logits"].transpose(0, 1), dim=-1)
    dlogits.view(N, -1)[torch.arange(N, device=x.device), y.T.reshape(-1)] -= 1
    dlogits /= N

    dh = dlogits @ V  # (T, B, H): each step's own path to the loss; the carry is added below
    # tanh' = 1 - h^2, turned into da in place step by step (one buffer, one pass to fill)
    da = torch.addcmul(hs.new_ones(()), hs, hs, value=-1)
    da[T - 1].mul_(dh[T - 1])
    for t in range(T - 2, -1, -1):
        dh[t].addmm_(da[t + 1], W)  # dh_t += da_{t+1} W: the path through later steps
        da[t].mul_(dh[t])

    H = hs.shape[-1]
    flat_da = da.view(N, H)
    dW = da[1:].reshape(-1, H).T @ hs[:-1].reshape(-1, H)  # steps 2..T pair with h_1..h_{T-1}
    dW.addr_(da[0].sum(dim=0), rnn.h0[0])  # step 1 pairs with the constant h_0
    grads = {
        "logits": dlogits.transpose(0, 1),
        "V.weight": dlogits.view(N, -1).T @ hs.view(N, H),
        "V.bias": dlogits.sum(dim=(0, 1)),
        "W.weight": dW,
        "U.weight": flat_da.T @ rnn.C.weight[ids],
        "U.bias": flat_da.sum(dim=0),
        "C.weight": torch.zeros_like(rnn.C.weight).index_add_(0, ids, flat_da @ U),
    }
    grads |= {f"h.{t + 1}": dh[t] for t in range(T)}
    return grads
