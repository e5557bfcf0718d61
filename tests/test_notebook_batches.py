"""`gradaudit.check(build=..., batches=N)`: seeded batches, so the systematic-error check can
give a verdict, and a float64 truth that starts from each case's rounded values (issue 28
item 5)."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from gradaudit import check

Build = Any


def tanh_layer(delta: float, seen: list[tuple[torch.dtype, torch.Tensor, torch.Tensor]]) -> Build:
    """loss = sum(tanh(X W)^2), drawn from the global RNG; the manual dW scaled by 1 + delta."""

    def build(dtype: torch.dtype) -> tuple[Any, Any, Any]:
        X = torch.randn(64, 32).to(dtype)
        W = (torch.randn(32, 16) * 0.2).to(dtype).requires_grad_()
        seen.append((dtype, X.detach().clone(), W.detach().clone()))
        h = torch.tanh(X @ W)
        wide = torch.promote_types(dtype, torch.float32)  # a float32 accumulator in half types
        with torch.no_grad():
            dW = X.T.to(wide) @ (2 * h * (1 - h * h)).to(wide) * (1 + delta)
        return (h * h).sum(), {"W": W}, {"W": dW.to(dtype)}

    return build


def test_batches_are_seeded_the_same_for_every_dtype_and_differ_between_batches() -> None:
    seen: list[tuple[torch.dtype, torch.Tensor, torch.Tensor]] = []
    state = torch.random.get_rng_state()
    result = check(
        build=tanh_layer(0.0, seen), dtypes=["float64", "float32"], batches=3,
        seed=7, print_table=False,
    )  # fmt: skip
    assert result.ok
    assert torch.equal(torch.random.get_rng_state(), state)  # the caller's RNG untouched
    # per batch: float64, float32, and float32's truth (float64 at float32's values)
    assert [dtype for dtype, _, _ in seen] == [torch.float64, torch.float32, torch.float64] * 3
    xs = [x for _, x, _ in seen]
    for b in range(3):
        assert torch.equal(xs[3 * b].float(), xs[3 * b + 1])  # one draw per batch
        assert torch.equal(xs[3 * b + 2], xs[3 * b + 1].double())
    assert not torch.equal(xs[0], xs[3])
    with torch.random.fork_rng():
        torch.manual_seed(8)  # batch 1 is seed + 1
        assert torch.equal(torch.randn(64, 32).double(), xs[3])
    batches = {(g.dtype, s.tensor): s.batches for g in result.summary.groups for s in g.tensors}
    assert batches == {("float64", "W"): 3, ("float32", "W"): 3}


def test_the_truth_starts_from_the_cases_rounded_values() -> None:
    seen: list[tuple[torch.dtype, torch.Tensor, torch.Tensor]] = []
    check(build=tanh_layer(0.0, seen), dtypes=["bfloat16"], print_table=False)
    (case, truth) = seen
    assert case[0] == torch.bfloat16 and truth[0] == torch.float64
    assert torch.equal(truth[1], case[1].double()) and torch.equal(truth[2], case[2].double())


@pytest.mark.parametrize(("delta", "one", "many"), [(0.0, True, True), (0.008, True, False)])
def test_a_small_bias_passes_one_batch_and_is_caught_over_twenty(
    delta: float, one: bool, many: bool
) -> None:
    """0.8% too large in bfloat16 (eps 0.0078): inside one batch's allowance, but a bias
    the systematic check sees over 20 batches; the correct gradient stays green."""
    single = check(build=tanh_layer(delta, []), dtypes=["bfloat16"], print_table=False)
    batched = check(build=tanh_layer(delta, []), dtypes=["bfloat16"], batches=20, print_table=False)
    assert single.ok is one and batched.ok is many
    if not many:
        assert "systematic error" in batched["W", "bfloat16"].message


def test_batches_need_build() -> None:
    W = torch.randn(3, requires_grad=True)
    with pytest.raises(ValueError, match="batches= and seed= re-run build"):
        check((W * W).sum(), {"W": W}, {"W": 2 * W}, batches=2, print_table=False)
    with pytest.raises(ValueError, match="batches must be at least 1"):
        check(build=tanh_layer(0.0, []), batches=0, print_table=False)


def test_an_op_given_dtype_inside_build_keeps_its_saved_output() -> None:
    """softmax(..., dtype=dtype) saves its output for backward: the truth run must not
    round that one in place (autograd would refuse the backward)."""

    def build(dtype: torch.dtype) -> tuple[Any, Any, Any]:
        W = torch.randn(4, 6).to(dtype).requires_grad_()
        p = torch.softmax(W, -1, dtype=dtype)
        with torch.no_grad():
            g = 2 * p
            dW = (p * (g - (g * p).sum(-1, keepdim=True))).to(dtype)
        return (p * p).sum(), {"W": W}, {"W": dW}

    result = check(build=build, dtypes=["bfloat16"], print_table=False)
    assert result.ok, result.table
