"""The Triton kernels of the fused RMSNorm. Importing this module imports triton.

Set TRITON_INTERPRET=1 before triton is first imported to run them on CPU tensors (Triton's
interpreter); on a GPU they compile as usual. rmsnorm.py launches them.

Every tensor is addressed through the strides it is given (a row stride and a column
stride per 2-D tensor, one stride for the weight), so transposed, strided and expanded
(stride 0) views need no copy. ACC is the accumulation type: float32 for float16, bfloat16
and float32 inputs, float64 for float64 ones.
"""

import triton
import triton.language as tl


@triton.jit
def rmsnorm_forward_kernel(
    X,
    W,
    Y,
    RSTD,
    stride_x_row,
    stride_x_col,
    stride_w,
    stride_y_row,
    stride_y_col,
    D,
    EPS: tl.constexpr,
    BLOCK: tl.constexpr,
    ACC: tl.constexpr,
):
    """One program per row: y = x * rstd * w, and the row's rstd = 1 / sqrt(mean(x^2) + eps)."""
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK)
    mask = cols < D
    x_in = tl.load(X + row * stride_x_row + cols * stride_x_col, mask=mask, other=0.0)
    x = x_in.to(ACC)
    w = tl.load(W + cols * stride_w, mask=mask, other=0.0).to(ACC)
    sum_sq = tl.sum(x * x, axis=0)
    # eps is a constexpr built with tl.full: a float kernel argument would arrive as float32
    # (as would a bare constexpr float), and float64 would add a rounded eps.
    eps = tl.full((), EPS, ACC)
    mean_sq = sum_sq / D + eps
    # compiled for a GPU, float64 tl.rsqrt is rsqrt.approx.f64; sqrt and / round correctly
    rstd = 1.0 / tl.sqrt(mean_sq) if ACC == tl.float64 else tl.rsqrt(mean_sq)  # noqa: SIM300
    tl.store(RSTD + row, rstd)
    y = x * rstd * w
    tl.store(Y + row * stride_y_row + cols * stride_y_col, y.to(Y.dtype.element_ty), mask=mask)


@triton.jit
def rmsnorm_backward_kernel(
    DY,
    X,
    W,
    RSTD,
    DX,
    DW_PARTIAL,
    stride_dy_row,
    stride_dy_col,
    stride_x_row,
    stride_x_col,
    stride_w,
    stride_dx_row,
    stride_dx_col,
    stride_partial,
    M,
    D,
    rows_per_program,
    BLOCK: tl.constexpr,
    ACC: tl.constexpr,
):
    """Each program takes `rows_per_program` consecutive rows: it writes their dx and one
    row of partial weight gradients (the sum over its rows of dy * xhat), which the caller
    reduces over programs.

    dx = rstd * (dy*w - xhat * mean(dy*w*xhat)), xhat = x * rstd.
    """
    program = tl.program_id(0)
    cols = tl.arange(0, BLOCK)
    mask = cols < D
    w = tl.load(W + cols * stride_w, mask=mask, other=0.0).to(ACC)
    dw = tl.zeros((BLOCK,), dtype=ACC)
    first = program.to(tl.int64) * rows_per_program  # int64 row offsets: no overflow
    last = tl.minimum(first + rows_per_program, M)
    for row in range(first, last):  # an int64 tensor on a GPU, a Python int interpreted
        dy_offs = row * stride_dy_row + cols * stride_dy_col
        dy = tl.load(DY + dy_offs, mask=mask, other=0.0).to(ACC)
        x = tl.load(X + row * stride_x_row + cols * stride_x_col, mask=mask, other=0.0).to(ACC)
        rstd = tl.load(RSTD + row)
        xhat = x * rstd
        dyw = dy * w
        mean_dot = tl.sum(dyw * xhat, axis=0) / D
        dx = (dyw - xhat * mean_dot) * rstd
        dx_offs = row * stride_dx_row + cols * stride_dx_col
        tl.store(DX + dx_offs, dx.to(DX.dtype.element_ty), mask=mask)
        dw += dy * xhat
    tl.store(DW_PARTIAL + program * stride_partial + cols, dw, mask=mask)
