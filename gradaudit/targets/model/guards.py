"""What a model pass guards against in plugin code: in-place changes and the wrong dtype."""

from __future__ import annotations

from collections.abc import Mapping

import torch

from gradaudit.compare.syncs import same_bits_all
from gradaudit.types import Forward

Snapshot = dict[str, torch.Tensor]


def watched(model: torch.nn.Module, forward: Forward) -> dict[str, torch.Tensor]:
    """What a manual gradient must only read, by label: the model's parameters and buffers
    (as named_parameters and named_buffers name them, in one walk of the modules instead
    of two: the guard asks twice a batch), the forward's intermediates and saved tensors."""
    params: dict[str, torch.Tensor] = {}
    buffers: dict[str, torch.Tensor] = {}
    seen_params: set[int] = set()
    seen_buffers: set[int] = set()
    for prefix, module in model.named_modules():
        dot = f"{prefix}." if prefix else ""
        for name, param in module._parameters.items():
            if param is not None and id(param) not in seen_params:
                seen_params.add(id(param))
                params[f"parameter {dot}{name}"] = param
        for name, buffer in module._buffers.items():
            if buffer is not None and id(buffer) not in seen_buffers:
                seen_buffers.add(id(buffer))
                buffers[f"buffer {dot}{name}"] = buffer
    intermediates = {f"intermediate {n}": t for n, t in forward.intermediates.items()}
    saved = {f"saved {n}": t for n, t in forward.saved.items() if isinstance(t, torch.Tensor)}
    return params | buffers | intermediates | saved


def changed_between(
    before: Mapping[str, torch.Tensor], now: Mapping[str, torch.Tensor]
) -> list[str]:
    """Labels whose tensor no longer holds the same bits, then those gone: one device read."""
    common = [k for k in before if k in now]
    same = same_bits_all([(before[k], now[k]) for k in common])
    gone = [k for k in before if k not in now]
    return [k for k, ok in zip(common, same, strict=True) if not ok] + gone


def restore(before: Snapshot, model: torch.nn.Module) -> None:
    with torch.no_grad():
        for name, param in model.named_parameters():
            param.copy_(before[f"parameter {name}"])
        for name, buffer in model.named_buffers():
            buffer.copy_(before[f"buffer {name}"])


def plain_tensors(model: torch.nn.Module, dtype: torch.dtype) -> list[str]:
    """Floating tensors a module holds as plain attributes (neither parameters nor buffers)
    in another dtype than the case's: `.to(dtype)` never casts them, so the model would
    silently compute in their dtype."""
    found = []
    for prefix, module in model.named_modules():
        for attr, value in vars(module).items():
            if (
                isinstance(value, torch.Tensor)
                and not isinstance(value, torch.nn.Parameter)
                and value.is_floating_point()
                and value.dtype != dtype
            ):
                name = f"{prefix}.{attr}" if prefix else attr
                found.append(f"`{name}` ({str(value.dtype).removeprefix('torch.')})")
    return found


def wrong_dtype(forward: Forward, dtype: torch.dtype) -> list[str]:
    """The loss and intermediates that came out in another floating dtype than the case's."""
    named = {"the loss": forward.loss, **{f"`{n}`": t for n, t in forward.intermediates.items()}}
    return [
        f"{name} ({str(t.dtype).removeprefix('torch.')})"
        for name, t in named.items()
        if isinstance(t, torch.Tensor) and t.is_floating_point() and t.dtype != dtype
    ]
