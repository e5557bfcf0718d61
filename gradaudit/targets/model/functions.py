"""Finding custom autograd.Functions in a model's graph.

A model audit takes autograd's gradient as the reference; through a custom Function that
reference *is* the Function's hand-written backward, so a wrong backward passes as exact.
A model audit whose graph holds one runs the finite-difference check (gradaudit.checks.
finite_difference), unless the spec configures it: the loss's own differences are the one
reference that Function cannot fool. The plan says so, and points at op audits.

The other way to vouch for a Function is an op audit of it named in the model spec
(`functions: {NAME: op-spec.yaml}`): `gradaudit run` runs that op spec with the model's, and
a Function whose op spec runs beside the model's needs no finite differences. An op spec
named but not run beside it (`gradaudit.run`, pytest collecting one file) vouches for
nothing: finite differences run, and the plan says why.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

WARNING = (
    "the reference gradients run the hand-written backward of custom autograd.Function(s) "
    "{names}: a wrong backward there would pass as exact, so checks.finite_difference runs "
    "(float64 differences of the loss; configure it under checks:); audit them with an op "
    "spec too and name it under functions: (docs/ops.md)"
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


def vouch(
    found: list[str], named: Mapping[str, tuple[Path, str]], alongside: tuple[str, ...]
) -> tuple[list[str], list[str]]:
    """(the Functions found that no op spec of this run audits, the plan's notes). `named`:
    each name under `functions:` with its op spec's resolved path and candidate. A name
    matches a Function's `module.QualName` or its trailing part; the op spec vouches for
    it when it runs in this run and its candidate names the Function's class."""
    left: list[str] = []
    notes: list[str] = []
    used: set[str] = set()
    for function in found:
        key = next((k for k in named if function == k or function.endswith("." + k)), None)
        if key is None:
            left.append(function)
            continue
        used.add(key)
        path, candidate = named[key]
        cls, why = function.rsplit(".", 1)[-1], None
        if cls not in candidate:
            why = f"its candidate {candidate} does not name {cls}"
        elif str(path) not in alongside:
            why = (
                "it does not run in this run (`gradaudit run` on this spec runs it; "
                "gradaudit.run, pytest on one file and a rerun of one --batch do not)"
            )
        if why is None:
            notes.append(f"custom autograd.Function {function}: audited by op spec {path.name}")
        else:
            left.append(function)
            notes.append(f"functions: {key}: op spec {path.name} vouches for nothing: {why}")
    for key in named:
        if key not in used:
            notes.append(
                f"functions: {key}: no custom autograd.Function of that name is in the model's "
                f"graph (found: {', '.join(found) or 'none'})"
            )
    warning = warning_for(left)
    return left, ([warning] if warning else []) + notes
