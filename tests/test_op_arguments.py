"""Argument variants derived from an op's keyword defaults, and the contract probes that keep
a correct op green on the variants it cannot take (issue 28 items 1, 2 and 4)."""

from __future__ import annotations

from typing import Any

import pytest
import torch
import torch.nn.functional as F

from gradaudit import check_op
from gradaudit.targets.op.api import OpResult
from gradaudit.targets.op.variants import alternatives


@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [
        ("keepdim", False, [True]),
        ("dim", -1, [0, (0, 1)]),
        ("dim", None, [0, 1, (0, 1)]),
        ("axis", 0, [1, (0, 1)]),
        ("reduction", "mean", ["sum", "none"]),
        ("approximate", "none", ["tanh"]),
        ("mode", "bilinear", []),  # a string whose vocabulary is not known: `args:` lists it
        ("num_groups", 1, [2]),
        ("beta", 1.0, [0.5]),
        ("lambd", 0.5, [2.0]),
        ("padding_idx", None, [1]),
    ],
)
def test_the_alternatives_of_an_argument(key: str, value: Any, expected: list[Any]) -> None:
    assert alternatives(key, value, ndim=2) == expected


def _softplus(sigmoid_of_beta_x: bool) -> Any:
    class Softplus(torch.autograd.Function):
        @staticmethod
        def forward(ctx: Any, x: torch.Tensor, beta: float = 1.0) -> torch.Tensor:
            ctx.save_for_backward(x)
            ctx.beta = beta
            return F.softplus(x, beta)

        @staticmethod
        def backward(ctx: Any, g: torch.Tensor) -> tuple[torch.Tensor, None]:
            (x,) = ctx.saved_tensors
            scale = ctx.beta if sigmoid_of_beta_x else 1.0  # the bug: sigmoid(x) always
            return g * torch.sigmoid(scale * x), None

    return Softplus


def softplus_reference(x: torch.Tensor, beta: float = 1.0) -> torch.Tensor:
    return F.softplus(x, beta)


def _failing(result: OpResult) -> set[str]:
    return {g.check for g in result.groups for s in g.tensors if s.status in ("fail", "error")}


def _skipped(result: OpResult) -> dict[str, str]:
    return {
        g.check: s.errors[0] if s.errors else (g.skipped or "")
        for g in result.groups
        for s in g.tensors
        if s.status == "skipped"
    }


ONE: dict[str, Any] = {"dtypes": ["float64", "float32"], "raise_on_failure": False}
PLAIN: dict[str, Any] = {"sizes": False, "leading": 0, "layouts": False, "long": False}


def test_a_bug_behind_a_float_argument_is_red_only_at_that_argument() -> None:
    inputs = {"x": (8, 16)}
    good = check_op(_softplus(True), softplus_reference, inputs=inputs, **ONE)
    bad = check_op(_softplus(False), softplus_reference, inputs=inputs, **ONE)
    assert good.ok and "variant:beta=0.5" in {g.check for g in good.groups}
    assert _failing(bad) == {"variant:beta=0.5"}


def _sum_or_mean(divides_always: bool) -> Any:
    def candidate(x: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
        total = (x * x).sum()
        if divides_always or reduction == "mean":  # the bug: 'sum' divided by n too
            return total / x.numel()
        return total if reduction == "sum" else x * x

    return candidate


def squares(x: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    return F.mse_loss(x, torch.zeros_like(x), reduction=reduction)


def test_a_bug_behind_a_string_argument_is_red_only_at_that_value() -> None:
    good = check_op(_sum_or_mean(False), squares, inputs={"x": (4, 5)}, variants=PLAIN, **ONE)
    bad = check_op(_sum_or_mean(True), squares, inputs={"x": (4, 5)}, variants=PLAIN, **ONE)
    assert good.ok, good.overview()
    assert _failing(bad) == {"variant:reduction=sum", "variant:reduction=none"}


def test_a_reference_that_is_not_deterministic_at_a_derived_value_is_not_applicable() -> None:
    def dropout(x: torch.Tensor, p: float = 0.0) -> torch.Tensor:
        return F.dropout(x, p)

    result = check_op(dropout, dropout, inputs={"x": (4, 5)}, variants=PLAIN, **ONE)
    assert result.ok
    why = _skipped(result)["variant:p=0.5"]
    assert "not deterministic at variant p=0.5" in why and "exclude: [p=0.5]" in why


def test_a_reference_not_finite_at_a_derived_value_is_not_applicable() -> None:
    def per_item(x: torch.Tensor, count: int = -1) -> torch.Tensor:
        return x.sum(-1) / count

    result = check_op(per_item, per_item, inputs={"x": (4, 5)}, variants=PLAIN, **ONE)
    assert result.ok
    assert "results are not finite at variant count=0" in _skipped(result)["variant:count=0"]


def test_a_long_dim_the_op_does_not_reduce_is_not_applicable_and_costs_no_memory() -> None:
    """M and N are both 8, so one dim: at 16384 the product would be 16384 x 16384 (2 GB in
    float64); the reference on the meta device says so before anything is allocated."""

    def bmm(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return torch.bmm(a, b)

    result = check_op(
        bmm, torch.bmm, inputs={"a": (2, 8, 4), "b": (2, 4, 8)},
        dtypes=["bfloat16"], raise_on_failure=False,
    )  # fmt: skip
    assert result.ok
    why = _skipped(result)["variant:a.1=16384"]
    assert "gives an output of 268435456 elements (its long dim is not reduced)" in why
    shapes = {g.check for g in result.groups if g.check.endswith("=16384")}
    assert {"variant:a.0=16384", "variant:a.2=16384"} <= shapes  # the batch and K dims ran


def _cumprod(divides: bool) -> Any:
    class CumProd(torch.autograd.Function):
        @staticmethod
        def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
            y = torch.cumprod(x, -1)
            ctx.save_for_backward(x, y)
            return y

        @staticmethod
        def backward(ctx: Any, g: torch.Tensor) -> torch.Tensor:
            x: torch.Tensor
            y: torch.Tensor
            x, y = ctx.saved_tensors
            if divides:  # the bug: d y_k / d x_i = y_k / x_i, inf/NaN at an exact zero
                return (g * y).flip(-1).cumsum(-1).flip(-1) / x
            n = x.shape[-1]
            grads = []
            for i in range(n):
                others = torch.cat(
                    [x[..., :i], torch.ones_like(x[..., i : i + 1]), x[..., i + 1 :]], -1
                )
                grads.append((g * torch.cumprod(others, -1))[..., i:].sum(-1))
            return torch.stack(grads, -1)

    return CumProd


def cumprod_reference(x: torch.Tensor) -> torch.Tensor:
    return torch.cumprod(x, -1)


def test_a_backward_that_divides_by_an_input_is_red_only_at_exact_zeros() -> None:
    inputs = {"x": (3, 6)}
    good = check_op(_cumprod(False), cumprod_reference, inputs=inputs, **ONE)
    bad = check_op(_cumprod(True), cumprod_reference, inputs=inputs, **ONE)
    assert good.ok, good.overview()
    assert _failing(bad) == {"variant:zeros"}
    (row,) = [s for g in bad.groups if g.check == "variant:zeros" and g.dtype == "float32"
              for s in g.tensors if s.status == "fail"]  # fmt: skip
    assert row.tensor == "grad.x" and row.tol.describe() == "finite (where the reference is)"


def test_another_subgradient_at_a_kink_is_not_blamed_at_exact_zeros() -> None:
    """relu'(0): torch takes 0; a hand-written `x >= 0` takes 1. Both are right."""

    class Relu(torch.autograd.Function):
        @staticmethod
        def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
            ctx.save_for_backward(x)
            return x.clamp(min=0)

        @staticmethod
        def backward(ctx: Any, g: torch.Tensor) -> torch.Tensor:
            x: torch.Tensor = ctx.saved_tensors[0]
            return g * (x >= 0)

    result = check_op(Relu, torch.relu, inputs={"x": (4, 8)}, **ONE)
    assert result.ok and "variant:zeros" in {g.check for g in result.groups}


def test_zeros_where_the_reference_itself_is_not_finite_are_not_applicable() -> None:
    result = check_op(torch.log, torch.log, inputs={"x": (4, 8)}, variants=PLAIN, **ONE)
    assert "results are not finite at variant zeros" in _skipped(result)["variant:zeros"]


class LayerNorm(torch.autograd.Function):
    """The textbook hand-written LayerNorm: at D = 1 every gradient but the bias's is 0."""

    @staticmethod
    def forward(
        ctx: Any, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float = 1e-5
    ) -> torch.Tensor:
        mean = x.mean(-1, keepdim=True)
        rstd = torch.rsqrt(x.var(-1, unbiased=False, keepdim=True) + eps)
        xhat = (x - mean) * rstd
        ctx.save_for_backward(xhat, rstd, weight)
        return xhat * weight + bias

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        xhat: torch.Tensor
        rstd: torch.Tensor
        weight: torch.Tensor
        xhat, rstd, weight = ctx.saved_tensors
        gx = g * weight
        dx = rstd * (gx - gx.mean(-1, keepdim=True) - xhat * (gx * xhat).mean(-1, keepdim=True))
        rows = tuple(range(g.dim() - 1))
        return dx, (g * xhat).sum(rows), g.sum(rows), None


def layer_norm(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float = 1e-5
) -> torch.Tensor:
    return F.layer_norm(x, (x.shape[-1],), weight, bias, eps)


def test_a_correct_layer_norm_is_green_in_float64_at_d_1() -> None:
    """torch's float64 gradients at D = 1 are rounding noise amplified by 1/sqrt(eps) (4e-14
    to 1e-13 where the truth and the candidate are 0), past a fixed ULP floor in 14 of 20
    seeds; the float64 allowance has room for the reference's own error, estimated from its
    float32 run and from a run on inputs one ULP away. A wrong bias gradient stays red."""
    inputs = {"x": (8, 16), "weight": (16,), "bias": (16,)}
    for seed in range(20):
        result = check_op(LayerNorm, layer_norm, inputs=inputs, dtypes=["float64"],
                          variants=["x.1=1"], seed=seed, raise_on_failure=False)  # fmt: skip
        assert result.ok, result.overview()

    class WrongBias(LayerNorm):
        @staticmethod
        def backward(ctx: Any, g: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
            dx, dw, db, none = LayerNorm.backward(ctx, g)
            assert db is not None
            return dx, dw, db * (1 + 1e-9), none

    wrong = check_op(WrongBias, layer_norm, inputs=inputs, dtypes=["float64"],
                     variants=["x.1=1"], raise_on_failure=False)  # fmt: skip
    assert _failing(wrong) == {"variant:x.1=1"}
