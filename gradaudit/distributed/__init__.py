"""Distributed (sharded) audits: each rank's gradient shard against the unsharded autograd.

See docs/distributed.md. Importing this package imports neither torch nor the runner
(spec.py imports `Distributed` from here); `DistributedRun` and `run_distributed` load
on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from gradaudit.distributed.config import Distributed
from gradaudit.distributed.layout import Placement, Replicated, Shard

if TYPE_CHECKING:
    from gradaudit.distributed.launch import DistributedRun, run_distributed

__all__ = ["Distributed", "DistributedRun", "Placement", "Replicated", "Shard", "run_distributed"]


def __getattr__(name: str) -> Any:
    if name in ("DistributedRun", "run_distributed"):
        from gradaudit.distributed import launch

        return getattr(launch, name)
    raise AttributeError(f"module 'gradaudit.distributed' has no attribute {name!r}")
