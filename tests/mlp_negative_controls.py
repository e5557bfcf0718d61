"""Negative controls: a gradaudit plugin of wrong batch-norm MLP backwards (not a test file).

Load it from a spec with `plugins: [/abs/path/to/tests/mlp_negative_controls.py]` and pick one
with `gradients: {plugin: mlp-...}`. Each wrong backward is a realistic slip in makemore's
manual-backprop exercise, reimplemented step by step from the derivation in
plugins/gradaudit_mlp/backward.py with one thing changed:

  mlp-bn-no-bessel          dbndiff2 = dbnvar / n, the forward's 1/(n-1) forgotten
  mlp-bn-no-mean-path       dhprebn = dbndiff: the path through the batch mean is dropped
  mlp-bn-stats-constant     dhprebn = bngain * bnvar_inv * dhpreact: mean and variance both
                            treated as constants (the eval-mode backward on a training forward)
  mlp-dlogits-not-averaged  dlogits = softmax - onehot, not divided by B
  mlp-embedding-overwrite   dC[id] = demb instead of dC[id] += demb (repeated ids lose terms)
  mlp-correct               the shipped mlp-batchnorm-manual (a positive control)
  mlp-rewritten             this file's own derivation with no switch on (must be right too)

Which tensors each bug gets wrong is in EXPECTED_WRONG, and tests/test_mlp.py measures it.
Gradients upstream of a bug stay right; so does b1's, whenever the bug sits above the
batch mean's path: batch norm makes dL/db1 exactly zero, and the mean's backward
(dhprebn = dbndiff - mean(dbndiff)) keeps the rows summing to zero whatever dbndiff is.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from functools import partial
from typing import Any

import torch
import torch.nn.functional as F
from gradaudit_mlp.backward import mlp_batchnorm_backward
from torch import nn

from gradaudit import Batch, Forward, hookimpl

INTERMEDIATES = [
    "logits",
    "h",
    "hpreact",
    "bnraw",
    "bnvar_inv",
    "bnvar",
    "bndiff2",
    "bndiff",
    "bnmeani",
    "hprebn",
    "embcat",
    "emb",
]
PARAMETERS = ["C", "W1", "b1", "W2", "b2", "bngain", "bnbias"]
TENSORS = [*INTERMEDIATES, *PARAMETERS]  # the order gradaudit reports them in

# Everything below hprebn in the backward pass: what any error in dhprebn reaches.
BELOW_HPREBN = {"hprebn", "embcat", "emb", "C", "W1"}
EXPECTED_WRONG: dict[str, set[str]] = {
    # Only the variance branch changes: bnmeani's gradient sums 2*bndiff*dbndiff2 over the
    # batch, and sum(bndiff) == 0, so the wrong scale cancels there; b1 stays zero.
    "mlp-bn-no-bessel": {"bndiff2", "bndiff"} | BELOW_HPREBN,
    # bndiff and the statistics are right; hprebn misses -mean(dbndiff), so rows no longer
    # sum to zero and b1 gets a spurious gradient.
    "mlp-bn-no-mean-path": BELOW_HPREBN | {"b1"},
    # As above, and bndiff also misses its path through bndiff2 -> bnvar.
    "mlp-bn-stats-constant": {"bndiff"} | BELOW_HPREBN | {"b1"},
    # Every gradient is B times too large, except b1's: B * 0 is still 0.
    "mlp-dlogits-not-averaged": set(TENSORS) - {"b1"},
    # Only C, and only where an id repeats in the batch (always, at 32x3 on a small vocab).
    "mlp-embedding-overwrite": {"C"},
}


def backward(
    model: nn.Module,
    batch: Batch,
    forward: Forward,
    *,
    bessel: bool = True,
    mean_path: bool = True,
    variance_path: bool = True,
    average: bool = True,
    accumulate: bool = True,
) -> Mapping[str, torch.Tensor]:
    """The MLP's manual backward, step by step, with switches for the bugs above."""
    mlp: Any = model  # an MLPBatchNorm: C, W1, b1, W2, b2, bngain, bnbias and eps
    x, y = batch.inputs, batch.targets[:, -1]
    n, steps = x.shape
    act = forward.intermediates
    logits, h, bnraw = act["logits"], act["h"], act["bnraw"]
    bnvar, bnvar_inv, bndiff = act["bnvar"], act["bnvar_inv"], act["bndiff"]
    embcat = act["embcat"]

    one_hot = F.one_hot(y, num_classes=logits.shape[-1]).to(logits.dtype)
    dlogits = torch.softmax(logits, dim=-1) - one_hot
    if average:
        dlogits = dlogits / n
    dh = dlogits @ mlp.W2.T
    dhpreact = (1 - h**2) * dh
    dbnraw = mlp.bngain * dhpreact
    dbnvar_inv = (bndiff * dbnraw).sum(0, keepdim=True)
    dbnvar = -0.5 * (bnvar + mlp.eps) ** -1.5 * dbnvar_inv
    dbndiff2 = torch.ones_like(bndiff) * dbnvar / ((n - 1) if bessel else n)
    dbndiff = bnvar_inv * dbnraw
    if variance_path:
        dbndiff = dbndiff + 2 * bndiff * dbndiff2
    dbnmeani = -dbndiff.sum(0, keepdim=True)
    dhprebn = dbndiff + dbnmeani / n if mean_path else dbndiff.clone()

    dembcat = dhprebn @ mlp.W1.T
    demb = dembcat.view(n, steps, -1)
    dC = torch.zeros_like(mlp.C)
    for i in range(n):  # makemore's loop, so that the overwrite is deterministic: last wins
        for t in range(steps):
            if accumulate:
                dC[x[i, t]] += demb[i, t]
            else:
                dC[x[i, t]] = demb[i, t]
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


GRADIENTS: dict[str, Callable[..., Mapping[str, torch.Tensor]]] = {
    "mlp-bn-no-bessel": partial(backward, bessel=False),
    "mlp-bn-no-mean-path": partial(backward, mean_path=False),
    "mlp-bn-stats-constant": partial(backward, mean_path=False, variance_path=False),
    "mlp-dlogits-not-averaged": partial(backward, average=False),
    "mlp-embedding-overwrite": partial(backward, accumulate=False),
    "mlp-correct": mlp_batchnorm_backward,
    "mlp-rewritten": backward,
}


@hookimpl
def register_gradients(register: Callable[[str, Any], None]) -> None:
    for name, fn in GRADIENTS.items():
        register(name, fn)
