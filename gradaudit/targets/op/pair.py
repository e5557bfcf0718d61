"""A hand-written forward/backward pair as an op candidate, with no autograd.Function.

llm.c-style code has `forward(x, w, b, ...) -> (out, cache)` and `backward(dout, cache) ->
(dx, dw, db)`: the gradients of forward's floating-point tensor arguments, in their order.
`check_op((forward, backward), reference, ...)` (a spec: `candidate: {forward: mod:fn,
backward: mod:fn}`) audits it as it audits a Function: `as_function` wraps the pair in one,
called with forward's own signature (keywords and defaults, which argument variants read).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any


class PairError(TypeError):
    """The pair broke its contract (forward's result, backward's gradient count)."""


def as_function(
    forward: Callable[..., Any], backward: Callable[..., Any], label: str
) -> Callable[..., Any]:
    """A callable with forward's signature that runs the pair as an autograd.Function."""
    import torch

    class Pair(torch.autograd.Function):
        @staticmethod
        def forward(ctx: Any, *args: Any) -> Any:
            made = forward(*args)
            if not (isinstance(made, tuple) and len(made) == 2):
                raise PairError(f"{label}: forward must return (out, cache), not {_kind(made)}")
            out, ctx.cache = made
            tensors = [isinstance(a, torch.Tensor) and a.is_floating_point() for a in args]
            ctx.floats = [i for i, is_float in enumerate(tensors) if is_float]
            ctx.count = len(args)
            return out

        @staticmethod
        def backward(ctx: Any, *douts: Any) -> Any:
            grads = backward(douts[0] if len(douts) == 1 else douts, ctx.cache)
            grads = (grads,) if isinstance(grads, torch.Tensor) else tuple(grads)
            if len(grads) != len(ctx.floats):
                raise PairError(
                    f"{label}: backward returned {len(grads)} gradients for forward's "
                    f"{len(ctx.floats)} floating-point tensor arguments"
                )
            full: list[Any] = [None] * ctx.count
            for position, grad in zip(ctx.floats, grads, strict=True):
                full[position] = grad
            return tuple(full)

    signature = inspect.signature(forward)

    def call(*args: Any, **kwargs: Any) -> Any:
        bound = signature.bind(*args, **kwargs)
        bound.apply_defaults()
        return Pair.apply(*bound.args)  # type: ignore[no-untyped-call]

    call.__qualname__ = label
    call.__signature__ = signature  # type: ignore[attr-defined]
    return call


def _kind(value: object) -> str:
    if isinstance(value, tuple):
        return f"a tuple of {len(value)}"
    return f"a {type(value).__name__}"
