"""What the launcher and every rank both build: plugins, seeded models, the layout, the inputs.

The launcher builds it once before any rank starts, so that a bad spec, plugin or layout is
a one-line exit 2; each rank builds it again from the same spec and seed.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from gradaudit.distributed.layout import Placement, Shard, check_layout, piece
from gradaudit.errors import PluginError, SpecError
from gradaudit.plugins import plugin_manager
from gradaudit.spec import LoadedSpec

if TYPE_CHECKING:
    import torch

INPUTS_PLUGIN = "random"  # until the core's `random` data plugin lands, drawn here (docs)


@dataclass(frozen=True)
class DistBatch:
    """A batch in the new core contract's shape: named tensors, index and seed."""

    tensors: Mapping[str, torch.Tensor]
    index: int = 0
    seed: int = 0

    def __getitem__(self, name: str) -> torch.Tensor:
        return self.tensors[name]


def make_batch(tensors: Mapping[str, torch.Tensor], index: int, seed: int) -> Any:
    """gradaudit.Batch once the core has the named-tensor contract, DistBatch until then."""
    from gradaudit import types

    if "tensors" in getattr(types.Batch, "__dataclass_fields__", {}):
        return types.Batch(tensors=tensors, index=index, seed=seed)
    return DistBatch(tensors, index, seed)


def input_shapes(loaded: LoadedSpec) -> dict[str, tuple[int, ...]]:
    """Per-row shapes from `data: {plugin: random, options: {tensors: {name: [dims]}}}`."""
    data = loaded.spec.data
    where = f"{loaded.path}:{loaded.line_of('data')}"
    if data.plugin != INPUTS_PLUGIN:
        raise SpecError(
            f"{where}: data.plugin: distributed audits take inputs from '{INPUTS_PLUGIN}' "
            f"(normal tensors of declared shapes), not '{data.plugin}'"
        )
    b = loaded.spec.batches
    if b.split != "train" or b.count is None or b.size is None:
        raise SpecError(
            f"{loaded.path}:{loaded.line_of('batches')}: batches: a distributed audit draws "
            "`count` batches of `size` rows (split: train)"
        )
    tensors = data.options.get("tensors")
    if not isinstance(tensors, dict) or not tensors:
        raise SpecError(f"{where}: data.options.tensors: expected {{name: [dims per row]}}")
    shapes = {}
    for name, dims in tensors.items():
        ok = isinstance(dims, list) and all(type(d) is int and d > 0 for d in dims)
        if not isinstance(name, str) or not ok:
            raise SpecError(
                f"{where}: data.options.tensors.{name}: expected a list of positive ints"
            )
        shapes[name] = tuple(dims)
    return shapes


def draw_inputs(loaded: LoadedSpec, index: int) -> tuple[dict[str, torch.Tensor], int]:
    """Batch `index` (seed `batches.seed + index`): float64 normal tensors, the same on every
    rank; the case casts them."""
    import torch

    b = loaded.spec.batches
    seed = b.seed + index
    generator = torch.Generator().manual_seed(seed)
    rows = b.size or 1
    tensors = {
        name: torch.randn((rows, *dims), generator=generator, dtype=torch.float64)
        for name, dims in input_shapes(loaded).items()
    }
    return tensors, seed


def _why(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__


@dataclass
class DistSetup:
    """The plugins, the full (unsharded) model on the CPU, its tensors, and the layout."""

    loaded: LoadedSpec
    world_size: int
    factory: Callable[..., torch.nn.Module]
    gradient_fn: Callable[..., Mapping[str, torch.Tensor]]
    full: torch.nn.Module
    layout: dict[str, Placement]
    names: list[str]  # every tensor of the full model: intermediates, then parameters
    audited: list[str]
    shapes: dict[str, tuple[int, ...]]

    @classmethod
    def load(cls, loaded: LoadedSpec, world_size: int) -> DistSetup:
        """Build and check everything; PluginError / SpecError (exit 2) on the first problem."""
        import torch

        spec = loaded.spec
        registry = plugin_manager(spec.plugins, loaded.base_dir)
        factory = registry.get("model", spec.model.plugin)
        gradient_fn = registry.get("gradients", spec.gradients.plugin)
        input_shapes(loaded)
        full = build(loaded, factory, None, world_size)
        tensors, seed = draw_inputs(loaded, 0)
        dtype = torch.get_default_dtype()
        torch.manual_seed(seed)
        try:
            forward = full(**{n: t.to(dtype) for n, t in tensors.items()})
            intermediates = dict(forward.intermediates)
        except Exception as exc:
            raise PluginError(
                f"model plugin '{spec.model.plugin}': the full model's forward failed: {_why(exc)}"
            ) from None
        params = dict(full.named_parameters())
        clash = sorted(set(params) & set(intermediates))
        if clash:
            raise PluginError(f"intermediate names clash with parameter names: {clash}")
        names = [*intermediates, *params]
        shapes = {n: tuple(t.shape) for n, t in {**intermediates, **params}.items()}
        audited = _select(loaded, names)
        shard = build(loaded, factory, 0, world_size)
        layout_fn = getattr(shard, "shard_layout", None)
        if not callable(layout_fn):
            raise PluginError(
                f"model plugin '{spec.model.plugin}' has no shard_layout() method: "
                "a distributed audit needs each tensor declared Shard(dim) or Replicated()"
            )
        try:
            layout = check_layout(layout_fn(), shapes, audited, world_size)
            load_slices(shard, full, layout, 0, world_size)
        except ValueError as exc:
            raise PluginError(f"model plugin '{spec.model.plugin}': {exc}") from None
        return cls(loaded, world_size, factory, gradient_fn, full, layout, names, audited, shapes)


def build(
    loaded: LoadedSpec, factory: Callable[..., Any], rank: int | None, world_size: int
) -> torch.nn.Module:
    """The full model (rank None) or rank's shard, seeded with `model.seed` (by default
    `batches.seed`)."""
    import torch

    spec = loaded.spec
    torch.manual_seed(spec.model_seed)
    what = "the full model" if rank is None else f"rank {rank}'s shard"
    try:
        model = factory(rank=rank, world_size=world_size, **spec.model.options)
    except Exception as exc:
        raise PluginError(
            f"model plugin '{spec.model.plugin}' failed to build {what}: {_why(exc)}"
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


def _select(loaded: LoadedSpec, names: list[str]) -> list[str]:
    globs = loaded.spec.tensors
    for glob in globs:
        if not any(fnmatch.fnmatchcase(n, glob) for n in names):
            raise SpecError(
                f"{loaded.path}: tensors: '{glob}' matches no tensor; the model has: "
                + ", ".join(names)
            )
    return [n for n in names if any(fnmatch.fnmatchcase(n, g) for g in globs)]


def sharded_names(setup: DistSetup) -> list[str]:
    return [n for n in setup.audited if isinstance(setup.layout[n], Shard)]


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
