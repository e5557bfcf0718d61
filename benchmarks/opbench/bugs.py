"""The benchmark's bugs: each the correct Function of ops.py with ONE change (marked BUG),
of a kind that reaches users of real kernels, tagged with its class:

- layout: assumes a contiguous, last-dim-only or 2-D input (or upstream gradient);
- argument: wrong only for a non-default non-tensor argument (dim, keepdim, ignore_index,
  reduction, beta, delta, padding_idx, num_groups ...);
- accumulation: accumulates in the input dtype (bfloat16/float16) instead of float32, which
  shows only on reductions longer than one tile (ops.BLOCK, ops.BLOCK_K);
- value: a plain math error;
- size: wrong only at odd sizes or size 1.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from opbench.ops import (
    BLOCK_K,
    BMM,
    CumProd,
    Embedding,
    GroupNorm,
    HuberLoss,
    LogSumExp,
    MaxDim,
    Mean,
    NLLLoss,
    Softmax,
    Softplus,
    SwiGLU,
    channel,
    kept_shape,
    per_channel,
    prefix_before,
    reduce_dims,
    row_major,
    suffix_scan,
    tiled_bmm,
    tiled_sum,
    to_last,
    unsqueeze_all,
    wide,
)

Tensor = torch.Tensor
CLASSES = ("layout", "argument", "accumulation", "value", "size")


@dataclass(frozen=True)
class Bug:
    name: str
    op: str
    function: type[torch.autograd.Function]
    kind: str  # one of CLASSES
    description: str


# --- softmax --------------------------------------------------------------------------------


class SoftmaxDimLast(Softmax):
    @staticmethod
    def backward(ctx: Any, g: Tensor) -> tuple[Tensor, None]:
        (y,) = ctx.saved_tensors
        gy = g.to(y.dtype) * y
        dx = gy - y * tiled_sum(gy, -1, y.dtype)  # BUG: the last dim, whatever `dim` is
        return dx.to(ctx.dtype), None


class SoftmaxAccInput(Softmax):
    @staticmethod
    def forward(ctx: Any, x: Tensor, dim: int = -1) -> Tensor:
        acc = wide(x.dtype)
        xc = x.to(acc)
        if x.numel() == 0:
            y = xc.detach().clone()
        else:
            e = (xc - xc.amax(dim, keepdim=True)).exp()
            y = e / tiled_sum(e, dim, x.dtype).to(acc)  # BUG: input-dtype accumulator
        ctx.save_for_backward(y)
        ctx.dim, ctx.dtype = dim, x.dtype
        return y.to(x.dtype)


class SoftmaxGradRowMajor(Softmax):
    @staticmethod
    def backward(ctx: Any, g: Tensor) -> tuple[Tensor, None]:
        (y,) = ctx.saved_tensors
        gy = row_major(g).to(y.dtype) * y  # BUG: reads the upstream gradient as contiguous
        dx = gy - y * tiled_sum(gy, ctx.dim, y.dtype)
        return dx.to(ctx.dtype), None


class SoftmaxTail(Softmax):
    @staticmethod
    def backward(ctx: Any, g: Tensor) -> tuple[Tensor, None]:
        (y,) = ctx.saved_tensors
        gy = g.to(y.dtype) * y
        n = gy.shape[ctx.dim] if gy.dim() else 1
        main = gy.narrow(ctx.dim, 0, n - n % 4) if gy.dim() else gy
        dx = gy - y * tiled_sum(main, ctx.dim, y.dtype)  # BUG: sum(g*y) over whole vectors of 4
        return dx.to(ctx.dtype), None


# --- logsumexp ------------------------------------------------------------------------------


class LogSumExpKeepdim(LogSumExp):
    @staticmethod
    def backward(ctx: Any, g: Tensor) -> tuple[Tensor, None, None]:
        xc, lse = ctx.saved_tensors
        gk = g.to(xc.dtype)
        # BUG: `elif not ctx.keepdim` lost: unsqueezes the reduced dims when keepdim=True too
        gk = gk.reshape(1) if len(ctx.shape) == 0 else unsqueeze_all(gk, ctx.dims)
        dx = gk * (xc - lse).exp()
        return dx.reshape(ctx.shape).to(ctx.dtype), None, None


def _logsumexp_forward(
    ctx: Any,
    x: Tensor,
    dim: int | tuple[int, ...],
    keepdim: bool,
    acc_input: bool,
    squeeze_all: bool,
) -> Tensor:
    """LogSumExp.forward with the two places a bug below changes."""
    acc = wide(x.dtype)
    xs = x.reshape(1) if x.dim() == 0 else x
    dims = reduce_dims(dim, xs.dim())
    xc = xs.to(acc)
    m = xc.amax(dims, keepdim=True)
    m = torch.where(torch.isinf(m), torch.zeros_like(m), m)
    s = tiled_sum(to_last((xc - m).exp(), dims), -1, x.dtype if acc_input else acc)
    lse = m + s.reshape(m.shape).to(acc).log()
    ctx.save_for_backward(xc, lse)
    ctx.dims, ctx.keepdim, ctx.shape, ctx.dtype = dims, keepdim, x.shape, x.dtype
    out = lse if keepdim else (lse.squeeze() if squeeze_all else lse.squeeze(dims))
    return (out.reshape(()) if x.dim() == 0 else out).to(x.dtype)


class LogSumExpAccInput(LogSumExp):
    @staticmethod
    def forward(
        ctx: Any, x: Tensor, dim: int | tuple[int, ...] = -1, keepdim: bool = False
    ) -> Tensor:
        # BUG: the sum of exponentials accumulates in the input dtype
        return _logsumexp_forward(ctx, x, dim, keepdim, acc_input=True, squeeze_all=False)


class LogSumExpExpSign(LogSumExp):
    @staticmethod
    def backward(ctx: Any, g: Tensor) -> tuple[Tensor, None, None]:
        xc, lse = ctx.saved_tensors
        gk = g.to(xc.dtype)
        if len(ctx.shape) == 0:
            gk = gk.reshape(1)
        elif not ctx.keepdim:
            gk = unsqueeze_all(gk, ctx.dims)
        dx = gk * (lse - xc).exp()  # BUG: exp(lse - x), not exp(x - lse)
        return dx.reshape(ctx.shape).to(ctx.dtype), None, None


class LogSumExpSqueezeAll(LogSumExp):
    @staticmethod
    def forward(
        ctx: Any, x: Tensor, dim: int | tuple[int, ...] = -1, keepdim: bool = False
    ) -> Tensor:
        # BUG: keepdim=False squeezes every size-1 dim, not only the reduced ones
        return _logsumexp_forward(ctx, x, dim, keepdim, acc_input=False, squeeze_all=True)


# --- group_norm -----------------------------------------------------------------------------


def _group_norm_forward(
    ctx: Any,
    x: Tensor,
    weight: Tensor | None,
    bias: Tensor | None,
    num_groups: int,
    eps: float,
    xg: Tensor,
) -> Tensor:
    """GroupNorm.forward after the grouping of x (xg: (N, G, count) in the wide dtype)."""
    acc = xg.dtype
    count = xg.shape[-1]
    mean = tiled_sum(xg, -1, acc) / count
    var = tiled_sum((xg - mean) ** 2, -1, acc) / count
    rstd = (var + eps).rsqrt()
    y = ((xg - mean) * rstd).reshape(x.shape)
    if weight is not None:
        y = y * channel(weight.to(acc), x.dim())
    if bias is not None:
        y = y + channel(bias.to(acc), x.dim())
    ctx.save_for_backward(x, weight, mean, rstd)
    ctx.num_groups, ctx.has_bias = num_groups, bias is not None
    return y.to(x.dtype)


class GroupNormView(GroupNorm):
    @staticmethod
    def forward(
        ctx: Any,
        x: Tensor,
        weight: Tensor | None = None,
        bias: Tensor | None = None,
        num_groups: int = 1,
        eps: float = 1e-5,
    ) -> Tensor:
        n, c = x.shape[0], x.shape[1]
        count = (c // num_groups) * math.prod(x.shape[2:])
        xg = x.view(n, num_groups, count).to(wide(x.dtype))  # BUG: .view needs contiguous x
        return _group_norm_forward(ctx, x, weight, bias, num_groups, eps, xg)


GroupGrads = tuple[Tensor, Tensor | None, Tensor | None, None, None]


def _group_norm_backward(
    ctx: Any, g: Tensor, params_acc: torch.dtype | None, group_stats: bool, mean_term: bool
) -> GroupGrads:
    """GroupNorm.backward with the three places a bug below changes: the dtype of the
    per-channel sums (None: the wide one), per-group statistics, the mean(g) term."""
    x, weight, mean, rstd = ctx.saved_tensors
    acc = wide(x.dtype)
    pacc = params_acc or acc
    n, c, groups = x.shape[0], x.shape[1], ctx.num_groups
    count = (c // groups) * math.prod(x.shape[2:])
    gc = g.to(acc)
    xhat = ((x.reshape(n, groups, count).to(acc) - mean) * rstd).reshape(x.shape)
    dw = db = None
    if weight is not None:
        dw = tiled_sum(per_channel(gc * xhat), -1, pacc).reshape(c).to(weight.dtype)
        gc = gc * channel(weight.to(acc), x.dim())
    if ctx.has_bias:
        db = tiled_sum(per_channel(g.to(acc)), -1, pacc).reshape(c).to(x.dtype)
    gg, xg = gc.reshape(n, groups, count), xhat.reshape(n, groups, count)
    if group_stats:
        mean_g = tiled_sum(gg, -1, acc) / count
        mean_gx = tiled_sum(gg * xg, -1, acc) / count
    else:
        whole = count * groups
        mean_g = tiled_sum(gg.reshape(n, 1, whole), -1, acc) / whole
        mean_gx = tiled_sum((gg * xg).reshape(n, 1, whole), -1, acc) / whole
    dx = rstd * (gg - mean_g - xg * mean_gx) if mean_term else rstd * (gg - xg * mean_gx)
    return dx.reshape(x.shape).to(x.dtype), dw, db, None, None


class GroupNormAccInput(GroupNorm):
    @staticmethod
    def backward(ctx: Any, g: Tensor) -> GroupGrads:
        # BUG: weight and bias gradients summed over N x spatial in the input dtype
        return _group_norm_backward(ctx, g, g.dtype, group_stats=True, mean_term=True)


class GroupNormWholeSample(GroupNorm):
    @staticmethod
    def backward(ctx: Any, g: Tensor) -> GroupGrads:
        # BUG: dx's means over the whole sample, not per group (right for num_groups=1)
        return _group_norm_backward(ctx, g, None, group_stats=False, mean_term=True)


class GroupNormNoMeanTerm(GroupNorm):
    @staticmethod
    def backward(ctx: Any, g: Tensor) -> GroupGrads:
        # BUG: dx without the - mean(g * w) term
        return _group_norm_backward(ctx, g, None, group_stats=True, mean_term=False)


# --- mean -----------------------------------------------------------------------------------


class MeanAccInput(Mean):
    @staticmethod
    def forward(
        ctx: Any, x: Tensor, dim: int | tuple[int, ...] | None = None, keepdim: bool = False
    ) -> Tensor:
        xs = x.reshape(1) if x.dim() == 0 else x
        dims = reduce_dims(dim, xs.dim())
        n = math.prod(xs.shape[d] for d in dims)
        total = tiled_sum(to_last(xs, dims), -1, x.dtype)  # BUG: input-dtype accumulator
        out = (total / n).reshape(kept_shape(xs.shape, dims))
        out = out if keepdim else out.squeeze(dims)
        ctx.shape, ctx.dims, ctx.keepdim, ctx.n = x.shape, dims, keepdim, n
        return (out.reshape(()) if x.dim() == 0 else out).to(x.dtype)


class MeanKeepdim(Mean):
    @staticmethod
    def backward(ctx: Any, g: Tensor) -> tuple[Tensor, None, None]:
        if len(ctx.shape) == 0:
            return g / ctx.n, None, None
        gk = unsqueeze_all(g, ctx.dims)  # BUG: as if keepdim=False, always
        return (gk.to(wide(g.dtype)) / ctx.n).to(g.dtype).expand(ctx.shape), None, None


class MeanCount(Mean):
    @staticmethod
    def forward(
        ctx: Any, x: Tensor, dim: int | tuple[int, ...] | None = None, keepdim: bool = False
    ) -> Tensor:
        acc = wide(x.dtype)
        xs = x.reshape(1) if x.dim() == 0 else x
        dims = reduce_dims(dim, xs.dim())
        n = xs.numel() if dim is None else xs.shape[dims[-1]]  # BUG: a tuple's last dim only
        total = tiled_sum(to_last(xs.to(acc), dims), -1, acc)
        out = (total / n).reshape(kept_shape(xs.shape, dims))
        out = out if keepdim else out.squeeze(dims)
        ctx.shape, ctx.dims, ctx.keepdim, ctx.n = x.shape, dims, keepdim, n
        return (out.reshape(()) if x.dim() == 0 else out).to(x.dtype)


class MeanStorage(Mean):
    @staticmethod
    def forward(
        ctx: Any, x: Tensor, dim: int | tuple[int, ...] | None = None, keepdim: bool = False
    ) -> Tensor:
        acc = wide(x.dtype)
        xs = x.reshape(1) if x.dim() == 0 else x
        dims = reduce_dims(dim, xs.dim())
        n = math.prod(xs.shape[d] for d in dims)
        flat = to_last(xs.to(acc), dims)
        if len(dims) == xs.dim():  # BUG: a full reduction's fast path reads x's storage flat
            flat = torch.as_strided(xs, (xs.numel(),), (1,), xs.storage_offset()).to(acc)
        total = tiled_sum(flat, -1, acc)
        out = (total / n).reshape(kept_shape(xs.shape, dims))
        out = out if keepdim else out.squeeze(dims)
        ctx.shape, ctx.dims, ctx.keepdim, ctx.n = x.shape, dims, keepdim, n
        return (out.reshape(()) if x.dim() == 0 else out).to(x.dtype)


# --- softplus -------------------------------------------------------------------------------


class SoftplusBeta(Softplus):
    @staticmethod
    def backward(ctx: Any, g: Tensor) -> tuple[Tensor, None, None]:
        (x,) = ctx.saved_tensors
        xc = x.to(wide(x.dtype))
        bx = xc * ctx.beta
        # BUG: sigmoid(x), not sigmoid(beta * x)
        slope = torch.where(bx > ctx.threshold, torch.ones_like(bx), torch.sigmoid(xc))
        return (g.to(bx.dtype) * slope).to(x.dtype), None, None


class SoftplusThreshold(Softplus):
    @staticmethod
    def backward(ctx: Any, g: Tensor) -> tuple[Tensor, None, None]:
        (x,) = ctx.saved_tensors
        bx = x.to(wide(x.dtype)) * ctx.beta
        slope = torch.sigmoid(bx)  # BUG: the linear region past `threshold` is left out
        return (g.to(bx.dtype) * slope).to(x.dtype), None, None


class SoftplusSign(Softplus):
    @staticmethod
    def backward(ctx: Any, g: Tensor) -> tuple[Tensor, None, None]:
        (x,) = ctx.saved_tensors
        bx = x.to(wide(x.dtype)) * ctx.beta
        # BUG: sigmoid(-beta x)
        slope = torch.where(bx > ctx.threshold, torch.ones_like(bx), torch.sigmoid(-bx))
        return (g.to(bx.dtype) * slope).to(x.dtype), None, None


class SoftplusFlatOut(Softplus):
    @staticmethod
    def backward(ctx: Any, g: Tensor) -> tuple[Tensor, None, None]:
        (x,) = ctx.saved_tensors
        bx = x.to(wide(x.dtype)) * ctx.beta
        slope = torch.where(bx > ctx.threshold, torch.ones_like(bx), torch.sigmoid(bx))
        dx = torch.empty_like(x)
        dx.view(-1).copy_((g.to(bx.dtype) * slope).reshape(-1))  # BUG: empty_like keeps x's
        return dx, None, None  # strides, and .view(-1) of a transposed buffer fails


# --- huber_loss -----------------------------------------------------------------------------


class HuberAccInput(HuberLoss):
    @staticmethod
    def forward(
        ctx: Any, input: Tensor, target: Tensor, reduction: str = "mean", delta: float = 1.0
    ) -> Tensor:
        acc = wide(input.dtype)
        d = input.to(acc) - target.to(acc)
        ad = d.abs()
        loss = torch.where(ad < delta, 0.5 * d * d, delta * (ad - 0.5 * delta))
        if reduction != "none":
            # BUG: input-dtype accumulator
            loss = tiled_sum(loss.reshape(-1), 0, input.dtype).reshape(()).to(acc)
            if reduction == "mean":
                loss = loss / d.numel()
        ctx.save_for_backward(d)
        ctx.reduction, ctx.delta, ctx.dtypes = reduction, delta, (input.dtype, target.dtype)
        return loss.to(input.dtype)


class HuberSumAsMean(HuberLoss):
    @staticmethod
    def backward(ctx: Any, g: Tensor) -> tuple[Tensor, Tensor, None, None]:
        (d,) = ctx.saved_tensors
        scale = g.to(d.dtype)
        if ctx.reduction != "none":  # BUG: divides by n for "sum" too
            scale = scale / d.numel()
        grad = d.clamp(-ctx.delta, ctx.delta) * scale
        return grad.to(ctx.dtypes[0]), (-grad).to(ctx.dtypes[1]), None, None


class HuberDeltaOne(HuberLoss):
    @staticmethod
    def backward(ctx: Any, g: Tensor) -> tuple[Tensor, Tensor, None, None]:
        (d,) = ctx.saved_tensors
        scale = g.to(d.dtype)
        if ctx.reduction == "mean":
            scale = scale / d.numel()
        grad = d.clamp(-1.0, 1.0) * scale  # BUG: clamps at the default delta
        return grad.to(ctx.dtypes[0]), (-grad).to(ctx.dtypes[1]), None, None


class HuberTargetSign(HuberLoss):
    @staticmethod
    def backward(ctx: Any, g: Tensor) -> tuple[Tensor, Tensor, None, None]:
        (d,) = ctx.saved_tensors
        scale = g.to(d.dtype)
        if ctx.reduction == "mean":
            scale = scale / d.numel()
        grad = d.clamp(-ctx.delta, ctx.delta) * scale
        return grad.to(ctx.dtypes[0]), grad.to(ctx.dtypes[1]), None, None  # BUG: target's sign


# --- nll_loss -------------------------------------------------------------------------------


def _nll_backward(ctx: Any, g: Tensor, keep_rows: bool, sign: float) -> Tensor:
    safe, keep, count = ctx.saved_tensors
    gc = g.to(count.dtype)
    if ctx.reduction == "mean":
        gc = gc / count
    rows = torch.where(keep, sign * gc, torch.zeros_like(gc)) if keep_rows else sign * gc
    dims = ctx.shape
    shape = (dims[0], *dims[2:], dims[1]) if len(dims) >= 2 else dims
    dlogp = torch.zeros(shape, dtype=gc.dtype, device=g.device)
    dlogp = dlogp.scatter(-1, safe.unsqueeze(-1), rows.expand(keep.shape).unsqueeze(-1))
    dlogp = dlogp.movedim(-1, 1) if len(dims) >= 2 else dlogp
    return dlogp.to(ctx.dtype)


class NLLIgnoredRowsGrad(NLLLoss):
    @staticmethod
    def backward(ctx: Any, g: Tensor) -> tuple[Tensor, None, None, None]:
        # BUG: ignored rows get a gradient too (at class 0, their masked target)
        return _nll_backward(ctx, g, keep_rows=False, sign=-1.0), None, None, None


class NLLSign(NLLLoss):
    @staticmethod
    def backward(ctx: Any, g: Tensor) -> tuple[Tensor, None, None, None]:
        return _nll_backward(ctx, g, keep_rows=True, sign=1.0), None, None, None  # BUG: +g


def _nll_forward(
    ctx: Any,
    logp: Tensor,
    target: Tensor,
    ignore_index: int,
    reduction: str,
    count_all: bool,
    acc_input: bool,
) -> Tensor:
    """NLLLoss.forward with the two places a bug below changes."""
    acc = wide(logp.dtype)
    keep = target != ignore_index
    safe = torch.where(keep, target, torch.zeros_like(target))
    picked = (logp.movedim(1, -1) if logp.dim() >= 2 else logp).gather(-1, safe.unsqueeze(-1))
    picked = picked.squeeze(-1).to(acc)
    loss = torch.where(keep, -picked, torch.zeros_like(picked))
    count = (torch.tensor(float(keep.numel())) if count_all else keep.sum()).to(acc)
    if reduction != "none":
        loss = tiled_sum(loss.reshape(-1), 0, logp.dtype if acc_input else acc)
        loss = loss.reshape(()).to(acc)
        if reduction == "mean":
            loss = loss / count
    ctx.save_for_backward(safe, keep, count)
    ctx.reduction, ctx.shape, ctx.dtype = reduction, logp.shape, logp.dtype
    return loss.to(logp.dtype)


class NLLMeanAllRows(NLLLoss):
    @staticmethod
    def forward(
        ctx: Any,
        logp: Tensor,
        target: Tensor,
        ignore_index: int = -100,
        reduction: str = "mean",
    ) -> Tensor:
        # BUG: "mean" divides by every row, ignored ones included
        return _nll_forward(ctx, logp, target, ignore_index, reduction, True, False)


class NLLAccInput(NLLLoss):
    @staticmethod
    def forward(
        ctx: Any,
        logp: Tensor,
        target: Tensor,
        ignore_index: int = -100,
        reduction: str = "mean",
    ) -> Tensor:
        # BUG: the sum over rows accumulates in the input dtype
        return _nll_forward(ctx, logp, target, ignore_index, reduction, False, True)


# --- embedding ------------------------------------------------------------------------------


class EmbeddingPadding(Embedding):
    @staticmethod
    def backward(ctx: Any, g: Tensor) -> tuple[None, Tensor, None]:
        (indices,) = ctx.saved_tensors
        width = g.shape[-1]
        acc = wide(ctx.dtype)
        dw = torch.zeros(ctx.rows, width, dtype=acc, device=g.device)
        dw.index_add_(0, indices.reshape(-1), g.reshape(-1, width).to(acc))
        return None, dw.to(ctx.dtype), None  # BUG: the padding row keeps its gradient


class EmbeddingGradView(Embedding):
    @staticmethod
    def backward(ctx: Any, g: Tensor) -> tuple[None, Tensor, None]:
        (indices,) = ctx.saved_tensors
        width = g.shape[-1]
        acc = wide(ctx.dtype)
        dw = torch.zeros(ctx.rows, width, dtype=acc, device=g.device)
        dw.index_add_(0, indices.reshape(-1), g.view(-1, width).to(acc))  # BUG: .view
        if ctx.padding_idx is not None:
            dw[ctx.padding_idx] = 0
        return None, dw.to(ctx.dtype), None


class EmbeddingFlatTokens(Embedding):
    @staticmethod
    def backward(ctx: Any, g: Tensor) -> tuple[None, Tensor, None]:
        (indices,) = ctx.saved_tensors
        width = g.shape[-1]
        acc = wide(ctx.dtype)
        dw = torch.zeros(ctx.rows, width, dtype=acc, device=g.device)
        # BUG: assumes a 1-D list of tokens (indices.shape[0] rows of gradient)
        dw.index_add_(0, indices.reshape(-1), g.reshape(indices.shape[0], width).to(acc))
        if ctx.padding_idx is not None:
            dw[ctx.padding_idx] = 0
        return None, dw.to(ctx.dtype), None


class EmbeddingLastWriteWins(Embedding):
    @staticmethod
    def backward(ctx: Any, g: Tensor) -> tuple[None, Tensor, None]:
        (indices,) = ctx.saved_tensors
        width = g.shape[-1]
        acc = wide(ctx.dtype)
        dw = torch.zeros(ctx.rows, width, dtype=acc, device=g.device)
        # BUG: index_copy_: a repeated token's gradients overwrite, not add
        dw.index_copy_(0, indices.reshape(-1), g.reshape(-1, width).to(acc))
        if ctx.padding_idx is not None:
            dw[ctx.padding_idx] = 0
        return None, dw.to(ctx.dtype), None


# --- bmm ------------------------------------------------------------------------------------


class BMMAccInput(BMM):
    @staticmethod
    def forward(ctx: Any, a: Tensor, b: Tensor) -> Tensor:
        ctx.save_for_backward(a, b)
        return tiled_bmm(a, b, a.dtype).to(a.dtype)  # BUG: input-dtype accumulator


class BMMKTail(BMM):
    @staticmethod
    def forward(ctx: Any, a: Tensor, b: Tensor) -> Tensor:
        ctx.save_for_backward(a, b)
        acc = wide(a.dtype)
        k = a.shape[2]
        out = torch.zeros(a.shape[0], a.shape[1], b.shape[2], dtype=acc, device=a.device)
        for k0 in range(0, k - k % BLOCK_K, BLOCK_K):  # BUG: no masked last tile
            out = out + torch.bmm(
                a[:, :, k0 : k0 + BLOCK_K].to(acc), b[:, k0 : k0 + BLOCK_K].to(acc)
            )
        return out.to(a.dtype)


class BMMRowMajorB(BMM):
    @staticmethod
    def forward(ctx: Any, a: Tensor, b: Tensor) -> Tensor:
        ctx.save_for_backward(a, b)
        return tiled_bmm(a, row_major(b), wide(a.dtype)).to(a.dtype)  # BUG: b read as contiguous


# --- cumprod --------------------------------------------------------------------------------


class CumProdDivide(CumProd):
    @staticmethod
    def backward(ctx: Any, g: Tensor) -> tuple[Tensor, None]:
        (x,) = ctx.saved_tensors
        acc = wide(x.dtype)
        xs, gs = (x.reshape(1), g.reshape(1)) if x.dim() == 0 else (x, g)
        xc, gc = xs.to(acc).movedim(ctx.dim, -1), gs.to(acc).movedim(ctx.dim, -1)
        y = xc.cumprod(-1)
        # BUG: sum over i >= k of g[i] y[i] / x[k]: divides by zero where x has zeros
        dx = ((gc * y).flip(-1).cumsum(-1).flip(-1) / xc).movedim(-1, ctx.dim)
        return dx.reshape(x.shape).to(x.dtype), None


class CumProdInclusive(CumProd):
    @staticmethod
    def backward(ctx: Any, g: Tensor) -> tuple[Tensor, None]:
        (x,) = ctx.saved_tensors
        acc = wide(x.dtype)
        xs, gs = (x.reshape(1), g.reshape(1)) if x.dim() == 0 else (x, g)
        xc, gc = xs.to(acc).movedim(ctx.dim, -1), gs.to(acc).movedim(ctx.dim, -1)
        # BUG: the prefix product up to and including k, not before k
        dx = (xc.cumprod(-1) * suffix_scan(xc, gc)).movedim(-1, ctx.dim)
        return dx.reshape(x.shape).to(x.dtype), None


class CumProdDimLast(CumProd):
    @staticmethod
    def backward(ctx: Any, g: Tensor) -> tuple[Tensor, None]:
        (x,) = ctx.saved_tensors
        acc = wide(x.dtype)
        xs, gs = (x.reshape(1), g.reshape(1)) if x.dim() == 0 else (x, g)
        xc, gc = xs.to(acc), gs.to(acc)  # BUG: scans the last dim, whatever `dim` is
        dx = prefix_before(xc) * suffix_scan(xc, gc)
        return dx.reshape(x.shape).to(x.dtype), None


# --- max ------------------------------------------------------------------------------------


class MaxKeepdim(MaxDim):
    @staticmethod
    def forward(ctx: Any, x: Tensor, dim: int = -1, keepdim: bool = False) -> tuple[Tensor, Tensor]:
        values, indices = torch.max(x, dim, keepdim=True)
        ctx.save_for_backward(indices)
        ctx.shape, ctx.dim, ctx.keepdim = x.shape, dim, keepdim
        values, indices = values.squeeze(dim), indices.squeeze(dim)  # BUG: whatever keepdim is
        ctx.mark_non_differentiable(indices)
        return values, indices


class MaxDimLast(MaxDim):
    @staticmethod
    def backward(ctx: Any, g: Tensor, _: Tensor | None) -> tuple[Tensor, None, None]:
        (indices,) = ctx.saved_tensors
        gk = g if ctx.keepdim or len(ctx.shape) == 0 else g.unsqueeze(ctx.dim)
        dx = torch.zeros(ctx.shape, dtype=g.dtype, device=g.device)
        return dx.scatter(-1, indices, gk), None, None  # BUG: the last dim, whatever `dim` is


class MaxDimOne(MaxDim):
    @staticmethod
    def backward(ctx: Any, g: Tensor, _: Tensor | None) -> tuple[Tensor, None, None]:
        (indices,) = ctx.saved_tensors
        gk = g if ctx.keepdim or len(ctx.shape) == 0 else g.unsqueeze(ctx.dim)
        dx = torch.zeros(ctx.shape, dtype=g.dtype, device=g.device)
        axis = 1 if len(ctx.shape) > 1 else 0  # BUG: written for 2-D inputs: dim 1 is the row
        return dx.scatter(axis, indices, gk), None, None


# --- swiglu ---------------------------------------------------------------------------------


class SwiGLUSiluSign(SwiGLU):
    @staticmethod
    def backward(ctx: Any, g: Tensor) -> tuple[Tensor, Tensor]:
        gate, up = ctx.saved_tensors
        acc = wide(gate.dtype)
        a, u, gc = gate.to(acc), up.to(acc), g.to(acc)
        s = torch.sigmoid(a)
        da = gc * u * s * (1 + a * s)  # BUG: (1 + a s), not (1 + a (1 - s))
        du = gc * a * s
        return da.to(gate.dtype), du.to(up.dtype)


class SwiGLURowMajorUp(SwiGLU):
    @staticmethod
    def backward(ctx: Any, g: Tensor) -> tuple[Tensor, Tensor]:
        gate, up = ctx.saved_tensors
        acc = wide(gate.dtype)
        a, u, gc = gate.to(acc), row_major(up).to(acc), g.to(acc)  # BUG: up read as contiguous
        s = torch.sigmoid(a)
        da = gc * u * s * (1 + a * (1 - s))
        du = gc * a * s
        return da.to(gate.dtype), du.to(up.dtype)


class SwiGLUTail(SwiGLU):
    @staticmethod
    def backward(ctx: Any, g: Tensor) -> tuple[Tensor, Tensor]:
        gate, up = ctx.saved_tensors
        acc = wide(gate.dtype)
        a, u, gc = gate.to(acc), up.to(acc), g.to(acc)
        s = torch.sigmoid(a)
        da = gc * u * s * (1 + a * (1 - s))
        du = gc * a * s
        if du.dim():
            n = du.shape[-1]
            du[..., n - n % 4 :] = 0  # BUG: d up over whole vectors of 4 only
        return da.to(gate.dtype), du.to(up.dtype)


BUGS: list[Bug] = [
    Bug("softmax-dim-last", "softmax", SoftmaxDimLast, "argument",
        "backward reduces sum(g*y) over the last dim whatever `dim` is"),
    Bug("softmax-acc-input", "softmax", SoftmaxAccInput, "accumulation",
        "forward's sum of exponentials accumulates in the input dtype"),
    Bug("softmax-grad-row-major", "softmax", SoftmaxGradRowMajor, "layout",
        "backward reads the upstream gradient as if contiguous (data_ptr)"),
    Bug("softmax-tail", "softmax", SoftmaxTail, "size",
        "backward's sum(g*y) runs over whole vectors of 4 and drops the tail"),
    Bug("logsumexp-keepdim", "logsumexp", LogSumExpKeepdim, "argument",
        "backward unsqueezes the reduced dims even when keepdim=True"),
    Bug("logsumexp-acc-input", "logsumexp", LogSumExpAccInput, "accumulation",
        "forward's sum of exponentials accumulates in the input dtype"),
    Bug("logsumexp-exp-sign", "logsumexp", LogSumExpExpSign, "value",
        "backward uses exp(lse - x) instead of exp(x - lse)"),
    Bug("logsumexp-squeeze-all", "logsumexp", LogSumExpSqueezeAll, "size",
        "forward squeezes every size-1 dim, not only the reduced ones"),
    Bug("group_norm-view", "group_norm", GroupNormView, "layout",
        "forward groups the channels with x.view (needs a contiguous x)"),
    Bug("group_norm-acc-input", "group_norm", GroupNormAccInput, "accumulation",
        "weight and bias gradients summed over N x spatial in the input dtype"),
    Bug("group_norm-whole-sample", "group_norm", GroupNormWholeSample, "argument",
        "dx's means taken over the whole sample, not per group (right for num_groups=1)"),
    Bug("group_norm-no-mean-term", "group_norm", GroupNormNoMeanTerm, "value",
        "dx misses the - mean(g * w) term"),
    Bug("mean-acc-input", "mean", MeanAccInput, "accumulation",
        "forward's sum accumulates in the input dtype"),
    Bug("mean-keepdim", "mean", MeanKeepdim, "argument",
        "backward unsqueezes the upstream gradient as if keepdim=False, always"),
    Bug("mean-count", "mean", MeanCount, "argument",
        "divides by the size of the last listed dim only when `dim` is a tuple"),
    Bug("mean-storage", "mean", MeanStorage, "layout",
        "a full reduction's fast path reads x's storage as a flat contiguous array"),
    Bug("softplus-beta", "softplus", SoftplusBeta, "argument",
        "backward uses sigmoid(x) instead of sigmoid(beta * x)"),
    Bug("softplus-threshold", "softplus", SoftplusThreshold, "argument",
        "backward ignores `threshold`: sigmoid in the linear region too"),
    Bug("softplus-sign", "softplus", SoftplusSign, "value",
        "backward uses sigmoid(-beta * x)"),
    Bug("softplus-flat-out", "softplus", SoftplusFlatOut, "layout",
        "backward writes dx through empty_like(x).view(-1) (x's strides)"),
    Bug("huber-acc-input", "huber_loss", HuberAccInput, "accumulation",
        "forward's sum for 'mean'/'sum' accumulates in the input dtype"),
    Bug("huber-sum-as-mean", "huber_loss", HuberSumAsMean, "argument",
        "backward divides by n for reduction='sum' too"),
    Bug("huber-delta-one", "huber_loss", HuberDeltaOne, "argument",
        "backward clamps the difference at +-1, not +-delta"),
    Bug("huber-target-sign", "huber_loss", HuberTargetSign, "value",
        "the target's gradient has the input's sign"),
    Bug("nll-ignored-rows-grad", "nll_loss", NLLIgnoredRowsGrad, "argument",
        "backward gives ignored rows (target == ignore_index) a gradient too"),
    Bug("nll-mean-all-rows", "nll_loss", NLLMeanAllRows, "argument",
        "'mean' divides by every row instead of the rows not ignored"),
    Bug("nll-acc-input", "nll_loss", NLLAccInput, "accumulation",
        "forward's sum over rows accumulates in the input dtype"),
    Bug("nll-sign", "nll_loss", NLLSign, "value",
        "backward writes +g instead of -g at the target"),
    Bug("embedding-padding", "embedding", EmbeddingPadding, "argument",
        "the padding_idx row keeps its gradient"),
    Bug("embedding-grad-view", "embedding", EmbeddingGradView, "layout",
        "backward flattens the upstream gradient with .view (needs it contiguous)"),
    Bug("embedding-flat-tokens", "embedding", EmbeddingFlatTokens, "layout",
        "backward assumes 1-D indices (a flat token list)"),
    Bug("embedding-last-write-wins", "embedding", EmbeddingLastWriteWins, "value",
        "backward copies rows (index_copy_) so repeated tokens overwrite, not add"),
    Bug("bmm-acc-input", "bmm", BMMAccInput, "accumulation",
        "forward's K loop accumulates in the input dtype"),
    Bug("bmm-k-tail", "bmm", BMMKTail, "size",
        "forward's K loop has no masked last tile (K % 16 columns dropped)"),
    Bug("bmm-row-major-b", "bmm", BMMRowMajorB, "layout",
        "forward reads b as if contiguous (a transposed k in attention)"),
    Bug("cumprod-divide", "cumprod", CumProdDivide, "value",
        "backward divides by x (inf/nan where x has zeros)"),
    Bug("cumprod-inclusive", "cumprod", CumProdInclusive, "value",
        "backward's prefix product includes x[k] (off by one)"),
    Bug("cumprod-dim-last", "cumprod", CumProdDimLast, "argument",
        "backward scans the last dim whatever `dim` is"),
    Bug("max-keepdim", "max", MaxKeepdim, "argument",
        "forward squeezes the reduced dim even when keepdim=True"),
    Bug("max-dim-last", "max", MaxDimLast, "argument",
        "backward scatters along the last dim whatever `dim` is"),
    Bug("max-dim-one", "max", MaxDimOne, "layout",
        "backward scatters along dim 1 (written for 2-D inputs)"),
    Bug("swiglu-silu-sign", "swiglu", SwiGLUSiluSign, "value",
        "d gate uses s (1 + a s) instead of s (1 + a (1 - s))"),
    Bug("swiglu-row-major-up", "swiglu", SwiGLURowMajorUp, "layout",
        "backward reads `up` as if contiguous (data_ptr)"),
    Bug("swiglu-tail", "swiglu", SwiGLUTail, "size",
        "backward's d up covers whole vectors of 4 and leaves the tail zero"),
]  # fmt: skip

BY_NAME = {bug.name: bug for bug in BUGS}
