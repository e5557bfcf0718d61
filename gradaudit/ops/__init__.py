"""Op audits: a custom autograd.Function, function or nn.Module against a reference, over
input variants derived from the declared shapes (docs/ops.md).

Importing this package does not import torch; the names below load on first use.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "OpResult",
    "check_op",
    "custom_functions_in_graph",
    "is_op_spec",
    "load_op_spec",
    "run_op_spec",
]

_WHERE = {
    "OpResult": "gradaudit.ops.api",
    "check_op": "gradaudit.ops.api",
    "custom_functions_in_graph": "gradaudit.ops.guard",
    "is_op_spec": "gradaudit.ops.spec",
    "load_op_spec": "gradaudit.ops.spec",
    "run_op_spec": "gradaudit.ops.run",
}


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        import importlib

        return getattr(importlib.import_module(_WHERE[name]), name)
    raise AttributeError(f"module 'gradaudit.ops' has no attribute {name!r}")
