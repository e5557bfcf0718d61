"""The float64 truth of a `gradaudit.check(build=...)` case starts from the case's values.

`build(dtype)` puts the user's tensors in the audited precision by casting (`.to(dtype)`,
`module.to(dtype)`) or creating them in it (`torch.randn(..., dtype=dtype)`). For the truth
of a bfloat16 case, build runs again with `dtype=torch.float64` under `rounded_through`:
every tensor it casts or creates in float64 is first rounded through bfloat16, so the truth
differentiates at the very point the case did (as the op audit's truth takes the case's
rounded inputs), not at the unrounded one, whose distance would pass for autograd's error.
Values build derives in float64 after that (`W * 0.1`) are the truth's arithmetic.
"""

from __future__ import annotations

import random
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch


@contextmanager
def rounded_through(dtype: torch.dtype | None) -> Iterator[None]:
    """Round every float64 tensor cast or created while this runs through `dtype` (None:
    nothing changes)."""
    import torch
    from torch.overrides import TorchFunctionMode

    if dtype is None or dtype == torch.float64:
        yield
        return
    to: torch.dtype = dtype

    class _Round(TorchFunctionMode):
        def __torch_function__(
            self,
            func: Callable[..., Any],
            types: Any,
            args: tuple[Any, ...] = (),
            kwargs: dict[str, Any] | None = None,
        ) -> Any:
            kwargs = kwargs or {}
            return _rounded(func(*args, **kwargs), func, args, kwargs, to)

    with _Round():
        yield


CASTS = ("to", "double", "type", "_to_copy")


def _rounded(
    out: Any, func: Any, args: tuple[Any, ...], kwargs: dict[str, Any], dtype: torch.dtype
) -> Any:
    """`out`, rounded through `dtype` when it is a float64 tensor that a cast into float64
    or a creation with `dtype=float64` made. A cast that returned its float64 leaf itself
    gives a rounded copy instead (the leaf may be build's own data, reused by other runs)."""
    import torch

    if not isinstance(out, torch.Tensor) or out.dtype != torch.float64:
        return out
    source = args[0] if args else None
    cast = getattr(func, "__name__", "") in CASTS and isinstance(source, torch.Tensor)
    if isinstance(source, torch.Tensor) and out is source:
        if not cast or source.grad_fn is not None:
            return out
        return source.detach().to(dtype).to(torch.float64).requires_grad_(source.requires_grad)
    # a differentiable op given dtype= (softmax) may have saved its output for backward:
    # that one is the truth's arithmetic, not a value build put in the audited precision
    if cast or (kwargs.get("dtype") == torch.float64 and out.grad_fn is None):
        with torch.no_grad():
            out.copy_(out.to(dtype))
    return out


@contextmanager
def seeded(seed: int) -> Iterator[None]:
    """torch's (CPU and current devices'), Python's and, where loaded, numpy's global RNGs
    seeded with `seed` while this runs, and restored after it."""
    import torch

    state = random.getstate()
    numpy = sys.modules.get("numpy")
    numpy_state = numpy.random.get_state() if numpy is not None else None
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        random.seed(seed)
        if numpy is not None:
            numpy.random.seed(seed % 2**32)
        try:
            yield
        finally:
            random.setstate(state)
            if numpy is not None:
                numpy.random.set_state(numpy_state)
