"""Plausible bugs in the example ops, each of a kind that reached users of real kernels.

Each is the correct op with one change. tests/test_ops_gallery.py states, per bug, the
exact cases of an op audit that fail; `BUGS` maps a name to (buggy op, what it gets wrong).
"""

from __future__ import annotations

from typing import Any

import torch

from gradaudit_ops.logsoftmax import LogSoftmaxFunction
from gradaudit_ops.rmsnorm import RMSNormFunction, compute_dtype
from gradaudit_ops.xent import SoftmaxCrossEntropy


def _row_major(shape: torch.Size) -> tuple[int, ...]:
    strides, step = [], 1
    for size in reversed(shape):
        strides.append(step)
        step *= size
    return tuple(reversed(strides))


class XentMissingScale(SoftmaxCrossEntropy):
    """Backward forgets the 1/n of the mean: right only when n = 1."""

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None, None, None]:
        n = ctx.saved_tensors[-1]
        dz, *_ = SoftmaxCrossEntropy.backward(ctx, grad)
        return dz * n.to(dz.dtype), None, None, None


class XentOddVocab(SoftmaxCrossEntropy):
    """Backward runs over the vocabulary in blocks of 4 and drops the tail (V % 4 columns),
    as a vectorised kernel without a masked remainder does."""

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None, None, None]:
        dz, *_ = SoftmaxCrossEntropy.backward(ctx, grad)
        vocab = dz.shape[-1]
        dz[..., vocab - vocab % 4 :] = 0
        return dz, None, None, None


class XentLocalNormaliser(SoftmaxCrossEntropy):
    """Backward divides by the rows it was given rather than by `n_items` (the whole
    batch's count): right for a batch of exactly n_items rows, wrong once the batch is
    split into micro-batches for gradient accumulation."""

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None, None, None]:
        valid, n = ctx.saved_tensors[2], ctx.saved_tensors[-1]
        dz, *_ = SoftmaxCrossEntropy.backward(ctx, grad)
        return dz * (n / valid.sum()).to(dz.dtype), None, None, None


def _rmsnorm_backward(
    x: torch.Tensor,
    weight: torch.Tensor,
    rstd: torch.Tensor,
    g: torch.Tensor,
    axis: int = -1,
    first_row_only: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, None]:
    work = compute_dtype(x.dtype)
    g, xhat = g.to(work), x.to(work) * rstd
    gxhat = g * weight.to(work)
    dx = rstd * (gxhat - xhat * (gxhat * xhat).mean(axis, keepdim=True))
    rows_g = g.reshape(-1, x.shape[-1])
    if first_row_only:
        rows_g = rows_g[:1]
    dw = (rows_g * xhat.reshape(-1, x.shape[-1])).sum(0)
    return dx.to(x.dtype), dw.to(weight.dtype), None


class RMSNormWrongAxis(RMSNormFunction):
    """Backward reduces over dim 1, not -1: the same for 2-D inputs, wrong with more dims
    (Liger-Kernel's GroupNorm was wrong for inputs of more than 3 dims)."""

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, None]:
        x, weight, rstd = ctx.saved_tensors
        return _rmsnorm_backward(x, weight, rstd, grad, axis=1)


class RMSNormAssumesContiguous(RMSNormFunction):
    """Backward reads the upstream gradient as a row-major view of its storage, as a kernel
    handed `grad.data_ptr()` does: wrong for a transposed or strided gradient, out of
    bounds for an expanded one (FlashAttention's non-contiguous dout)."""

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, None]:
        x, weight, rstd = ctx.saved_tensors
        flat = torch.as_strided(grad, grad.shape, _row_major(grad.shape))
        return _rmsnorm_backward(x, weight, rstd, flat)


class RMSNormFirstRowGrad(RMSNormFunction):
    """The weight gradient takes every row's upstream gradient from row 0: invisible when
    the upstream gradient is uniform (all ones), as in many kernel tests (Liger #1298)."""

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, None]:
        x, weight, rstd = ctx.saved_tensors
        return _rmsnorm_backward(x, weight, rstd, grad, first_row_only=True)


class RMSNormInPlace(RMSNormFunction):
    """Backward saves memory by normalising the saved input in place: the caller's x is
    overwritten, and a second backward reads garbage (unsloth #5002)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, weight: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
        out = RMSNormFunction.forward(ctx, x, weight, eps)
        ctx.x = x  # kept outside save_for_backward, so autograd's version check never sees it
        return out

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, None]:
        x, (_, weight, rstd) = ctx.x, ctx.saved_tensors
        dx, dw, _ = _rmsnorm_backward(x, weight, rstd, grad)
        with torch.no_grad():
            x.mul_(rstd.to(x.dtype))
        return dx, dw, None


class XentIgnoresIgnoreIndex(SoftmaxCrossEntropy):
    """Rows whose target is ignore_index get a gradient too (the mask is left out)."""

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None, None, None]:
        logits, safe, _, top, lse, n = ctx.saved_tensors
        z = logits.reshape(-1, logits.shape[-1]).to(lse.dtype)
        p = torch.exp((z - top) - lse)
        p[torch.arange(p.shape[0]), safe] -= 1.0
        p *= grad.to(p.dtype) / n  # bug: not `* valid[:, None]`
        return p.view(logits.shape).to(logits.dtype), None, None, None


class RMSNormLowAccumulator(RMSNormFunction):
    """The weight gradient's sum over rows keeps its running total in the input dtype: each
    row is added in float32, then the total is stored back in bfloat16/float16, as a kernel
    that loops over rows with an accumulator of the tensor's dtype does. Exact for float32
    and float64 (the accumulator is the compute dtype); in half types it loses what a
    float32 accumulator keeps once there are many rows (a long batch)."""

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, None]:
        x, weight, rstd = ctx.saved_tensors
        dx, _, _ = _rmsnorm_backward(x, weight, rstd, grad)
        work = compute_dtype(x.dtype)
        rows = (grad.to(work) * x.to(work) * rstd).reshape(-1, x.shape[-1])
        acc = torch.zeros(x.shape[-1], dtype=x.dtype)  # bug: not `dtype=work`
        for row in rows:
            acc = (acc.to(work) + row).to(x.dtype)
        return dx, acc.to(weight.dtype), None


class LogSoftmaxLastDim(LogSoftmaxFunction):
    """The backward sums along the last dim, whatever `dim` the forward took."""

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        (y,) = ctx.saved_tensors
        return grad - torch.exp(y) * grad.sum(-1, keepdim=True), None  # bug: not ctx.dim


BUGS: dict[str, tuple[type[torch.autograd.Function], str]] = {
    "xent-ignores-ignore-index": (XentIgnoresIgnoreIndex, "ignored rows get a gradient"),
    "log-softmax-last-dim": (LogSoftmaxLastDim, "a backward hard-wired to the last dim"),
    "rmsnorm-low-accumulator": (RMSNormLowAccumulator, "a half-precision accumulator"),
    "xent-missing-scale": (XentMissingScale, "a scale factor missing in backward"),
    "xent-odd-vocab": (XentOddVocab, "odd sizes handled wrong"),
    "xent-local-normaliser": (XentLocalNormaliser, "accumulation normalisation"),
    "rmsnorm-wrong-axis": (RMSNormWrongAxis, "a wrong reduction axis"),
    "rmsnorm-assumes-contiguous": (RMSNormAssumesContiguous, "a .view that assumes contiguity"),
    "rmsnorm-first-row-grad": (RMSNormFirstRowGrad, "needs a non-uniform upstream gradient"),
    "rmsnorm-in-place": (RMSNormInPlace, "saved tensors overwritten in place"),
}
