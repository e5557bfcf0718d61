"""The spec's `distributed:` section (torch-free: `gradaudit validate` reads it)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field


class Distributed(BaseModel):
    """Run the audit sharded over `world_size` ranks, launched by torchrun.

    `port`: the rendezvous port; unset means torchrun's --standalone, which lets the OS pick
    a free one. `replicas`: how replicated gradients must agree across ranks: `exact`
    (bitwise, what an all-reduce gives) or `tolerance` (the tensor's allclose rtol/atol).
    """

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    world_size: Annotated[int, Field(ge=1, le=1024)]
    backend: Literal["gloo", "nccl"] = "gloo"
    port: Annotated[int, Field(ge=1, le=65535)] | None = None
    replicas: Literal["exact", "tolerance"] = "exact"
