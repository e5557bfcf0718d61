"""Which devices this machine has (asked of torch, in the process that runs the target)."""

from __future__ import annotations

from typing import Any


def device_unavailable(device: str) -> str | None:
    """Why this machine cannot run on `device`, or None when it can."""
    import torch

    kind, _, index = device.partition(":")
    if kind == "cpu":
        return None
    backend: Any = getattr(torch, kind, None) if kind != "mps" else torch.backends.mps
    if backend is None or not backend.is_available():
        return f"{kind} is not available on this machine"
    if index and kind != "mps" and int(index) >= backend.device_count():
        return (
            f"{device} is not available: this machine has {backend.device_count()} {kind} device(s)"
        )
    return None
