"""Finding custom autograd.Functions in a model's graph.

A model audit takes autograd's gradient as the reference; through a custom Function that
reference *is* the Function's hand-written backward, so a wrong backward passes as exact.
A model audit whose graph holds one runs the finite-difference check (gradaudit.checks.
finite_difference), unless the spec configures it: the loss's own differences are the one
reference that Function cannot fool. The plan says so, and points at op audits.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

WARNING = (
    "the reference gradients run the hand-written backward of custom autograd.Function(s) "
    "{names}: a wrong backward there would pass as exact, so checks.finite_difference runs "
    "(float64 differences of the loss; configure it under checks:); audit them with an op "
    "spec too (docs/ops.md)"
)


def custom_functions_in_graph(loss: torch.Tensor) -> list[str]:
    """`module.QualName` of every custom autograd.Function whose backward the graph of
    `loss` runs, sorted; empty when there is none (or no graph)."""
    from torch.autograd.function import BackwardCFunction

    found: set[str] = set()
    seen: set[int] = set()
    stack = [loss.grad_fn]
    while stack:
        node = stack.pop()
        if node is None or id(node) in seen:
            continue
        seen.add(id(node))
        if isinstance(node, BackwardCFunction):
            cls = getattr(node, "_forward_cls", type(node))
            found.add(f"{cls.__module__}.{cls.__qualname__}")
        stack.extend(next_node for next_node, _ in node.next_functions)
    return sorted(found)


def warning_for(names: list[str]) -> str | None:
    """The one-line note for a model audit, or None when the graph holds no Function."""
    return WARNING.format(names=", ".join(names)) if names else None
