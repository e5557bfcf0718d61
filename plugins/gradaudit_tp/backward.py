"""The tensor-parallel MLP's hand-written backward, on one rank, with its collectives.

dout   = 2 (out - y) / numel                 replicated: every rank has all of it
b2     : a mean over the batch rows, split the way sequence parallelism splits it: each
         rank averages its own chunk of rows, the chunk means are summed across ranks
         (all-reduce) and divided by the world size
W2, h  : dW2 = dout^T h, dh = dout W2        this rank's columns
h_pre  : dh * (1 - h^2);  b1, W1 from it     this rank's rows
u      : du = all_reduce(dh_pre W1)          the column-parallel backward's all-reduce
W0, b0 : from du                              replicated
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.distributed as dist

from gradaudit import Forward


def _world(model: torch.nn.Module) -> tuple[int, int]:
    rank = getattr(model, "rank", None)
    return (0 if rank is None else int(rank)), int(getattr(model, "world_size", 1))


def _all_reduce(tensor: torch.Tensor, world: int) -> torch.Tensor:
    if world > 1:
        dist.all_reduce(tensor)
    return tensor


def tp_mlp_backward(
    model: torch.nn.Module, batch: Any, forward: Forward, **options: Any
) -> Mapping[str, torch.Tensor]:
    """Manual gradients of this rank's tensors; the gallery passes `bug=` to break one step."""
    bug = options.get("bug")
    rank, world = _world(model)
    x, y = batch["x"], batch["y"]
    inter = forward.intermediates
    u, h, out = inter["u"], inter["h"], inter["out"]
    W1, W2 = model.W1, model.W2
    rows, width = out.shape
    if rows % world:
        raise ValueError(f"the batch's {rows} rows do not split over {world} ranks")
    dout = 2 * (out - y) / out.numel()

    per_row = 2 * (out - y) / width  # each row's gradient of its own mean squared error
    chunk = per_row.tensor_split(world)[rank]
    local = chunk.mean(0)
    if bug == "world-size-twice":  # the global batch size already holds the world size
        local = chunk.sum(0) / rows
    if bug != "bias-unsynced":
        _all_reduce(local, world)
    db2 = local / world

    dW2 = dout.T @ h
    dh = dout @ W2
    dh_pre = dh * (1 - h * h)
    db1 = dh_pre.sum(0)
    if bug == "rank1-only" and rank == 1:  # a rank-specific branch that drops tanh'
        db1 = dh.sum(0)
    dW1 = dh_pre.T @ u
    du = dh_pre @ W1
    if bug != "no-allreduce":
        _all_reduce(du, world)
    du_pre = du * (1 - u * u)
    dW0 = du_pre.T @ x
    db0 = du_pre.sum(0)
    return {
        "out": dout,
        "h": dh,
        "h_pre": dh_pre,
        "u": du,
        "W0": dW0,
        "b0": db0,
        "W1": dW1,
        "b1": db1,
        "W2": dW2,
        "b2": db2,
    }
