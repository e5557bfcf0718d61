"""Manual backward pass of `MLPBatchNorm`, for any batch size B >= 2, window length and dtype.

Derivation (n = B rows, y = targets[:, -1], sums over the batch dimension keep it as 1):
  dlogits   = (softmax(logits) - onehot(y)) / n
  dh        = dlogits W2^T;  dW2 = h^T dlogits;  db2 = sum dlogits
  dhpreact  = dh * (1 - h^2)
  dbngain   = sum(bnraw * dhpreact);  dbnbias = sum dhpreact;  dbnraw = bngain * dhpreact
  dbnvar_inv = sum(bndiff * dbnraw);  dbnvar = -1/2 (bnvar + eps)^-3/2 dbnvar_inv
  dbndiff2  = dbnvar / (n - 1)                        (broadcast over the batch)
  dbndiff   = bnvar_inv * dbnraw + 2 bndiff dbndiff2  (both uses of bndiff)
  dbnmeani  = -sum dbndiff
  dhprebn   = bngain bnvar_inv / n * (n dhpreact - sum dhpreact
                                      - n/(n-1) bnraw sum(dhpreact * bnraw))
              (the closed form of dbndiff + dbnmeani / n)
  dembcat   = dhprebn W1^T;  dW1 = embcat^T dhprebn;  db1 = sum dhprebn (zero in exact arithmetic)
  demb      = dembcat viewed as (B, T, n_embd);  dC[id] += demb at each position (ids repeat)

Each intermediate's gradient is the total derivative of the loss, as autograd reports it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import cast

import torch
import torch.nn.functional as F
from torch import nn

from gradaudit import Batch, Forward
from gradaudit_mlp.model import MLPBatchNorm


def mlp_batchnorm_backward(
    model: nn.Module, batch: Batch, forward: Forward
) -> Mapping[str, torch.Tensor]:
    """Gradients of the loss for every parameter and intermediate of `MLPBatchNorm`."""
    mlp = cast(MLPBatchNorm, model)
    x = batch.inputs
    y = batch.targets[:, -1]
    n, steps = x.shape
    if n < 2:
        raise ValueError(f"batch norm's Bessel-corrected variance needs B >= 2, got B = {n}")
    act = forward.intermediates
    logits, h, bnraw = act["logits"], act["h"], act["bnraw"]
    bnvar, bnvar_inv, bndiff = act["bnvar"], act["bnvar_inv"], act["bndiff"]
    embcat = act["embcat"]

    one_hot = F.one_hot(y, num_classes=logits.shape[-1]).to(logits.dtype)
    dlogits = (torch.softmax(logits, dim=-1) - one_hot) / n
    dh = dlogits @ mlp.W2.T
    dhpreact = dh * (1 - h**2)

    dbnraw = mlp.bngain * dhpreact
    dbnvar_inv = (bndiff * dbnraw).sum(0, keepdim=True)
    dbnvar = -0.5 * (bnvar + mlp.eps) ** -1.5 * dbnvar_inv
    dbndiff2 = dbnvar.expand_as(bndiff) / (n - 1)
    dbndiff = bnvar_inv * dbnraw + 2 * bndiff * dbndiff2
    dbnmeani = -dbndiff.sum(0, keepdim=True)
    dhprebn = (
        mlp.bngain
        * bnvar_inv
        / n
        * (
            n * dhpreact
            - dhpreact.sum(0, keepdim=True)
            - n / (n - 1) * bnraw * (dhpreact * bnraw).sum(0, keepdim=True)
        )
    )

    dembcat = dhprebn @ mlp.W1.T
    demb = dembcat.view(n, steps, -1)
    dC = torch.zeros_like(mlp.C).index_add_(0, x.reshape(-1), demb.reshape(n * steps, -1))
    return {
        "logits": dlogits,
        "h": dh,
        "hpreact": dhpreact,
        "bnraw": dbnraw,
        "bnvar_inv": dbnvar_inv,
        "bnvar": dbnvar,
        "bndiff2": dbndiff2,
        "bndiff": dbndiff,
        "bnmeani": dbnmeani,
        "hprebn": dhprebn,
        "embcat": dembcat,
        "emb": demb,
        "C": dC,
        "W1": embcat.T @ dhprebn,
        "b1": dhprebn.sum(0),
        "W2": h.T @ dlogits,
        "b2": dlogits.sum(0),
        "bngain": (bnraw * dhpreact).sum(0, keepdim=True),
        "bnbias": dhpreact.sum(0, keepdim=True),
    }
