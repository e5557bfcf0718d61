"""What the launcher and every rank both build: plugins, the data, seeded models, the layout.

The launcher builds it once before any rank starts (to plan), so that a bad spec, plugin or
layout is a one-line exit 2; each rank builds it again from the same spec and seeds.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from gradaudit.errors import DataError, PluginError, why
from gradaudit.plugins import plugin_manager
from gradaudit.spec import LoadedSpec
from gradaudit.targets.model.load import select
from gradaudit.targets.sharded.layout import Placement, check_layout, piece
from gradaudit.types import Batch, Dataset

if TYPE_CHECKING:
    import torch


@dataclass
class DistSetup:
    """The plugins, the full (unsharded) model on the CPU, its tensors, and the layout."""

    loaded: LoadedSpec
    world_size: int
    factory: Callable[..., torch.nn.Module]
    gradient_fn: Callable[..., Mapping[str, torch.Tensor]]
    dataset: Dataset
    full: torch.nn.Module
    layout: dict[str, Placement]
    names: list[str]  # every tensor of the full model: intermediates, then parameters
    audited: list[str]
    shapes: dict[str, tuple[int, ...]]
    input_numel: int  # entries of one batch's tensors

    @classmethod
    def load(cls, loaded: LoadedSpec, world_size: int) -> DistSetup:
        """Build and check everything; PluginError / SpecError (exit 2) on the first problem."""
        import torch

        spec = loaded.spec
        registry = plugin_manager(spec.plugins, loaded.base_dir, loaded)
        factory = registry.get("model", spec.model.plugin, loaded.where("model", "plugin"))
        gradient_fn = registry.get(
            "gradients", spec.gradients.plugin, loaded.where("gradients", "plugin")
        )
        loader = registry.get("data", spec.data.plugin, loaded.where("data", "plugin"))
        try:
            dataset: Dataset = loader(spec.data.options, loaded.base_dir)
        except Exception as exc:
            raise DataError(
                f"{loaded.where('data')}: data plugin '{spec.data.plugin}': {why(exc)}"
            ) from None
        model_args = dict(getattr(dataset, "model_args", {}))
        full = build(loaded, factory, None, world_size, model_args)
        first = first_batch(loaded, dataset)
        dtype = torch.get_default_dtype()
        torch.manual_seed(first.seed)
        try:
            forward = full(**first.to("cpu", dtype).tensors)
            intermediates = dict(forward.intermediates)
        except Exception as exc:
            raise PluginError(
                f"model plugin '{spec.model.plugin}': the full model's forward failed: {why(exc)}"
            ) from None
        params = dict(full.named_parameters())
        clash = sorted(set(params) & set(intermediates))
        if clash:
            raise PluginError(f"intermediate names clash with parameter names: {clash}")
        names = [*intermediates, *params]
        shapes = {n: tuple(t.shape) for n, t in {**intermediates, **params}.items()}
        audited = select(names, spec.tensors, loaded.where("tensors"))
        shard = build(loaded, factory, 0, world_size, model_args)
        layout_fn = getattr(shard, "shard_layout", None)
        if not callable(layout_fn):
            raise PluginError(
                f"model plugin '{spec.model.plugin}' has no shard_layout() method: "
                "a distributed audit needs each tensor declared Split(dim) or Replicated()"
            )
        try:
            layout = check_layout(layout_fn(), shapes, audited, world_size)
            load_slices(shard, full, layout, 0, world_size)
        except ValueError as exc:
            raise PluginError(f"model plugin '{spec.model.plugin}': {exc}") from None
        numel = sum(t.numel() for t in first.tensors.values())
        return cls(
            loaded, world_size, factory, gradient_fn, dataset, full, layout, names, audited,
            shapes, numel,
        )  # fmt: skip


def first_batch(loaded: LoadedSpec, dataset: Dataset) -> Batch:
    """Batch 0 of the spec's draw (its shapes are every batch's: ranks hold pieces)."""
    b = loaded.spec.batches
    try:
        first = next(iter(dataset.batches(b.split, 1, b.size, b.seed)), None)
    except ValueError as exc:
        raise DataError(
            f"{loaded.where('batches')}: data plugin '{loaded.spec.data.plugin}': {exc}"
        ) from None
    if first is None:
        raise DataError(f"{loaded.where('batches')}: the data plugin gave no batches")
    return first


def build(
    loaded: LoadedSpec,
    factory: Callable[..., Any],
    rank: int | None,
    world_size: int,
    model_args: Mapping[str, Any],
) -> torch.nn.Module:
    """The full model (rank None) or rank's shard, seeded with `model.seed` (by default
    `batches.seed`): `factory(rank=, world_size=, **data's model_args, **model.options)`."""
    import torch

    spec = loaded.spec
    torch.manual_seed(spec.model_seed)
    what = "the full model" if rank is None else f"rank {rank}'s shard"
    try:
        model = factory(rank=rank, world_size=world_size, **model_args, **spec.model.options)
    except Exception as exc:
        raise PluginError(
            f"model plugin '{spec.model.plugin}' failed to build {what}: {why(exc)}"
        ) from None
    if not isinstance(model, torch.nn.Module):
        raise PluginError(
            f"model plugin '{spec.model.plugin}' returned {type(model).__name__} for {what}, "
            "not a torch.nn.Module"
        )
    return model


def load_slices(
    shard: torch.nn.Module,
    full: torch.nn.Module,
    layout: Mapping[str, Placement],
    rank: int,
    world_size: int,
) -> None:
    """Give the shard exactly its slices of the full model's weights (ValueError if it can't)."""
    import torch

    full_params = dict(full.named_parameters())
    with torch.no_grad():
        for name, param in shard.named_parameters():
            if name not in full_params:
                raise ValueError(f"rank {rank}'s parameter '{name}' is not in the full model")
            if name not in layout:
                raise ValueError(f"shard_layout() does not declare parameter '{name}'")
            wanted = piece(full_params[name], layout[name], rank, world_size)
            if tuple(param.shape) != tuple(wanted.shape):
                placement = layout[name]
                raise ValueError(
                    f"rank {rank}'s '{name}' has shape {tuple(param.shape)}, but {placement} of "
                    f"the full {tuple(full_params[name].shape)} gives it {tuple(wanted.shape)}"
                )
            param.copy_(wanted)


def full_gradients(
    model: torch.nn.Module,
    inputs: Mapping[str, torch.Tensor],
    seed: int,
    wanted: torch.dtype,
    audited: list[str],
    shapes: list[tuple[int, ...]],
) -> dict[str, torch.Tensor]:
    """Autograd's gradient of the full model's loss for every audited tensor, checked to be
    in the case's dtype and in the shapes of batch 0 (TypeError, ValueError)."""
    import torch

    from gradaudit.types import Forward

    torch.default_generator.manual_seed(seed)
    forward = model(**inputs)
    if not isinstance(forward, Forward):
        raise TypeError(f"forward returned {type(forward).__name__}, not gradaudit.Forward")
    odd = [
        n for n, t in {"loss": forward.loss, **forward.intermediates}.items() if t.dtype != wanted
    ]
    if odd:  # never a silent run in another dtype than the case's
        raise TypeError(f"the full model computed {', '.join(odd)} in another dtype than {wanted}")
    available = {**forward.intermediates, **dict(model.named_parameters())}
    targets = [available[n] for n in audited]
    for name, target, shape in zip(audited, targets, shapes, strict=True):
        if tuple(target.shape) != shape:
            raise ValueError(
                f"the full model's '{name}' has shape {tuple(target.shape)}, {shape} on "
                "batch 0: a distributed audit needs the same shapes on every batch"
            )
    grads = torch.autograd.grad(forward.loss, targets, allow_unused=True)
    return {
        n: torch.zeros_like(t) if g is None else g
        for n, t, g in zip(audited, targets, grads, strict=True)
    }
