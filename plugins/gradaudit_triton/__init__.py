"""A Triton example op: a fused RMSNorm with hand-written forward and backward kernels.

The kernels (kernels.py) run on a GPU, or on CPU tensors through Triton's interpreter
(TRITON_INTERPRET=1 set before triton is imported). rmsnorm.py wraps them in an
autograd.Function next to the plain PyTorch reference they are audited against;
gallery.py holds the bugs such kernels ship with, each the correct kernel with one change.

Importing this package does not import triton (the plugin registry imports every plugin
on every run): the kernels load on the first call, and a missing triton is then an
ImportError that says `pip install 'gradaudit[triton]'`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from gradaudit import hookimpl
from gradaudit_triton.rmsnorm import TritonRMSNormFunction, rmsnorm, rmsnorm_reference

__all__ = ["OPS", "TritonRMSNormFunction", "register_ops", "rmsnorm", "rmsnorm_reference"]

# name -> callable: what an op spec's `candidate:` / `reference:` may name
OPS: dict[str, Callable[..., Any]] = {
    "triton-rmsnorm": rmsnorm,
    "triton-rmsnorm-reference": rmsnorm_reference,
}


@hookimpl
def register_ops(register: Callable[[str, Any], None]) -> None:
    """Candidates and references that op specs may name: `candidate: triton-rmsnorm`."""
    for name, fn in OPS.items():
        register(name, fn)
