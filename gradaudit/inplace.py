"""The in-place guard of one batch: what the model's forward and the manual gradient must
only read is compared bit for bit with copies taken before them. The comparison's answer
is queued on the batch's one device read (syncs.Reads), which the comparison of gradients
takes: a GPU then waits once per batch, not once more for the guard."""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch

from gradaudit.guards import Snapshot, restore, watched
from gradaudit.syncs import Reads, same_bits_later
from gradaudit.types import Batch, Forward


class InPlaceGuard:
    """Take copies as the batch goes (`forward_done`, `manual_starts`), `queue` the
    comparison, then ask `verdict` for what was changed.

    The copies go into `kept` tensors, which a pass hands every batch's guard: reusing
    them spares the allocator a megabyte or more a batch (fresh large buffers cost page
    faults on the CPU, where they took as long as the copies themselves)."""

    def __init__(self, batch: Batch, kept: dict[str, torch.Tensor] | None = None) -> None:
        self.kept = kept if kept is not None else {}
        self.before = self._copies("before", batch.tensors)
        self.state: Snapshot | None = None
        self.labels: list[str] = []
        self.forward_answer: Callable[[], list[bool]] = list
        self.answer: Callable[[], list[bool]] = list

    def _copies(self, prefix: str, tensors: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Copies of the tensors, in kept tensors of the same layout where there are some."""
        found = {}
        for name, tensor in tensors.items():
            tensor = tensor.detach()
            key = f"{prefix} {name}"
            copy = self.kept.get(key)
            if copy is None or not _same_layout(copy, tensor):
                copy = self.kept[key] = torch.empty_like(tensor)
            found[name] = copy.copy_(tensor)
        return found

    def forward_done(self, batch: Batch, reads: Reads) -> None:
        """Compare the batch with its copy now (the answer rides on `reads`): if the
        forward left it alone, that copy is also what the manual gradient must leave."""
        pairs = [(self.before[n], batch[n]) for n in self.before]
        self.forward_answer = same_bits_later(pairs, reads)

    def manual_starts(self, model: torch.nn.Module, forward: Forward) -> None:
        """Copies of what a manual gradient must only read: parameters, buffers, forward
        tensors."""
        self.state = self._copies("state", watched(model, forward))

    def queue(
        self, model: torch.nn.Module, forward: Forward, batch: Batch, reads: Reads, ran: bool
    ) -> None:
        """Compare, when the manual gradient `ran` (returned): the model, the forward's
        tensors and the batch after it."""
        pairs: list[tuple[torch.Tensor, torch.Tensor]] = []
        self.labels = []
        if ran and self.state is not None:
            now = watched(model, forward)
            pairs += [(v, now[k].detach()) for k, v in self.state.items()]
            pairs += [(self.before[n], batch[n]) for n in self.before]
            self.labels += [*self.state, *["the batch"] * len(self.before)]
        self.answer = same_bits_later(pairs, reads)

    def verdict(self, model: torch.nn.Module) -> tuple[str, list[str]] | None:
        """None when nothing changed; ("forward", []) when the model's forward changed the
        batch; ("manual", what) when the manual gradient changed `what` (the model's
        parameters and buffers are put back)."""
        if not all(self.forward_answer()):
            return "forward", []
        same = self.answer()
        touched = list(dict.fromkeys(k for k, ok in zip(self.labels, same, strict=True) if not ok))
        if not touched:
            return None
        assert self.state is not None
        restore(dict(self.state), model)
        return "manual", touched


def _same_layout(a: torch.Tensor, b: torch.Tensor) -> bool:
    return (
        a.shape == b.shape
        and a.dtype == b.dtype
        and a.device == b.device
        and a.stride() == b.stride()
        and a.layout == b.layout
    )
