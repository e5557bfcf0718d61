"""How a sharded model's tensors are laid out over ranks, and slicing the full tensors to match.

Torch-free at import: plugins import `Split` and `Replicated` from `gradaudit.targets.sharded`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class Split:
    """The tensor is split along `dim` into contiguous pieces, rank 0's first.

    `sizes` gives each rank's extent along `dim` (uneven splits); by default the pieces are
    equal, and the dimension must divide by the world size.
    """

    dim: int
    sizes: tuple[int, ...] | None = None

    def extents(self, shape: tuple[int, ...], world_size: int) -> list[tuple[int, int]]:
        """(start, length) per rank along `dim`; ValueError when the pieces do not tile it."""
        if not -len(shape) <= self.dim < len(shape):
            raise ValueError(f"Split(dim={self.dim}) but the tensor has {len(shape)} dimensions")
        length = shape[self.dim]
        if self.sizes is None:
            if length % world_size:
                raise ValueError(
                    f"dimension {self.dim} has {length} entries, which {world_size} ranks "
                    "cannot split equally (give Split(dim, sizes=...) for an uneven split)"
                )
            sizes = [length // world_size] * world_size
        else:
            sizes = list(self.sizes)
            if len(sizes) != world_size or any(s < 0 for s in sizes) or sum(sizes) != length:
                raise ValueError(
                    f"sizes {tuple(sizes)} do not tile dimension {self.dim} of {length} entries "
                    f"over {world_size} ranks"
                )
        starts = [sum(sizes[:r]) for r in range(world_size)]
        return list(zip(starts, sizes, strict=True))

    def __str__(self) -> str:
        return (
            f"Split(dim={self.dim})" if self.sizes is None else f"Split({self.dim}, {self.sizes})"
        )


@dataclass(frozen=True)
class Replicated:
    """Every rank holds the whole tensor; its gradient must agree across ranks."""

    def __str__(self) -> str:
        return "Replicated()"


Placement = Split | Replicated
Layout = Mapping[str, Placement]


def check_layout(
    layout: object, shapes: Mapping[str, tuple[int, ...]], audited: list[str], world_size: int
) -> dict[str, Placement]:
    """The layout as a dict, or ValueError naming the first tensor it gets wrong."""
    if not isinstance(layout, Mapping):
        raise ValueError(f"shard_layout() returned {type(layout).__name__}, not a mapping")
    for name, placement in layout.items():
        if name not in shapes:
            raise ValueError(f"shard_layout() names '{name}', which the full model does not have")
        if isinstance(placement, Split):
            try:
                placement.extents(shapes[name], world_size)
            except ValueError as exc:
                raise ValueError(
                    f"'{name}' of shape {tuple(shapes[name])}: {placement} does not tile it: {exc}"
                ) from None
        elif not isinstance(placement, Replicated):
            raise ValueError(
                f"'{name}': {placement!r} is neither gradaudit.targets.sharded.Split nor Replicated"
            )
    missing = [name for name in audited if name not in layout]
    if missing:
        raise ValueError(
            f"shard_layout() does not declare {', '.join(missing)}: "
            "say Split(dim) or Replicated() for every audited tensor"
        )
    return dict(layout)


def piece(tensor: torch.Tensor, placement: Placement, rank: int, world_size: int) -> torch.Tensor:
    """The part of a full tensor that `rank` holds (a view)."""
    if isinstance(placement, Replicated):
        return tensor
    start, length = placement.extents(tuple(tensor.shape), world_size)[rank]
    return tensor.narrow(placement.dim, start, length)


def piece_rows(
    rows: torch.Tensor, placement: Placement, rank: int, world_size: int
) -> torch.Tensor:
    """`piece` of each row of a (batches, *full shape) tensor (a view)."""
    if isinstance(placement, Replicated):
        return rows
    start, length = placement.extents(tuple(rows.shape[1:]), world_size)[rank]
    dim = placement.dim + 1 if placement.dim >= 0 else placement.dim
    return rows.narrow(dim, start, length)
