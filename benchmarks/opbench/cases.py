"""The benchmark's ops as each tool is handed them.

Per op: the correct Function and its reference (ops.py); for gradcheck and the assert_close
test, where the reference is a torch op with an OpInfo entry, that entry's name and an
adapter from its SampleInput to the Function's call (None where the Function does not take
the sample, e.g. a `dtype=` or `weight=` keyword it does not implement), else samples written
by hand; for gradaudit, one plain shape per input, as a user declares it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.testing import make_tensor

from opbench import ops

Tensor = torch.Tensor


@dataclass(frozen=True)
class Call:
    """One sample: the tensors, positional, then the non-tensor arguments as keywords."""

    tensors: tuple[Tensor, ...]
    kwargs: dict[str, Any] = field(default_factory=dict)


Adapter = Callable[[Any], Call | None]


@dataclass(frozen=True)
class Op:
    name: str
    function: type[torch.autograd.Function]
    reference: Callable[..., Any]
    inputs: dict[str, Any]  # gradaudit: one plain shape (or integer declaration) per input
    opinfo: tuple[str, str] | None = None  # (name, variant_test_name) in op_db
    adapt: Adapter | None = None  # OpInfo SampleInput -> Call
    handwritten: Callable[[], list[Call]] | None = None  # when there is no OpInfo entry


# --- OpInfo sample adapters (what a careful user writes to feed the samples to their op) ---


def softmax_sample(s: Any) -> Call | None:
    return None if s.kwargs else Call((s.input,), {"dim": s.args[0]})


def logsumexp_sample(s: Any) -> Call | None:
    return Call((s.input,), {"dim": s.args[0], "keepdim": s.args[1]})


def group_norm_sample(s: Any) -> Call | None:
    weight, bias = s.kwargs.get("weight"), s.kwargs.get("bias")
    kwargs = {"num_groups": s.args[0], "eps": s.kwargs.get("eps", 1e-5)}
    if weight is None or bias is None:
        return Call((s.input,), {"weight": weight, "bias": bias, **kwargs})
    return Call((s.input, weight, bias), kwargs)


def mean_sample(s: Any) -> Call | None:
    return None if set(s.kwargs) - {"dim", "keepdim"} or s.args else Call((s.input,), s.kwargs)


def softplus_sample(s: Any) -> Call | None:
    return Call((s.input,), dict(s.kwargs))


def huber_loss_sample(s: Any) -> Call | None:
    return Call((s.input, s.args[0]), dict(s.kwargs))


def nll_loss_sample(s: Any) -> Call | None:
    return None if "weight" in s.kwargs else Call((s.input, s.args[0]), dict(s.kwargs))


def embedding_sample(s: Any) -> Call | None:
    if set(s.kwargs) - {"padding_idx"}:
        return None
    return Call((s.args[0], s.input), dict(s.kwargs))


def bmm_sample(s: Any) -> Call | None:
    return Call((s.input, s.args[0]))


def cumprod_sample(s: Any) -> Call | None:
    return None if s.kwargs else Call((s.input,), {"dim": s.args[0]})


def max_sample(s: Any) -> Call | None:
    return Call((s.input,), {"dim": s.args[0], "keepdim": s.args[1] if len(s.args) > 1 else False})


def swiglu_samples() -> list[Call]:
    """No OpInfo: a few shapes, as a binary elementwise op's OpInfo would give (float64)."""

    def make(shape: tuple[int, ...]) -> Tensor:
        return make_tensor(shape, dtype=torch.float64, device="cpu", requires_grad=True)

    shapes = [(), (5,), (3, 5), (2, 3, 5), (1, 4), (0, 3)]
    return [Call((make(shape), make(shape))) for shape in shapes]


OPS: list[Op] = [
    Op(
        "softmax", ops.Softmax, ops.softmax_reference, {"x": (8, 16)},
        ("softmax", ""), softmax_sample,
    ),
    Op(
        "logsumexp", ops.LogSumExp, ops.logsumexp_reference, {"x": (8, 16)},
        ("logsumexp", ""), logsumexp_sample,
    ),
    Op(
        "group_norm", ops.GroupNorm, ops.group_norm_reference,
        {"x": (4, 8, 16), "weight": (8,), "bias": (8,)},
        ("nn.functional.group_norm", ""), group_norm_sample,
    ),
    Op("mean", ops.Mean, ops.mean_reference, {"x": (8, 16)}, ("mean", ""), mean_sample),
    Op(
        "softplus", ops.Softplus, ops.softplus_reference, {"x": (8, 16)},
        ("nn.functional.softplus", ""), softplus_sample,
    ),
    Op(
        "huber_loss", ops.HuberLoss, ops.huber_loss_reference,
        {"input": (8, 16), "target": (8, 16)},
        ("nn.functional.huber_loss", ""), huber_loss_sample,
    ),
    Op(
        "nll_loss", ops.NLLLoss, ops.nll_loss_reference,
        {"logp": (8, 16), "target": {"shape": [8], "dtype": "int64", "high": 16}},
        ("nn.functional.nll_loss", ""), nll_loss_sample,
    ),
    Op(
        "embedding", ops.Embedding, ops.embedding_reference,
        {"indices": {"shape": [12], "dtype": "int64", "high": 16}, "weight": (16, 8)},
        ("nn.functional.embedding", ""), embedding_sample,
    ),
    Op(
        "bmm", ops.BMM, ops.bmm_reference, {"a": (4, 8, 16), "b": (4, 16, 8)},
        ("bmm", ""), bmm_sample,
    ),
    Op(
        "cumprod", ops.CumProd, ops.cumprod_reference, {"x": (8, 16)},
        ("cumprod", ""), cumprod_sample,
    ),
    Op(
        "max", ops.MaxDim, ops.max_reference, {"x": (8, 16)},
        ("max", "reduction_with_dim"), max_sample,
    ),
    Op(
        "swiglu", ops.SwiGLU, ops.swiglu_reference, {"gate": (8, 16), "up": (8, 16)},
        handwritten=swiglu_samples,
    ),
]  # fmt: skip

BY_NAME = {op.name: op for op in OPS}
