"""The benchmark's correct ops: each a torch.autograd.Function with a hand-written backward,
and the plain-PyTorch reference that autograd differentiates.

The Functions are written the way a kernel author writes them: half types (bfloat16,
float16) are computed in float32 and float64 stays float64 (`wide`); long reductions run as a
tiled kernel's loop does, BLOCK elements a tile, each tile's partial sum added into an
accumulator of that wider dtype (`tiled_sum`). Non-tensor arguments come the way torch takes
them, with their defaults in forward's signature (`dim=-1`, `keepdim=False`,
`ignore_index=-100`, `reduction="mean"` ...). Every Function takes what its OpInfo samples
give (0-d and empty tensors, any number of dims) and any layout (transposed, strided,
expanded inputs and upstream gradients).

bugs.py holds the broken copies: each the correct Function with one change.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F

Tensor = torch.Tensor
BLOCK = 32  # elements per tile of a reduction loop (tiled_sum)
BLOCK_K = 16  # elements of the contraction dim per tile of the batched matmul


def wide(dtype: torch.dtype) -> torch.dtype:
    """The accumulator dtype of a careful kernel: float32 for half types, float64 stays."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def tiled_sum(t: Tensor, dim: int, acc: torch.dtype) -> Tensor:
    """Sum over `dim` (kept, size 1) as a tiled kernel's loop does: each tile of BLOCK elements
    is summed in `acc`, and added into a running accumulator of dtype `acc`."""
    if t.dim() == 0:
        return t.to(acc)
    total: Tensor | None = None
    for tile in torch.split(t, BLOCK, dim):  # a dimension of size 0 still gives one (empty) tile
        part = tile.to(acc).sum(dim, keepdim=True)
        total = part if total is None else total + part
    assert total is not None
    return total


def row_major(t: Tensor) -> Tensor:
    """`t`'s storage read as a row-major tensor of t's shape, as a kernel handed
    `t.data_ptr()` reads it: right only when t is contiguous."""
    strides, step = [], 1
    for size in reversed(t.shape):
        strides.append(step)
        step *= size
    return torch.as_strided(t, t.shape, tuple(reversed(strides)), t.storage_offset())


def reduce_dims(dim: int | tuple[int, ...] | None, ndim: int) -> tuple[int, ...]:
    """Non-negative, sorted reduction dims; None and () mean every dim (as torch.mean)."""
    if dim is None:
        return tuple(range(ndim))
    dims = (dim,) if isinstance(dim, int) else tuple(dim)
    if not dims:
        return tuple(range(ndim))
    return tuple(sorted(d % max(ndim, 1) for d in dims))


def to_last(t: Tensor, dims: tuple[int, ...]) -> Tensor:
    """`t` with `dims` moved to the end and flattened into one: (kept..., reduced)."""
    kept = [s for d, s in enumerate(t.shape) if d not in dims]
    moved = t.movedim(dims, tuple(range(t.dim() - len(dims), t.dim())))
    return moved.reshape(*kept, math.prod(t.shape[d] for d in dims))


def kept_shape(shape: Sequence[int], dims: tuple[int, ...]) -> list[int]:
    """`shape` after a reduction over `dims` with keepdim=True."""
    return [1 if d in dims else s for d, s in enumerate(shape)]


def unsqueeze_all(t: Tensor, dims: tuple[int, ...]) -> Tensor:
    """Undo a keepdim=False reduction: size-1 dims back at `dims` (sorted)."""
    for d in dims:
        t = t.unsqueeze(d)
    return t


# --- softmax(x, dim=-1) ---------------------------------------------------------------------


class Softmax(torch.autograd.Function):
    """y = exp(x - max) / sum(exp(x - max)) over `dim`; dx = y * (g - sum(g * y)), from y
    kept in the wide dtype for the backward."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, dim: int = -1) -> Tensor:
        acc = wide(x.dtype)
        xc = x.to(acc)
        if x.numel() == 0:
            y = xc.detach().clone()
        else:
            e = (xc - xc.amax(dim, keepdim=True)).exp()
            y = e / tiled_sum(e, dim, acc)
        ctx.save_for_backward(y)
        ctx.dim, ctx.dtype = dim, x.dtype
        return y.to(x.dtype)

    @staticmethod
    def backward(ctx: Any, g: Tensor) -> tuple[Tensor, None]:
        (y,) = ctx.saved_tensors
        gy = g.to(y.dtype) * y
        dx = gy - y * tiled_sum(gy, ctx.dim, y.dtype)
        return dx.to(ctx.dtype), None


def softmax_reference(x: Tensor, dim: int = -1) -> Tensor:
    return torch.softmax(x, dim)


# --- logsumexp(x, dim=-1, keepdim=False) ----------------------------------------------------


class LogSumExp(torch.autograd.Function):
    """lse = max + log(sum(exp(x - max))) over `dim` (an int or a tuple); dx = g * exp(x - lse),
    from lse kept in the wide dtype for the backward."""

    @staticmethod
    def forward(
        ctx: Any, x: Tensor, dim: int | tuple[int, ...] = -1, keepdim: bool = False
    ) -> Tensor:
        acc = wide(x.dtype)
        xs = x.reshape(1) if x.dim() == 0 else x
        dims = reduce_dims(dim, xs.dim())
        xc = xs.to(acc)
        m = xc.amax(dims, keepdim=True)
        m = torch.where(torch.isinf(m), torch.zeros_like(m), m)
        s = tiled_sum(to_last((xc - m).exp(), dims), -1, acc)
        lse = m + s.reshape(m.shape).log()
        ctx.save_for_backward(xc, lse)
        ctx.dims, ctx.keepdim, ctx.shape, ctx.dtype = dims, keepdim, x.shape, x.dtype
        out = lse if keepdim else lse.squeeze(dims)
        return (out.reshape(()) if x.dim() == 0 else out).to(x.dtype)

    @staticmethod
    def backward(ctx: Any, g: Tensor) -> tuple[Tensor, None, None]:
        xc, lse = ctx.saved_tensors
        gk = g.to(xc.dtype)
        if len(ctx.shape) == 0:
            gk = gk.reshape(1)
        elif not ctx.keepdim:
            gk = unsqueeze_all(gk, ctx.dims)
        dx = gk * (xc - lse).exp()
        return dx.reshape(ctx.shape).to(ctx.dtype), None, None


def logsumexp_reference(
    x: Tensor, dim: int | tuple[int, ...] = -1, keepdim: bool = False
) -> Tensor:
    return torch.logsumexp(x, dim, keepdim)


# --- group_norm(x, weight=None, bias=None, num_groups=1, eps=1e-5) --------------------------


def channel(t: Tensor, ndim: int) -> Tensor:
    """A per-channel vector shaped to broadcast over (N, C, *spatial)."""
    return t.reshape(-1, *([1] * (ndim - 2)))


def per_channel(t: Tensor) -> Tensor:
    """(N, C, *spatial) as (C, N * spatial): the rows a per-channel sum reduces."""
    n, c = t.shape[0], t.shape[1]
    return t.transpose(0, 1).reshape(c, n * math.prod(t.shape[2:]))


class GroupNorm(torch.autograd.Function):
    """Normalise each sample's channels in `num_groups` groups over (C / G) * spatial elements,
    then scale and shift per channel. Input (N, C, *spatial)."""

    @staticmethod
    def forward(
        ctx: Any,
        x: Tensor,
        weight: Tensor | None = None,
        bias: Tensor | None = None,
        num_groups: int = 1,
        eps: float = 1e-5,
    ) -> Tensor:
        acc = wide(x.dtype)
        n, c = x.shape[0], x.shape[1]
        count = (c // num_groups) * math.prod(x.shape[2:])
        xg = x.reshape(n, num_groups, count).to(acc)
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

    @staticmethod
    def backward(ctx: Any, g: Tensor) -> tuple[Tensor, Tensor | None, Tensor | None, None, None]:
        x, weight, mean, rstd = ctx.saved_tensors
        acc = wide(x.dtype)
        n, c, groups = x.shape[0], x.shape[1], ctx.num_groups
        count = (c // groups) * math.prod(x.shape[2:])
        gc = g.to(acc)
        xhat = ((x.reshape(n, groups, count).to(acc) - mean) * rstd).reshape(x.shape)
        dw = db = None
        if weight is not None:
            dw = tiled_sum(per_channel(gc * xhat), -1, acc).reshape(c).to(weight.dtype)
            gc = gc * channel(weight.to(acc), x.dim())
        if ctx.has_bias:
            db = tiled_sum(per_channel(g.to(acc)), -1, acc).reshape(c).to(x.dtype)
        gg, xg = gc.reshape(n, groups, count), xhat.reshape(n, groups, count)
        mean_g = tiled_sum(gg, -1, acc) / count
        mean_gx = tiled_sum(gg * xg, -1, acc) / count
        dx = rstd * (gg - mean_g - xg * mean_gx)
        return dx.reshape(x.shape).to(x.dtype), dw, db, None, None


def group_norm_reference(
    x: Tensor,
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    num_groups: int = 1,
    eps: float = 1e-5,
) -> Tensor:
    return F.group_norm(x, num_groups, weight, bias, eps)


# --- mean(x, dim=None, keepdim=False) -------------------------------------------------------


class Mean(torch.autograd.Function):
    """The mean over `dim` (None, an int or a tuple); dx = g / n broadcast back."""

    @staticmethod
    def forward(
        ctx: Any, x: Tensor, dim: int | tuple[int, ...] | None = None, keepdim: bool = False
    ) -> Tensor:
        acc = wide(x.dtype)
        xs = x.reshape(1) if x.dim() == 0 else x
        dims = reduce_dims(dim, xs.dim())
        n = math.prod(xs.shape[d] for d in dims)
        total = tiled_sum(to_last(xs.to(acc), dims), -1, acc)
        out = (total / n).reshape(kept_shape(xs.shape, dims))
        out = out if keepdim else out.squeeze(dims)
        ctx.shape, ctx.dims, ctx.keepdim, ctx.n = x.shape, dims, keepdim, n
        return (out.reshape(()) if x.dim() == 0 else out).to(x.dtype)

    @staticmethod
    def backward(ctx: Any, g: Tensor) -> tuple[Tensor, None, None]:
        if len(ctx.shape) == 0:
            return g / ctx.n, None, None
        gk = g if ctx.keepdim else unsqueeze_all(g, ctx.dims)
        return (gk.to(wide(g.dtype)) / ctx.n).to(g.dtype).expand(ctx.shape), None, None


def mean_reference(
    x: Tensor, dim: int | tuple[int, ...] | None = None, keepdim: bool = False
) -> Tensor:
    return torch.mean(x, dim, keepdim)


# --- softplus(x, beta=1.0, threshold=20.0) --------------------------------------------------


class Softplus(torch.autograd.Function):
    """y = log(1 + exp(beta x)) / beta, or x where beta x > threshold;
    dx = g * sigmoid(beta x), or g past the threshold."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, beta: float = 1.0, threshold: float = 20.0) -> Tensor:
        xc = x.to(wide(x.dtype))
        bx = xc * beta
        y = torch.where(bx > threshold, xc, torch.log1p(bx.exp()) / beta)
        ctx.save_for_backward(x)
        ctx.beta, ctx.threshold = beta, threshold
        return y.to(x.dtype)

    @staticmethod
    def backward(ctx: Any, g: Tensor) -> tuple[Tensor, None, None]:
        (x,) = ctx.saved_tensors
        bx = x.to(wide(x.dtype)) * ctx.beta
        slope = torch.where(bx > ctx.threshold, torch.ones_like(bx), torch.sigmoid(bx))
        return (g.to(bx.dtype) * slope).to(x.dtype), None, None


def softplus_reference(x: Tensor, beta: float = 1.0, threshold: float = 20.0) -> Tensor:
    return F.softplus(x, beta, threshold)


# --- huber_loss(input, target, reduction="mean", delta=1.0) ---------------------------------


class HuberLoss(torch.autograd.Function):
    """l = d^2 / 2 where |d| < delta, else delta (|d| - delta / 2), d = input - target;
    reduced by `reduction`. d input = clamp(d, -delta, delta) * g (/ n), d target = minus it."""

    @staticmethod
    def forward(
        ctx: Any, input: Tensor, target: Tensor, reduction: str = "mean", delta: float = 1.0
    ) -> Tensor:
        acc = wide(input.dtype)
        d = input.to(acc) - target.to(acc)
        ad = d.abs()
        loss = torch.where(ad < delta, 0.5 * d * d, delta * (ad - 0.5 * delta))
        if reduction != "none":
            loss = tiled_sum(loss.reshape(-1), 0, acc).reshape(())
            if reduction == "mean":
                loss = loss / d.numel()
        ctx.save_for_backward(d)
        ctx.reduction, ctx.delta, ctx.dtypes = reduction, delta, (input.dtype, target.dtype)
        return loss.to(input.dtype)

    @staticmethod
    def backward(ctx: Any, g: Tensor) -> tuple[Tensor, Tensor, None, None]:
        (d,) = ctx.saved_tensors
        scale = g.to(d.dtype)
        if ctx.reduction == "mean":
            scale = scale / d.numel()
        grad = d.clamp(-ctx.delta, ctx.delta) * scale
        return grad.to(ctx.dtypes[0]), (-grad).to(ctx.dtypes[1]), None, None


def huber_loss_reference(
    input: Tensor, target: Tensor, reduction: str = "mean", delta: float = 1.0
) -> Tensor:
    return F.huber_loss(input, target, reduction=reduction, delta=delta)


# --- nll_loss(logp, target, ignore_index=-100, reduction="mean") ----------------------------


def class_last(t: Tensor) -> Tensor:
    """(N, C, *d) -> (N, *d, C); (C,) stays."""
    return t.movedim(1, -1) if t.dim() >= 2 else t


class NLLLoss(torch.autograd.Function):
    """-logp[target] per row (class dim 1, or 0 for a single row), rows whose target is
    `ignore_index` left out; `mean` divides by the rows kept."""

    @staticmethod
    def forward(
        ctx: Any,
        logp: Tensor,
        target: Tensor,
        ignore_index: int = -100,
        reduction: str = "mean",
    ) -> Tensor:
        acc = wide(logp.dtype)
        keep = target != ignore_index
        safe = torch.where(keep, target, torch.zeros_like(target))
        picked = class_last(logp).gather(-1, safe.unsqueeze(-1)).squeeze(-1).to(acc)
        loss = torch.where(keep, -picked, torch.zeros_like(picked))
        count = keep.sum().to(acc)
        if reduction != "none":
            loss = tiled_sum(loss.reshape(-1), 0, acc).reshape(())
            if reduction == "mean":
                loss = loss / count
        ctx.save_for_backward(safe, keep, count)
        ctx.reduction, ctx.shape, ctx.dtype = reduction, logp.shape, logp.dtype
        return loss.to(logp.dtype)

    @staticmethod
    def backward(ctx: Any, g: Tensor) -> tuple[Tensor, None, None, None]:
        safe, keep, count = ctx.saved_tensors
        gc = g.to(count.dtype)
        if ctx.reduction == "mean":
            gc = gc / count
        rows = torch.where(keep, -gc, torch.zeros_like(gc))
        dims = ctx.shape
        shape = (dims[0], *dims[2:], dims[1]) if len(dims) >= 2 else dims
        dlogp = torch.zeros(shape, dtype=gc.dtype, device=g.device)
        dlogp = dlogp.scatter(-1, safe.unsqueeze(-1), rows.unsqueeze(-1))
        dlogp = dlogp.movedim(-1, 1) if len(ctx.shape) >= 2 else dlogp
        return dlogp.to(ctx.dtype), None, None, None


def nll_loss_reference(
    logp: Tensor, target: Tensor, ignore_index: int = -100, reduction: str = "mean"
) -> Tensor:
    return F.nll_loss(logp, target, ignore_index=ignore_index, reduction=reduction)


# --- embedding(indices, weight, padding_idx=None) -------------------------------------------


class Embedding(torch.autograd.Function):
    """Rows of `weight` picked by `indices`; the weight gradient adds every token's upstream
    gradient into its row (in float32 for half types); the padding row gets none."""

    @staticmethod
    def forward(
        ctx: Any, indices: Tensor, weight: Tensor, padding_idx: int | None = None
    ) -> Tensor:
        out = weight.index_select(0, indices.reshape(-1))
        ctx.save_for_backward(indices)
        ctx.rows, ctx.dtype, ctx.padding_idx = weight.shape[0], weight.dtype, padding_idx
        return out.reshape(*indices.shape, weight.shape[1])

    @staticmethod
    def backward(ctx: Any, g: Tensor) -> tuple[None, Tensor, None]:
        (indices,) = ctx.saved_tensors
        width = g.shape[-1]
        acc = wide(ctx.dtype)
        dw = torch.zeros(ctx.rows, width, dtype=acc, device=g.device)
        dw.index_add_(0, indices.reshape(-1), g.reshape(-1, width).to(acc))
        if ctx.padding_idx is not None:
            dw[ctx.padding_idx] = 0
        return None, dw.to(ctx.dtype), None


def embedding_reference(indices: Tensor, weight: Tensor, padding_idx: int | None = None) -> Tensor:
    return F.embedding(indices, weight, padding_idx)


# --- bmm(a, b) ------------------------------------------------------------------------------


def tiled_bmm(a: Tensor, b: Tensor, acc: torch.dtype) -> Tensor:
    """a @ b, (B, M, K) x (B, K, N), as a tiled kernel's K loop: BLOCK_K at a time, each
    tile's product added into an accumulator of dtype `acc`."""
    out = torch.zeros(a.shape[0], a.shape[1], b.shape[2], dtype=acc, device=a.device)
    for k0 in range(0, a.shape[2], BLOCK_K):
        out = out + torch.bmm(a[:, :, k0 : k0 + BLOCK_K].to(acc), b[:, k0 : k0 + BLOCK_K].to(acc))
    return out


class BMM(torch.autograd.Function):
    """out = a @ b per batch; da = g @ b^T, db = a^T @ g."""

    @staticmethod
    def forward(ctx: Any, a: Tensor, b: Tensor) -> Tensor:
        ctx.save_for_backward(a, b)
        return tiled_bmm(a, b, wide(a.dtype)).to(a.dtype)

    @staticmethod
    def backward(ctx: Any, g: Tensor) -> tuple[Tensor, Tensor]:
        a, b = ctx.saved_tensors
        acc = wide(a.dtype)
        da = tiled_bmm(g, b.transpose(1, 2), acc)
        db = tiled_bmm(a.transpose(1, 2), g, acc)
        return da.to(a.dtype), db.to(b.dtype)


def bmm_reference(a: Tensor, b: Tensor) -> Tensor:
    return torch.bmm(a, b)


# --- cumprod(x, dim=-1) ---------------------------------------------------------------------


def prefix_before(x: Tensor) -> Tensor:
    """Exclusive prefix products along the last dim: prod(x[..., :k]) at k."""
    return torch.cat([torch.ones_like(x[..., :1]), x[..., :-1]], -1).cumprod(-1)


def suffix_scan(x: Tensor, g: Tensor) -> Tensor:
    """r[k] = g[k] + x[k+1] * r[k+1] along the last dim (sum over i >= k of g[i] times the
    product of x over (k, i]), a reverse scan; no division, so zeros in x are fine."""
    n = x.shape[-1]
    if n == 0:
        return torch.zeros_like(g)
    carry = torch.zeros_like(g[..., 0])
    out: list[Tensor] = []
    for k in reversed(range(n)):
        carry = g[..., k] + (x[..., k + 1] * carry if k + 1 < n else 0)
        out.append(carry)
    return torch.stack(out[::-1], -1)


class CumProd(torch.autograd.Function):
    """y[k] = prod(x[..k]) along `dim`; dx[k] = prod(x[..k-1]) * r[k] (suffix_scan)."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, dim: int = -1) -> Tensor:
        ctx.save_for_backward(x)
        ctx.dim = dim
        return torch.cumprod(x.to(wide(x.dtype)), dim).to(x.dtype)

    @staticmethod
    def backward(ctx: Any, g: Tensor) -> tuple[Tensor, None]:
        (x,) = ctx.saved_tensors
        acc = wide(x.dtype)
        xs, gs = (x.reshape(1), g.reshape(1)) if x.dim() == 0 else (x, g)
        xc, gc = xs.to(acc).movedim(ctx.dim, -1), gs.to(acc).movedim(ctx.dim, -1)
        dx = (prefix_before(xc) * suffix_scan(xc, gc)).movedim(-1, ctx.dim)
        return dx.reshape(x.shape).to(x.dtype), None


def cumprod_reference(x: Tensor, dim: int = -1) -> Tensor:
    return torch.cumprod(x, dim)


# --- max(x, dim=-1, keepdim=False) -> (values, indices) -------------------------------------


class MaxDim(torch.autograd.Function):
    """The largest value over `dim` and its index (torch.max's); the gradient goes to that
    index alone."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, dim: int = -1, keepdim: bool = False) -> tuple[Tensor, Tensor]:
        values, indices = torch.max(x, dim, keepdim=True)
        ctx.save_for_backward(indices)
        ctx.shape, ctx.dim, ctx.keepdim = x.shape, dim, keepdim
        if not keepdim:
            values, indices = values.squeeze(dim), indices.squeeze(dim)
        ctx.mark_non_differentiable(indices)
        return values, indices

    @staticmethod
    def backward(ctx: Any, g: Tensor, _: Tensor | None) -> tuple[Tensor, None, None]:
        (indices,) = ctx.saved_tensors
        gk = g if ctx.keepdim or len(ctx.shape) == 0 else g.unsqueeze(ctx.dim)
        dx = torch.zeros(ctx.shape, dtype=g.dtype, device=g.device)
        return dx.scatter(ctx.dim, indices, gk), None, None


def max_reference(x: Tensor, dim: int = -1, keepdim: bool = False) -> tuple[Tensor, Tensor]:
    values, indices = torch.max(x, dim, keepdim)
    return values, indices


# --- swiglu(gate, up) = silu(gate) * up -----------------------------------------------------


class SwiGLU(torch.autograd.Function):
    """y = gate * sigmoid(gate) * up; d gate = g up s (1 + gate (1 - s)), d up = g gate s."""

    @staticmethod
    def forward(ctx: Any, gate: Tensor, up: Tensor) -> Tensor:
        acc = wide(gate.dtype)
        a = gate.to(acc)
        ctx.save_for_backward(gate, up)
        return (a * torch.sigmoid(a) * up.to(acc)).to(gate.dtype)

    @staticmethod
    def backward(ctx: Any, g: Tensor) -> tuple[Tensor, Tensor]:
        gate, up = ctx.saved_tensors
        acc = wide(gate.dtype)
        a, u, gc = gate.to(acc), up.to(acc), g.to(acc)
        s = torch.sigmoid(a)
        da = gc * u * s * (1 + a * (1 - s))
        du = gc * a * s
        return da.to(gate.dtype), du.to(up.dtype)


def swiglu_reference(gate: Tensor, up: Tensor) -> Tensor:
    return F.silu(gate) * up
