"""A green but less accurate CharRNN BPTT, for `gradaudit diff`'s acceptance test (not a
test file). Load it from a spec with `plugins: [/abs/path/to/tests/rounded_plugins.py]` and
`gradients: {plugin: charrnn-bptt-rounded, options: {tensor: W.weight, drop_bits: 4}}`.

`charrnn-bptt-rounded` is the shipped `charrnn-bptt` with one gradient rounded after it is
computed, the way a kernel that stores a gradient in a narrower format would:

- `through: bfloat16` (or float16): `.to(bfloat16).to(dtype)`, 8 (11) significand bits;
- `drop_bits: k`: rounded to nearest on the case dtype's significand less its k last bits, so
  every element moves by at most 2^(k-1) ULPs of itself.

Measured on specs/charrnn.yaml (8 batches, cpu): rounding W.weight through bfloat16 makes the
float32 case fail by 2470x its allowance (and float16 by 318x), so neither is a green change.
`drop_bits: 4` (at most 8 ULPs) stays green: float32 W.weight's worst budget goes from 22.3%
to 67.9% (3.0x), float64's from 0.55% to 1.1% (2.0x, under the diff's 5% floor);
`drop_bits: 5` fails float32 (122%).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import torch
from gradaudit_charrnn.bptt import charrnn_bptt
from torch import nn

from gradaudit import Batch, Forward, hookimpl


def round_significand(g: torch.Tensor, drop_bits: int) -> torch.Tensor:
    """`g` rounded to nearest with `drop_bits` fewer significand bits than its dtype has."""
    bits = 1 - round(math.log2(torch.finfo(g.dtype).eps))  # significand bits, the implicit 1 too
    mantissa, exponent = torch.frexp(g)  # g = mantissa * 2^exponent, 0.5 <= |mantissa| < 1
    scale = 2.0 ** (bits - drop_bits)
    return torch.ldexp(torch.round(mantissa * scale) / scale, exponent)


def charrnn_bptt_rounded(
    model: nn.Module,
    batch: Batch,
    forward: Forward,
    tensor: str = "W.weight",
    through: str | None = None,
    drop_bits: int = 0,
) -> Mapping[str, torch.Tensor]:
    grads = dict(charrnn_bptt(model, batch, forward))
    g = grads[tensor]
    if through is not None:
        g = g.to(getattr(torch, through)).to(g.dtype)
    if drop_bits:
        g = round_significand(g, drop_bits)
    grads[tensor] = g
    return grads


@hookimpl
def register_gradients(register: Callable[[str, Any], None]) -> None:
    register("charrnn-bptt-rounded", charrnn_bptt_rounded)
