"""Bugs that Triton kernels ship with, each the correct kernel of kernels.py with one line
changed.

An `Edit` names the kernel, the line as it stands and the line that replaces it; the buggy
kernel is the correct kernel's source with that one line replaced, compiled by the same
`triton.jit` on the bug's first call (triton is not imported before). tests/test_triton_ops.py
states, per bug, the exact cases of an op audit that fail; `BUGS` maps a name to (buggy op,
what it gets wrong).
"""

from __future__ import annotations

import functools
import inspect
import linecache
from dataclasses import dataclass
from typing import Any

import torch

from gradaudit_triton.rmsnorm import Kernels, TritonRMSNormFunction, function_with, load_kernels


@dataclass(frozen=True)
class Edit:
    """Replace `old` (one whole statement, found exactly once) by `new` in one kernel."""

    name: str
    kernel: str  # "forward" or "backward"
    old: str
    new: str


def kernel_source(kernel: Any) -> str:
    """A @triton.jit kernel's source, decorator included."""
    return inspect.getsource(kernel.fn)


def edited_source(edit: Edit) -> tuple[Any, str]:
    """(the correct kernel, its source with the edit applied)."""
    correct = getattr(load_kernels(), edit.kernel)
    source = kernel_source(correct)
    lines = [line for line in source.splitlines() if line.strip() == edit.old]
    if len(lines) != 1 or "\n" in edit.new:
        raise ValueError(f"{edit.name}: {edit.old!r} is not one line of the {edit.kernel} kernel")
    indent = lines[0][: len(lines[0]) - len(lines[0].lstrip())]
    return correct, source.replace(lines[0], indent + edit.new)


@functools.cache
def edited_kernels(edit: Edit) -> Kernels:
    """The shipped kernels with `edit` applied to one of them."""
    correct, source = edited_source(edit)
    filename = f"<gradaudit_triton.gallery {edit.name}>"
    # triton.jit reads the source back through inspect, which finds it in linecache
    linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
    namespace = dict(inspect.getmodule(correct.fn).__dict__)
    exec(compile(source, filename, "exec"), namespace)
    kernels = load_kernels()
    bug = namespace[correct.fn.__name__]
    if edit.kernel == "forward":
        return Kernels(forward=bug, backward=kernels.backward)
    return Kernels(forward=kernels.forward, backward=bug)


def _bug(edit: Edit, doc: str) -> type[TritonRMSNormFunction]:
    name = "".join(part.title() for part in edit.name.split("-"))
    return function_with(lambda: edited_kernels(edit), name, doc, __name__)


TAIL_MASK = Edit(
    "tail-mask",
    "forward",
    "x_in = tl.load(X + row * stride_x_row + cols * stride_x_col, mask=mask, other=0.0)",
    "x_in = tl.load(X + row * stride_x_row + cols * stride_x_col)",
)
CONTIGUOUS_GRAD = Edit(
    "contiguous-grad",
    "backward",
    "dy_offs = row * stride_dy_row + cols * stride_dy_col",
    "dy_offs = row * D + cols",
)
INPUT_DTYPE_SUM = Edit(
    "input-dtype-sum",
    "forward",
    "sum_sq = tl.sum(x * x, axis=0)",
    "sum_sq = tl.sum(x_in * x_in, axis=0).to(ACC)",
)
DW_OVERWRITE = Edit("dw-overwrite", "backward", "dw += dy * xhat", "dw = dy * xhat")
DX_STRIDES_OF_X = Edit(
    "dx-strides-of-x",
    "backward",
    "dx_offs = row * stride_dx_row + cols * stride_dx_col",
    "dx_offs = row * stride_x_row + cols * stride_x_col",
)
FLOAT32_EPS = Edit("float32-eps", "forward", "eps = tl.full((), EPS, ACC)", "eps = EPS")

TritonTailMask = _bug(
    TAIL_MASK,
    "The forward loads x without its mask: a row of D elements reads BLOCK (the next power "
    "of two), so the sum of squares takes in the next row's first elements (and, for the "
    "last row, memory past x). Right only when D is a power of two.",
)
TritonContiguousGrad = _bug(
    CONTIGUOUS_GRAD,
    "The backward addresses the upstream gradient as a contiguous (rows, D) array instead of "
    "by its strides: wrong for a transposed or strided gradient, and reads past the storage "
    "of an expanded one (FlashAttention's non-contiguous dout).",
)
TritonInputDtypeSum = _bug(
    INPUT_DTYPE_SUM,
    "The forward sums the squares in the input's dtype, not in float32: a no-op in float32 "
    "and float64; float16 overflows once the sum passes 65504; bfloat16 arithmetic is not "
    "modelled by Triton's interpreter at all (it adds the raw bits as integers).",
)
TritonDwOverwrite = _bug(
    DW_OVERWRITE,
    "Each backward program overwrites its partial weight gradient with each row instead of "
    "adding it up: right while every program covers one row (at most CPU_PROGRAMS rows on a "
    "CPU, one per SM on a GPU), wrong with more rows.",
)
TritonDxStridesOfX = _bug(
    DX_STRIDES_OF_X,
    "The backward stores dx with x's strides, not dx's own (dx = torch.empty_like(x)): the "
    "same for contiguous and transposed x; for an expanded x (row stride 0) every row lands "
    "on row 0, and for a strided x it writes up to twice past the end of dx's buffer.",
)
TritonFloat32Eps = _bug(
    FLOAT32_EPS,
    "The forward adds eps as the bare constexpr, which Triton types float32 (as it does a "
    "float kernel argument): float64 adds 1e-6 rounded to float32, about 2.5e-15 off, which "
    "shows only where mean(x^2) is small, at D = 1.",
)

BUGS: dict[str, tuple[type[torch.autograd.Function], str]] = {
    "triton-rmsnorm-tail-mask": (TritonTailMask, "a load without its tail mask"),
    "triton-rmsnorm-contiguous-grad": (TritonContiguousGrad, "a stride assumed contiguous"),
    "triton-rmsnorm-input-dtype-sum": (TritonInputDtypeSum, "a reduction in the input's dtype"),
    "triton-rmsnorm-dw-overwrite": (TritonDwOverwrite, "partial sums overwritten"),
    "triton-rmsnorm-dx-strides-of-x": (TritonDxStridesOfX, "a store out of bounds"),
    "triton-rmsnorm-float32-eps": (TritonFloat32Eps, "a float64 kernel rounding to float32"),
}
EDITS: dict[str, Edit] = {
    "triton-rmsnorm-tail-mask": TAIL_MASK,
    "triton-rmsnorm-contiguous-grad": CONTIGUOUS_GRAD,
    "triton-rmsnorm-input-dtype-sum": INPUT_DTYPE_SUM,
    "triton-rmsnorm-dw-overwrite": DW_OVERWRITE,
    "triton-rmsnorm-dx-strides-of-x": DX_STRIDES_OF_X,
    "triton-rmsnorm-float32-eps": FLOAT32_EPS,
}
