"""A tensor-parallel MLP for regression, Megatron-style:

  u     = tanh(x W0^T + b0)      replicated input layer (every rank computes all of it)
  h_pre = u W1^T + b1            column-parallel: rank r holds rows r of W1 and b1
  h     = tanh(h_pre)            so h_pre and h are split along their last dimension
  out   = all_reduce(h W2^T) + b2   row-parallel: rank r holds columns r of W2; b2 replicated
  loss  = mean((out - y)^2)

`build_tp_mlp(rank=None)` builds the full model, the reference; `rank=r` builds rank r's
shard. gradaudit copies the full model's weights, sliced by `shard_layout()`, into each
shard, so both start from the same seed's weights.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from gradaudit import Forward, Placement, Replicated, Split


class TPMLP(nn.Module):
    """Full (rank None) or one rank's shard of the tensor-parallel MLP."""

    def __init__(
        self, rank: int | None, world_size: int, d_in: int = 16, d_hidden: int = 32, d_out: int = 8
    ) -> None:
        super().__init__()
        if d_hidden % world_size:
            raise ValueError(f"d_hidden {d_hidden} does not split over {world_size} ranks")
        self.rank, self.world_size = rank, world_size
        hidden = d_hidden if rank is None else d_hidden // world_size
        self.W0 = nn.Parameter(torch.randn(d_in, d_in) / math.sqrt(d_in))
        self.b0 = nn.Parameter(torch.randn(d_in) * 0.1)
        self.W1 = nn.Parameter(torch.randn(hidden, d_in) / math.sqrt(d_in))
        self.b1 = nn.Parameter(torch.randn(hidden) * 0.1)
        self.W2 = nn.Parameter(torch.randn(d_out, hidden) / math.sqrt(d_hidden))
        self.b2 = nn.Parameter(torch.randn(d_out) * 0.1)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> Forward:
        u = torch.tanh(x @ self.W0.T + self.b0)
        h_pre = u @ self.W1.T + self.b1
        h = torch.tanh(h_pre)
        partial = h @ self.W2.T
        if self.rank is not None and self.world_size > 1:
            dist.all_reduce(partial)  # the row-parallel forward's sum over ranks
        out = partial + self.b2
        loss = ((out - y) ** 2).mean()
        return Forward(loss, {"out": out, "h": h, "h_pre": h_pre, "u": u})

    def shard_layout(self) -> dict[str, Placement]:
        column, row, replicated = Split(dim=0), Split(dim=1), Replicated()
        return {
            "W0": replicated,
            "b0": replicated,
            "W1": column,
            "b1": column,
            "W2": row,
            "b2": replicated,
            "u": replicated,
            "h_pre": Split(dim=1),
            "h": Split(dim=1),
            "out": replicated,
        }


def build_tp_mlp(
    rank: int | None = None,
    world_size: int = 1,
    shapes: Mapping[str, tuple[int, ...]] | None = None,
    classes: Any = None,
    **options: int,
) -> TPMLP:
    """Model factory: options d_in (16), d_hidden (32, divisible by the world size), d_out (8);
    `shapes` and `classes` are what the data declares (random data), unused here."""
    allowed = {"d_in", "d_hidden", "d_out"}
    unknown = set(options) - allowed
    if unknown:
        raise ValueError(f"unknown option(s) {sorted(unknown)}; allowed: {sorted(allowed)}")
    return TPMLP(rank, world_size, **options)
