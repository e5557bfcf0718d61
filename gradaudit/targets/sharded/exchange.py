"""What ranks share so that each computes less: one full model, and autograd's references.

Every rank needs its piece of autograd's gradients on the unsharded model for every batch.
Computing them is a second forward and backward that training does not run, as costly as the
shard's own: so each rank computes them for its share of a chunk's batches (batch k of the
chunk on rank k mod world) and the ranks swap them in one all-gather. That only gives each
rank its own reference if every rank holds the same full model, which `same_full_model`
makes sure of.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.distributed as dist


def same_full_model(model: torch.nn.Module, world: int, via: str = "cpu") -> None:
    """Give every rank rank 0's parameters and buffers (a model factory that draws from an
    unseeded source would otherwise build a different reference on each rank). `via`: the
    device the backend sends from (NCCL: the rank's GPU)."""
    if world == 1:
        return
    with torch.no_grad():
        for tensor in [*model.parameters(), *model.buffers()]:
            sent = tensor.data.to(via)
            dist.broadcast(sent, src=0)
            tensor.data.copy_(sent)


def share_rows(
    count: int,
    width: int,
    compute: Callable[[int, torch.Tensor], None],
    rank: int,
    world: int,
    like: torch.Tensor,
) -> torch.Tensor:
    """(count, width): row k is filled by `compute(k, row)` on rank k mod world, and every
    rank gets all of them (one all-gather; the ranks' shares are padded to one size)."""
    share = math.ceil(count / world)
    mine = like.new_zeros(share, width)
    for slot, k in enumerate(range(rank, count, world)):
        compute(k, mine[slot])
    if world == 1:
        return mine[:count]
    gathered = [torch.empty_like(mine) for _ in range(world)]
    dist.all_gather(gathered, mine)
    # row k is gathered[k % world][k // world]: interleave the shares
    return torch.stack(gathered, dim=1).reshape(share * world, width)[:count]


def columns(rows: torch.Tensor, shapes: Sequence[tuple[int, ...]]) -> list[torch.Tensor]:
    """Views of (batches, width) rows of tensors laid end to end: one (batches, *shape) per
    tensor, in order."""
    found, start = [], 0
    for shape in shapes:
        size = math.prod(shape)
        found.append(rows[:, start : start + size].view(rows.shape[0], *shape))
        start += size
    return found
