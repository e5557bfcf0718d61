"""gradaudit: prove hand-written gradients match torch autograd, in CI.

This module is the public API: for plugin authors the hook marker, the batch / forward types
and the protocols a plugin implements, `Split` and `Replicated` (a sharded model's placements)
and `TokenCorpus`, a ready-made `Dataset` for token streams; for test suites and notebooks
`check_op` (an op against its reference) and `check` (values a notebook computed). The rest
loads on first use, so that `import gradaudit` (and the CLI's start) imports no torch.
Modules inside gradaudit never import this one.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from gradaudit.hookspecs import hookimpl
from gradaudit.targets.sharded.layout import Placement, Replicated, Split
from gradaudit.types import Batch, DataLoader, Dataset, Forward, ManualGradient, ModelFactory
from gradaudit.version import __version__

if TYPE_CHECKING:
    from gradaudit.corpus import TokenCorpus
    from gradaudit.targets.op.api import check_op
    from gradaudit.targets.values.check import check

__all__ = [
    "Batch",
    "DataLoader",
    "Dataset",
    "Forward",
    "ManualGradient",
    "ModelFactory",
    "Placement",
    "Replicated",
    "Split",
    "TokenCorpus",
    "__version__",
    "check",
    "check_op",
    "hookimpl",
]


def __getattr__(name: str) -> Any:
    # TokenCorpus, check and check_op need torch: loaded when asked for.
    if name == "TokenCorpus":
        from gradaudit.corpus import TokenCorpus

        return TokenCorpus
    if name == "check":
        from gradaudit.targets.values.check import check

        return check
    if name == "check_op":
        from gradaudit.targets.op.api import check_op

        return check_op
    raise AttributeError(f"module 'gradaudit' has no attribute {name!r}")
