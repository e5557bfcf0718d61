"""gradaudit: prove hand-written gradients match torch autograd, in CI.

This module is the whole public API for plugin authors: the hook marker,
the batch / forward types and the protocols a plugin implements, plus
`TokenCorpus`, a ready-made `Dataset` for token streams.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from gradaudit.hookspecs import hookimpl
from gradaudit.types import Batch, DataLoader, Dataset, Forward, ManualGradient, ModelFactory

if TYPE_CHECKING:
    from gradaudit.corpus import TokenCorpus
    from gradaudit.notebook import check
    from gradaudit.ops.api import check_op

__version__ = "0.1.0"

__all__ = [
    "Batch",
    "DataLoader",
    "Dataset",
    "Forward",
    "ManualGradient",
    "ModelFactory",
    "TokenCorpus",
    "__version__",
    "check",
    "check_op",
    "hookimpl",
]


def __getattr__(name: str) -> Any:
    # TokenCorpus needs torch at import time; load it only when asked for,
    # so that the CLI's start-up stays torch-free.
    if name == "TokenCorpus":
        from gradaudit.corpus import TokenCorpus

        return TokenCorpus
    if name == "check":
        from gradaudit.notebook import check

        return check
    if name == "check_op":
        from gradaudit.ops.api import check_op

        return check_op
    raise AttributeError(f"module 'gradaudit' has no attribute {name!r}")
