"""Bugs that tensor-parallel backwards ship with, each registered as `tp-mlp-bug-<slug>`.

These are deliberately WRONG gradients: specs/tp-mlp.yaml with one of them must fail,
naming the rank(s) where it shows. Loaded only on request (`plugins: [gradaudit_tp.gallery]`
in a spec), like the CharRNN gallery, so they never sit among the real ones.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from typing import Any

import torch

from gradaudit import hookimpl
from gradaudit_tp.backward import tp_mlp_backward

Gradient = Callable[..., Mapping[str, torch.Tensor]]

DESCRIPTIONS = {
    "no-allreduce": "the column-parallel backward's all-reduce of du is missing: u, W0 and b0 "
    "hold one rank's partial sum, on every rank",
    "rank1-only": "a rank-specific branch drops tanh' from b1's gradient on rank 1 only",
    "world-size-twice": "b2's gradient is divided by the world size twice (once through the "
    "global batch size, once after the all-reduce)",
    "bias-unsynced": "b2's chunk means are not all-reduced: the replicated bias gradient "
    "differs from rank to rank",
}

BUGS: dict[str, Gradient] = {
    slug: functools.partial(tp_mlp_backward, bug=slug) for slug in DESCRIPTIONS
}


@hookimpl
def register_gradients(register: Callable[[str, Any], None]) -> None:
    for slug, fn in BUGS.items():
        register(f"tp-mlp-bug-{slug}", fn)
