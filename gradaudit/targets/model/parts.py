"""The small pieces a dtype pass is made of: where it runs, what it shares, what the
extra checks see of a batch, and how it seeds and post-processes."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch

from gradaudit import postprocess
from gradaudit.compare import Check, mismatch
from gradaudit.compare.syncs import any_nonzero
from gradaudit.targets.model.guards import wrong_dtype
from gradaudit.types import Batch, Forward


def device_name(device: str) -> str:
    if device.startswith("cuda"):
        return torch.cuda.get_device_name(torch.device(device))
    return device


def float64_device(device: str) -> str:
    """Where the float64 truth is computed: the same device, unless it lacks float64."""
    return "cpu" if device.startswith("mps") else device


@dataclass(frozen=True)
class Lent:
    """A float64 pass's autograd gradients of one batch, before post-processing, and its
    model's buffers just after that forward: another pass's truth, when provably equal."""

    index: int
    reference: list[torch.Tensor]
    buffers: dict[str, torch.Tensor]


@dataclass(frozen=True)
class Step:
    """One batch's gradient comparison, as the extra checks and mutation testing see it."""

    batch: Batch
    forward: Forward
    manual: Mapping[str, torch.Tensor]
    names: list[str]
    reference: list[torch.Tensor]
    truth: list[torch.Tensor] | None
    checks: dict[str, Check]


def postprocess_all(
    rules: postprocess.Rules,
    names: list[str],
    reference: list[torch.Tensor],
    truth: list[torch.Tensor] | None,
) -> dict[str, str]:
    """Apply the spec's declared post-processing to the reference and the truth; a clip
    that changes every element leaves only signs to compare: an error, not a pass."""
    saturated: dict[str, str] = {}
    if not rules:
        return saturated
    for i, name in enumerate(names):
        reference[i], clipped = postprocess.apply_counted(name, reference[i], rules)
        problem = postprocess.saturated(clipped, reference[i].numel())
        if problem:
            saturated[name] = problem
        if truth is not None:
            truth[i] = postprocess.apply(name, truth[i], rules)
    return saturated


def buffers(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: b.detach().clone() for n, b in model.named_buffers()}


def seed(seed: int, device: str) -> None:
    """Seed what a forward on `device` may draw from (dropout), so every pass sees the same.

    torch.manual_seed would also queue seeds for every accelerator backend, at ~2 ms a call.
    """
    torch.default_generator.manual_seed(seed)
    if device.startswith("cuda"):
        torch.cuda.manual_seed(seed)


def unusable(
    got: object,
    reference: torch.Tensor,
    plugin: str,
    param_storage: Mapping[int, str],
    said: str | None = None,
) -> str | None:
    """Why a plugin's gradient cannot be compared with autograd's, or None; `said` is what
    the plugin's adapter already knows (a numpy gradient computed in another dtype)."""
    if said:
        return said
    if got is None:
        return f"gradients '{plugin}' gave no gradient"
    if not isinstance(got, torch.Tensor):
        return f"gradient is a {type(got).__name__}, not a tensor"
    if got.requires_grad:
        return "gradient requires grad: return plain tensors"
    alias = param_storage.get(got.untyped_storage().data_ptr())
    if alias:
        return f"gradient shares memory with {alias}: return a new tensor"
    problem = mismatch(got, reference)
    return f"gradient has {problem}" if problem else None


def autograd_reference(
    model: torch.nn.Module, batch: Batch, names: Sequence[str], device: str
) -> tuple[Forward, list[torch.Tensor]]:
    """Forward and autograd's gradient of the loss w.r.t. each named tensor (zeros for a
    tensor the loss does not use); a forward that computed in another dtype is an error."""
    seed(batch.seed, device)
    forward = model(**batch.tensors)
    if not isinstance(forward, Forward):
        raise TypeError(f"forward returned {type(forward).__name__}, not gradaudit.Forward")
    param = next(model.parameters(), None)
    dtype = param.dtype if param is not None else None
    wrong = wrong_dtype(forward, dtype) if dtype is not None else []
    if wrong:
        raise TypeError(
            f"the model computed {', '.join(wrong)} in a {str(dtype).removeprefix('torch.')} "
            "case: a tensor it uses is not a parameter or buffer, or is cast by the model"
        )
    available = {**forward.intermediates, **dict(model.named_parameters())}
    missing = [n for n in names if n not in available]
    if missing:
        raise KeyError(f"forward did not return {missing}")
    targets = [available[n] for n in names]
    grads = torch.autograd.grad(forward.loss, targets, allow_unused=True)
    return forward, [
        torch.zeros_like(t) if g is None else g for t, g in zip(targets, grads, strict=True)
    ]


def note_nonzero(
    nonzero: set[str],
    wanted: Sequence[tuple[str, object, torch.Tensor, object]],
    checks: Mapping[str, Check],
) -> None:
    """Add the gradients that were nonzero to `nonzero`: from the comparison's largest entry
    where it measured one (no read), else from autograd's gradient (one read)."""
    unknown = []
    for name, _, reference, _ in wanted:
        largest = checks[name].largest if name in checks else None
        if largest is None and name not in nonzero:
            unknown.append((name, reference))
        elif largest:
            nonzero.add(name)
    found = any_nonzero([reference for _, reference in unknown]) if unknown else []
    nonzero |= {name for (name, _), hit in zip(unknown, found, strict=True) if hit}
