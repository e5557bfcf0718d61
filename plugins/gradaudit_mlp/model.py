"""An MLP language model with batch norm: makemore part 4's manual-backprop exercise.

The context window of `block_size` token ids predicts the next token, which is the
last target of the window (`targets[:, -1]`; the text plugin's targets are the inputs
shifted by one). Batch norm runs in training mode on batch statistics, written out
step by step exactly as in makemore, so that every step is an intermediate the audit
can check on its own:

  emb = C[x]  (B, T, n_embd)  ->  embcat (B, T*n_embd)  ->  hprebn = embcat W1 + b1
  bnmeani = mean(hprebn);  bndiff = hprebn - bnmeani;  bndiff2 = bndiff^2
  bnvar = sum(bndiff2) / (B - 1)   (Bessel's correction, as makemore)
  bnvar_inv = (bnvar + eps)^-1/2;  bnraw = bndiff * bnvar_inv
  hpreact = bngain * bnraw + bnbias;  h = tanh(hpreact);  logits = h W2 + b2
  loss = cross_entropy(logits, targets[:, -1])

W1's shape depends on the window length, which the factory receives from the text data
(`data.options.block_size`) together with the vocabulary size.
b1 is kept although batch norm removes it
(its true gradient is zero): that zero is itself worth auditing.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from gradaudit import Forward


class MLPBatchNorm(nn.Module):
    """Flat parameters named as in makemore: C, W1, b1, W2, b2, bngain, bnbias."""

    def __init__(
        self,
        vocab_size: int,
        n_embd: int = 10,
        n_hidden: int = 64,
        block_size: int = 3,
        eps: float = 1e-5,
    ) -> None:
        super().__init__()
        self.block_size = block_size
        self.eps = eps
        fan_in = n_embd * block_size
        # makemore's init, drawn from torch's global RNG so that gradaudit's seed fixes it.
        # Small non-zero biases and a gain away from 1 keep every gradient non-trivial.
        self.C = nn.Parameter(torch.randn(vocab_size, n_embd))
        self.W1 = nn.Parameter(torch.randn(fan_in, n_hidden) * (5 / 3) / math.sqrt(fan_in))
        self.b1 = nn.Parameter(torch.randn(n_hidden) * 0.1)
        self.W2 = nn.Parameter(torch.randn(n_hidden, vocab_size) * 0.1)
        self.b2 = nn.Parameter(torch.randn(vocab_size) * 0.1)
        self.bngain = nn.Parameter(torch.randn(1, n_hidden) * 0.1 + 1.0)
        self.bnbias = nn.Parameter(torch.randn(1, n_hidden) * 0.1)

    def forward(self, inputs: torch.Tensor, targets: torch.Tensor) -> Forward:
        n, steps = inputs.shape
        if steps != self.block_size:
            raise ValueError(
                f"the model was built for block_size {self.block_size}, got windows of {steps}"
            )
        emb = self.C[inputs]  # (B, T, n_embd)
        embcat = emb.view(n, -1)  # (B, T*n_embd)
        hprebn = embcat @ self.W1 + self.b1
        bnmeani = hprebn.sum(0, keepdim=True) / n
        bndiff = hprebn - bnmeani
        bndiff2 = bndiff**2
        # A tensor division, so B == 1 gives NaN (as torch.var does) instead of raising:
        # gradaudit learns the intermediate names from a one-row probe forward.
        bnvar = bndiff2.sum(0, keepdim=True) / (n - 1)
        bnvar_inv = (bnvar + self.eps) ** -0.5
        bnraw = bndiff * bnvar_inv
        hpreact = self.bngain * bnraw + self.bnbias
        h = torch.tanh(hpreact)
        logits = h @ self.W2 + self.b2
        loss = F.cross_entropy(logits, targets[:, -1])
        intermediates = {
            "logits": logits,
            "h": h,
            "hpreact": hpreact,
            "bnraw": bnraw,
            "bnvar_inv": bnvar_inv,
            "bnvar": bnvar,
            "bndiff2": bndiff2,
            "bndiff": bndiff,
            "bnmeani": bnmeani,
            "hprebn": hprebn,
            "embcat": embcat,
            "emb": emb,
        }
        # In the order the backward pass reaches them, which is the report's order.
        return Forward(loss=loss, intermediates=intermediates)


def build_mlp_batchnorm(vocab_size: int, block_size: int = 3, **options: int) -> MLPBatchNorm:
    """Model factory: options n_embd (10) and n_hidden (64), positive ints; the vocabulary
    size and window length come from the text data."""
    if not isinstance(block_size, int) or isinstance(block_size, bool) or block_size < 1:
        raise ValueError(f"block_size must be a positive integer, got {block_size!r}")
    allowed = {"n_embd", "n_hidden"}
    unknown = set(options) - allowed
    if unknown:
        raise ValueError(f"unknown option(s) {sorted(unknown)}; allowed: {sorted(allowed)}")
    for key, value in options.items():
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{key} must be a positive integer, got {value!r}")
    return MLPBatchNorm(vocab_size, block_size=block_size, **options)
