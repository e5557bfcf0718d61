"""Example op audits: custom autograd.Functions with hand-written backward passes.

Pure PyTorch, so they run on the CPU: a fused softmax cross-entropy over a vocabulary, an
RMSNorm with a weight and a log_softmax along any `dim`, each next to the plain PyTorch
reference it is audited against,
and a gallery of plausible bugs (gallery.py) that the op audits must catch. Written
against gradaudit's public API only, as a third-party plugin would be.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from gradaudit import hookimpl
from gradaudit_ops.logsoftmax import log_softmax, log_softmax_reference
from gradaudit_ops.rmsnorm import RMSNorm, rmsnorm, rmsnorm_reference
from gradaudit_ops.xent import softmax_xent, softmax_xent_reference

__all__ = [
    "OPS",
    "RMSNorm",
    "log_softmax",
    "log_softmax_reference",
    "register_ops",
    "rmsnorm",
    "rmsnorm_reference",
    "softmax_xent",
    "softmax_xent_reference",
]

# name -> callable: what a spec's `candidate:` / `reference:` may name without a module path
# (registered through the `register_ops` hook below).
OPS: dict[str, Callable[..., Any]] = {
    "rmsnorm": rmsnorm,
    "rmsnorm-reference": rmsnorm_reference,
    "rmsnorm-module": RMSNorm,
    "softmax-xent": softmax_xent,
    "softmax-xent-reference": softmax_xent_reference,
    "log-softmax": log_softmax,
    "log-softmax-reference": log_softmax_reference,
}


@hookimpl
def register_ops(register: Callable[[str, Any], None]) -> None:
    """Candidates and references that op specs may name: `candidate: rmsnorm`."""
    for name, fn in OPS.items():
        register(name, fn)
