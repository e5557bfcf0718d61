"""The in-place guard of one batch: what the model's forward and the manual gradient must
only read is compared bit for bit with copies taken before them.

On the CPU the copies lie in one buffer kept from batch to batch, all made with one torch
call and each compared with one memcmp (torch's per-call costs, not the memory, were most of
the guard's time at gradient sizes: 0.44 ms of a 4.5 ms CharRNN batch). On a
device the copies are tensors, and the comparison's answer is queued on the batch's one
device read (syncs.Reads), which the comparison of gradients takes: a GPU then waits once
per batch, not once more for the guard."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping

import torch

from gradaudit.guards import restore, watched
from gradaudit.syncs import Reads, counting, dense, memcmp, same_bits_later
from gradaudit.types import Batch, Forward

Answer = Callable[[], list[bool]]
Kept = dict[str, object]  # a pass's buffers and layouts, handed to every batch's guard
ALIGN = 16  # bytes: the largest element (complex128)


class InPlaceGuard:
    """Take copies as the batch goes (the batch at the start, the rest at `manual_starts`),
    compare them (`forward_done`, `queue`), then ask `verdict` for what was changed.

    The copies go into buffers `kept` from batch to batch (one per pass): reusing them
    spares the allocator a megabyte or more a batch (fresh large buffers cost page faults
    on the CPU), and their layout is worked out once."""

    def __init__(self, batch: Batch, kept: Kept | None = None) -> None:
        self.kept = kept if kept is not None else {}
        self.before = _copies(batch.tensors, self.kept, "batch")
        self.state: _Bytes | _Tensors | None = None
        self.forward_answer: Answer = list
        self.state_answer: Answer = list
        self.batch_answer: Answer = list

    def forward_done(self, batch: Batch, reads: Reads) -> None:
        """Compare the batch with its copy now (the answer rides on `reads`): if the
        forward left it alone, that copy is also what the manual gradient must leave."""
        self.forward_answer = self.before.answer(batch.tensors, reads)

    def manual_starts(self, model: torch.nn.Module, forward: Forward, batch: Batch) -> None:
        """Copy what a manual gradient must only read besides the batch: parameters,
        buffers and the forward's tensors."""
        self.state = _copies(watched(model, forward), self.kept, "state")

    def queue(
        self, model: torch.nn.Module, forward: Forward, batch: Batch, reads: Reads, ran: bool
    ) -> None:
        """Compare, when the manual gradient `ran` (returned): the model, the forward's
        tensors and the batch after it."""
        if ran and self.state is not None:
            self.state_answer = self.state.answer(watched(model, forward), reads)
            self.batch_answer = self.before.answer(batch.tensors, reads)

    def verdict(self, model: torch.nn.Module) -> tuple[str, list[str]] | None:
        """None when nothing changed; ("forward", []) when the model's forward changed the
        batch; ("manual", what) when the manual gradient changed `what` (the model's
        parameters and buffers are put back)."""
        if not all(self.forward_answer()):
            return "forward", []
        same, batch_same = self.state_answer(), self.batch_answer()  # empty: did not return
        if self.state is None or (all(same) and all(batch_same)):
            return None
        touched = [label for label, ok in zip(self.state.labels, same, strict=True) if not ok]
        touched += [] if all(batch_same) else ["the batch"]
        restore(self.state.tensors(), model)
        return "manual", touched


def _copies(tensors: Mapping[str, torch.Tensor], kept: Kept, key: str) -> _Bytes | _Tensors:
    values = list(tensors.values())
    if all(t.is_cpu for t in values) and not counting() and memcmp() is not None:
        return _Bytes(tensors, values, kept, key)
    return _Tensors(tensors, kept, key)


class _Layout:
    """Where each tensor's copy lies in one CPU buffer: its bytes, from an ALIGN boundary
    (so that it can be viewed in its dtype; the buffer's own start is aligned by torch's
    allocator), and a view of them in the tensor's dtype and shape."""

    def __init__(self, kinds: list[tuple[torch.Size, torch.dtype]]) -> None:
        self.kinds = kinds
        self.sizes = [math.prod(shape) * dtype.itemsize for shape, dtype in kinds]
        offsets, total = [], 0
        for size in self.sizes:
            offsets.append(total)
            total += -(-size // ALIGN) * ALIGN
        self.buffer = torch.empty(max(total, 1), dtype=torch.uint8)
        base = self.buffer.data_ptr()
        self.starts = [base + offset for offset in offsets]
        self.views = [
            self.buffer[offset : offset + size].view(dtype).view(shape)
            for offset, size, (shape, dtype) in zip(offsets, self.sizes, kinds, strict=True)
        ]


class _Bytes:
    """CPU tensors' values in a kept buffer: copied with one `_foreach_copy_` (torch's loop,
    not Python's), compared with a memcmp each."""

    def __init__(
        self, tensors: Mapping[str, torch.Tensor], values: list[torch.Tensor], kept: Kept, key: str
    ) -> None:
        self.labels = list(tensors)
        kinds = [(t.shape, t.dtype) for t in values]
        layout = kept.get(key)
        if not isinstance(layout, _Layout) or layout.kinds != kinds:
            layout = kept[key] = _Layout(kinds)
        self.layout = layout
        if any(t.layout != torch.strided for t in values):
            values = [dense(t) for t in values]
        with torch.no_grad():  # parameters would make the copies part of a graph
            _copy_all(layout.views, values)

    def answer(self, now: Mapping[str, torch.Tensor], reads: Reads) -> Answer:
        """Per label, whether `now` holds the same values, bit for bit (known at once: no
        device read)."""
        compare = memcmp()
        assert compare is not None
        layout, found = self.layout, []
        for label, (shape, dtype), start, size in zip(
            self.labels, layout.kinds, layout.starts, layout.sizes, strict=True
        ):
            tensor = now.get(label)
            if tensor is None or tensor.shape != shape or tensor.dtype != dtype:
                found.append(False)
            else:
                raw = dense(tensor)  # held: a copy of a strided tensor must outlive memcmp
                found.append(size == 0 or compare(start, raw.data_ptr(), size) == 0)
        return lambda: found

    def tensors(self) -> dict[str, torch.Tensor]:
        """Each label's copy (to put it back)."""
        return dict(zip(self.labels, self.layout.views, strict=True))


def _copy_all(copies: list[torch.Tensor], values: list[torch.Tensor]) -> None:
    foreach = getattr(torch, "_foreach_copy_", None)  # torch 2.1 may lack it
    if foreach is not None:
        foreach(copies, values)
    else:
        for copy, value in zip(copies, values, strict=True):
            copy.copy_(value)


class _Tensors:
    """Copies as tensors of the same layout, compared on their device (see syncs)."""

    def __init__(self, tensors: Mapping[str, torch.Tensor], kept: Kept, key: str) -> None:
        self.labels = list(tensors)
        self.copies: dict[str, torch.Tensor] = {}
        for label, tensor in tensors.items():
            tensor = tensor.detach()
            copy = kept.get(f"{key} {label}")
            if not isinstance(copy, torch.Tensor) or not _same_layout(copy, tensor):
                copy = kept[f"{key} {label}"] = torch.empty_like(tensor)
            self.copies[label] = copy.copy_(tensor)

    def answer(self, now: Mapping[str, torch.Tensor], reads: Reads) -> Answer:
        """Per label, whether `now` holds the same bits, read with `reads`."""
        present = [label for label in self.labels if label in now]
        pairs = [(self.copies[label], now[label].detach()) for label in present]
        same = same_bits_later(pairs, reads)

        def answer() -> list[bool]:
            found = dict(zip(present, same(), strict=True))
            return [found.get(label, False) for label in self.labels]

        return answer

    def tensors(self) -> dict[str, torch.Tensor]:
        return dict(self.copies)


def _same_layout(a: torch.Tensor, b: torch.Tensor) -> bool:
    return (
        a.shape == b.shape
        and a.dtype == b.dtype
        and a.device == b.device
        and a.stride() == b.stride()
        and a.layout == b.layout
    )
