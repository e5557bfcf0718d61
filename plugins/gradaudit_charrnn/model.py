"""The seed notebook's character-level vanilla RNN, batched.

a_t = U x_t + b + W h_{t-1},  h_t = tanh(a_t),  logits_t = V h_t + c,
loss = cross-entropy averaged over all B*T positions; h_0 = 0.1 (a constant).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from gradaudit import Forward


class CharRNN(nn.Module):
    """Parameter names follow the notebook: C, U (bias b), W (no bias), V (bias c)."""

    h0: torch.Tensor

    def __init__(self, vocab_size: int, d_model: int = 24, n_hidden: int = 200, h0: float = 0.1):
        super().__init__()
        self.C = nn.Embedding(vocab_size, d_model)
        self.U = nn.Linear(d_model, n_hidden, bias=True)
        self.W = nn.Linear(n_hidden, n_hidden, bias=False)
        self.V = nn.Linear(n_hidden, vocab_size, bias=True)
        # A buffer, not a parameter: it follows .to(device, dtype) but gets no gradient.
        self.register_buffer("h0", torch.full((1, n_hidden), float(h0)), persistent=False)

    def forward(self, inputs: torch.Tensor, targets: torch.Tensor) -> Forward:
        """`inputs` and `targets` are the text data's (B, T) token ids."""
        batch, steps = inputs.shape
        emb = self.C(inputs)  # (B, T, d_model)
        h = self.h0.expand(batch, -1)
        hidden: list[torch.Tensor] = []
        for t in range(steps):
            h = torch.tanh(self.U(emb[:, t]) + self.W(h))
            hidden.append(h)
        logits = self.V(torch.stack(hidden, dim=1))  # (B, T, vocab)
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))
        intermediates = {"logits": logits} | {f"h.{t + 1}": h for t, h in enumerate(hidden)}
        return Forward(loss=loss, intermediates=intermediates)


def build_charrnn(vocab_size: int, block_size: int | None = None, **options: float) -> CharRNN:
    """Model factory: options d_model, n_hidden (ints) and h0 (the initial hidden value).

    `vocab_size` and `block_size` come from the text data; any window length works."""
    allowed = {"d_model", "n_hidden", "h0"}
    unknown = set(options) - allowed
    if unknown:
        raise ValueError(f"unknown option(s) {sorted(unknown)}; allowed: {sorted(allowed)}")
    for key in ("d_model", "n_hidden"):
        value = options.get(key, 1)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{key} must be a positive integer, got {value!r}")
    return CharRNN(vocab_size, **options)  # type: ignore[arg-type]
