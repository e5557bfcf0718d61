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
    """One (B, T) batch of token ids and its targets.

    `index` and `seed` say where the batch came from, so that a failing
    batch can be reproduced on its own (`batches: {seed: <seed>, count: 1}`).
    """

    inputs: torch.Tensor
    targets: torch.Tensor
    index: int = 0
    seed: int = 0

    def to(self, device: torch.device | str) -> Batch:
        return Batch(self.inputs.to(device), self.targets.to(device), self.index, self.seed)


@dataclass(frozen=True)
class Forward:
    """What a model's forward returns: the scalar loss and its named intermediates.

    Every intermediate must be part of the loss's graph: gradaudit asks
    autograd for dLoss/dTensor of each one.
    """

    loss: torch.Tensor
    intermediates: Mapping[str, torch.Tensor] = field(default_factory=dict)

    def detached(self) -> Forward:
        return Forward(
            self.loss.detach(), {name: t.detach() for name, t in self.intermediates.items()}
        )


class ModelFactory(Protocol):
    """Builds the model a model plugin registers.

    The module's `forward(inputs, targets)` must return a `Forward`.
    """

    def __call__(self, vocab_size: int, **options: Any) -> torch.nn.Module: ...


class ManualGradient(Protocol):
    """A hand-written backward: name -> dLoss/dTensor, computed under `torch.no_grad()`.

    `forward` holds the detached loss and intermediates of the same batch;
    names are the model's `named_parameters()` names and its intermediate names.
    """

    def __call__(
        self, model: torch.nn.Module, batch: Batch, forward: Forward, **options: Any
    ) -> Mapping[str, torch.Tensor]: ...


class Dataset(Protocol):
    """A token corpus that draws seeded batches."""

    @property
    def vocab_size(self) -> int: ...

    def batches(
        self, split: str, count: int | None, size: int | None, block_size: int, seed: int
    ) -> Iterator[Batch]:
        """Yield batches on the CPU; the same arguments always give the same batches."""
        ...


class DataLoader(Protocol):
    """Loads a dataset from a spec's `data.options`; relative paths resolve against `base_dir`."""

    def __call__(self, options: Mapping[str, Any], base_dir: Path) -> Dataset: ...
