"""Distributed (sharded) audits: each rank's gradient shard against the unsharded autograd.

See docs/distributed.md. Importing this package does not import torch.
"""

from __future__ import annotations

from gradaudit.distributed.config import Distributed
from gradaudit.distributed.layout import Placement, Replicated, Shard

__all__ = ["Distributed", "Placement", "Replicated", "Shard"]
