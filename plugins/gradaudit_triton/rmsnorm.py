"""A fused RMSNorm with a weight in Triton, its autograd.Function and its plain reference.

y = x / sqrt(mean(x^2, -1) + eps) * weight over the last dim, any leading dims, any strides.
The forward kernel takes one program per row and saves each row's rstd; the backward kernel
gives each program a block of rows, writes their dx and one partial row of the weight
gradient, and the partials are summed here. Both accumulate in float32 for float16, bfloat16
and float32 inputs and in float64 for float64 ones.

Triton is imported on the first call (kernels.py), never by importing this module: the
plugin registry imports every plugin on every run, installed triton or not.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

INSTALL_HINT = "pip install 'gradaudit[triton]'"
# Programs of the backward kernel on a CPU (the interpreter): each covers cdiv(rows, 8) rows.
# On a GPU it is the number of SMs, as in Liger-Kernel's RMSNorm.
CPU_PROGRAMS = 8


@dataclass(frozen=True)
class Kernels:
    """The two @triton.jit kernels that TritonRMSNormFunction launches (the gallery's differ)."""

    forward: Any
    backward: Any


def load_kernels() -> Kernels:
    """The shipped kernels; ImportError naming the extra to install when triton is missing."""
    try:
        from gradaudit_triton import kernels
    except ModuleNotFoundError as exc:
        if exc.name is None or exc.name.split(".")[0] != "triton":
            raise
        raise ImportError(
            f"gradaudit_triton's kernels need triton, which is not installed: {INSTALL_HINT}"
        ) from exc
    return Kernels(kernels.rmsnorm_forward_kernel, kernels.rmsnorm_backward_kernel)


def accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _tl_dtype(dtype: torch.dtype) -> Any:
    import triton.language as tl

    return tl.float64 if dtype == torch.float64 else tl.float32


def _programs(device: torch.device) -> int:
    if device.type == "cuda":
        return int(torch.cuda.get_device_properties(device).multi_processor_count)
    return CPU_PROGRAMS


def _interpreted(fn: Any) -> bool:
    return type(fn).__name__ == "InterpretedFunction"


def _check_device(kernel: Any, t: torch.Tensor) -> None:
    """Refuse what would otherwise fail deep in triton: CPU tensors without the interpreter,
    or the interpreter switched on after triton.language was imported (its own functions,
    tl.sum among them, then stay compiled and raise 'outside of the scope of a kernel')."""
    import triton.language as tl

    if _interpreted(kernel) != _interpreted(tl.sum):
        raise RuntimeError(
            "TRITON_INTERPRET=1 was set after triton was imported: set it before triton is "
            "first imported"
        )
    if t.device.type == "cpu" and not _interpreted(kernel):
        raise RuntimeError(
            "Triton kernels run on CPU tensors only under its interpreter: set "
            "TRITON_INTERPRET=1 before triton is first imported"
        )


def _rows(t: torch.Tensor) -> torch.Tensor:
    """t as (rows, last dim): a view where the strides allow one, a copy otherwise."""
    return t.reshape(-1, t.shape[-1])


def _block(d: int) -> int:
    return max(1, 1 << (d - 1).bit_length())


def forward(
    x: torch.Tensor, weight: torch.Tensor, eps: float, kernels: Kernels
) -> tuple[torch.Tensor, torch.Tensor]:
    """(y, rstd): y shaped as x, rstd one entry per row in the accumulation dtype."""
    _check_device(kernels.forward, x)
    x2 = _rows(x)
    rows, d = x2.shape
    y = torch.empty((rows, d), dtype=x.dtype, device=x.device)
    rstd = torch.empty(rows, dtype=accumulation_dtype(x.dtype), device=x.device)
    if rows and d:
        kernels.forward[(rows,)](
            x2,
            weight,
            y,
            rstd,
            x2.stride(0),
            x2.stride(1),
            weight.stride(0),
            y.stride(0),
            y.stride(1),
            d,
            EPS=float(eps),
            BLOCK=_block(d),
            ACC=_tl_dtype(x.dtype),
        )
    return y.reshape(x.shape), rstd


def backward(
    grad: torch.Tensor,
    x: torch.Tensor,
    weight: torch.Tensor,
    rstd: torch.Tensor,
    kernels: Kernels,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(dx, dweight) from the upstream gradient and what forward saved."""
    x2, dy = _rows(x), _rows(grad)
    rows, d = x2.shape
    dx = torch.empty_like(x2)
    programs = min(rows, _programs(x.device))
    acc = accumulation_dtype(x.dtype)
    partial = torch.empty((programs, d), dtype=acc, device=x.device)
    if rows and d:
        per_program = -(-rows // programs)
        kernels.backward[(programs,)](
            dy,
            x2,
            weight,
            rstd,
            dx,
            partial,
            dy.stride(0),
            dy.stride(1),
            x2.stride(0),
            x2.stride(1),
            weight.stride(0),
            dx.stride(0),
            dx.stride(1),
            partial.stride(0),
            rows,
            d,
            per_program,
            BLOCK=_block(d),
            ACC=_tl_dtype(x.dtype),
        )
        dweight = partial.sum(0)
    else:
        dweight = torch.zeros(d, dtype=acc, device=x.device)
    return dx.reshape(x.shape), dweight.to(weight.dtype)


class TritonRMSNormFunction(torch.autograd.Function):
    """The fused RMSNorm: Triton forward and backward kernels (kernels.py)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, weight: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
        y, rstd = forward(x, weight, eps, load_kernels())
        ctx.save_for_backward(x, weight, rstd)
        return y

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, None]:
        x, weight, rstd = ctx.saved_tensors
        dx, dweight = backward(grad, x, weight, rstd, load_kernels())
        return dx, dweight, None


def function_with(
    kernels: Callable[[], Kernels], name: str, doc: str, module: str = __name__
) -> type[TritonRMSNormFunction]:
    """A TritonRMSNormFunction that launches other kernels (the gallery's bugs)."""

    def fwd(ctx: Any, x: torch.Tensor, weight: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
        y, rstd = forward(x, weight, eps, kernels())
        ctx.save_for_backward(x, weight, rstd)
        return y

    def bwd(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, None]:
        x, weight, rstd = ctx.saved_tensors
        dx, dweight = backward(grad, x, weight, rstd, kernels())
        return dx, dweight, None

    body = {
        "forward": staticmethod(fwd),
        "backward": staticmethod(bwd),
        "__doc__": doc,
        "__module__": module,
        "__qualname__": name,
    }
    return type(name, (TritonRMSNormFunction,), body)


def rmsnorm(x: torch.Tensor, weight: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    return TritonRMSNormFunction.apply(x, weight, eps)  # type: ignore[no-untyped-call,no-any-return]


def rmsnorm_reference(x: torch.Tensor, weight: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Plain PyTorch in the input's dtype; autograd differentiates it."""
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * weight
