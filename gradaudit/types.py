"""The data that passes between gradaudit and its plugins.

Kept free of a runtime torch import so that `gradaudit --help` and
`gradaudit validate` start fast; tensors are only type-annotated here.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class Batch:
    """One batch: named tensors of any dtype and shape (token ids, float features, images,
    masks), plus where it came from.

    `index` and `seed` say where the batch came from (`gradaudit run SPEC --batch <index>`
    audits it alone). The model's forward is called as `model(**batch.tensors)`.
    """

    tensors: Mapping[str, torch.Tensor]
    index: int = 0
    seed: int = 0

    def __getitem__(self, name: str) -> torch.Tensor:
        return self.tensors[name]

    @property
    def inputs(self) -> torch.Tensor:
        """Shorthand for `batch["inputs"]` (token data names its tensors inputs, targets)."""
        return self.tensors["inputs"]

    @property
    def targets(self) -> torch.Tensor:
        """Shorthand for `batch["targets"]`."""
        return self.tensors["targets"]

    @property
    def rows(self) -> int:
        """The leading (batch) dimension shared by the tensors; 1 for scalars only."""
        return next((int(t.shape[0]) for t in self.tensors.values() if t.dim()), 1)

    def to(self, device: torch.device | str, dtype: torch.dtype | None = None) -> Batch:
        """On `device`, with floating tensors cast to `dtype` (integer and bool tensors stay)."""
        moved = {
            name: t.to(device=device, dtype=dtype)
            if dtype is not None and t.is_floating_point()
            else t.to(device)
            for name, t in self.tensors.items()
        }
        return Batch(moved, self.index, self.seed)

    def head(self, rows: int) -> Batch:
        """The first `rows` rows of every tensor with a leading dimension."""
        cut = {n: t[:rows] if t.dim() else t for n, t in self.tensors.items()}
        return Batch(cut, self.index, self.seed)


@dataclass(frozen=True)
class Forward:
    """What a model's forward returns: the scalar loss, its named intermediates, and what
    the manual gradient needs of the forward besides them.

    Every intermediate must be part of the loss's graph: gradaudit asks autograd for
    dLoss/dTensor of each one, and audits it. `saved` holds the rest a hand-written backward
    reads (gates, normalised inputs, masks, statistics): computed by the same forward in the
    case's dtype, handed to the manual gradient detached, never audited, and watched by the
    in-place guard ("saved <name>"), like the intermediates.
    """

    loss: torch.Tensor
    intermediates: Mapping[str, torch.Tensor] = field(default_factory=dict)
    saved: Mapping[str, torch.Tensor] = field(default_factory=dict)

    def detached(self) -> Forward:
        return Forward(
            self.loss.detach(),
            {name: t.detach() for name, t in self.intermediates.items()},
            {name: t.detach() for name, t in self.saved.items()},
        )


class ModelFactory(Protocol):
    """Builds the model a model plugin registers: `factory(**dataset.model_args, **options)`.

    The data declares what the model needs to be built (`vocab_size` and `block_size` for
    text, `shapes` and `classes` for random data); `options` are the spec's model options.
    The module's `forward(**batch.tensors)` must return a `Forward`.
    """

    def __call__(self, **kwargs: Any) -> torch.nn.Module: ...


class ManualGradient(Protocol):
    """A hand-written backward: name -> dLoss/dTensor, computed under `torch.no_grad()`.

    `forward` holds the detached loss and intermediates of the same batch;
    names are the model's `named_parameters()` names and its intermediate names.
    """

    def __call__(
        self, model: torch.nn.Module, batch: Batch, forward: Forward, **options: Any
    ) -> Mapping[str, torch.Tensor]: ...


class Dataset(Protocol):
    """Draws seeded batches, and declares what a model needs to be built from them."""

    @property
    def model_args(self) -> Mapping[str, Any]:
        """Keyword arguments for the model factory (e.g. `vocab_size` for text)."""
        ...

    def batches(
        self, split: str, count: int | None, size: int | None, seed: int
    ) -> Iterator[Batch]:
        """Yield batches on the CPU; the same arguments always give the same batches."""
        ...


class DataLoader(Protocol):
    """Loads a dataset from a spec's `data.options`; relative paths resolve against `base_dir`."""

    def __call__(self, options: Mapping[str, Any], base_dir: Path) -> Dataset: ...
