"""The in-place guard of one batch: what the model's forward and the manual gradient must
only read is compared bit for bit with copies taken before them.

On the CPU the copies are bytes: each tensor is copied with one memmove into a buffer kept
from batch to batch, and compared with one memcmp (torch's per-call costs, not the memory,
were most of the guard's time at gradient sizes: 0.44 ms of a 4.5 ms CharRNN batch). On a
device the copies are tensors, and the comparison's answer is queued on the batch's one
device read (syncs.Reads), which the comparison of gradients takes: a GPU then waits once
per batch, not once more for the guard."""

from __future__ import annotations

import ctypes
from collections.abc import Callable, Mapping

import torch

from gradaudit.guards import restore, watched
from gradaudit.syncs import Reads, counting, dense, memcmp, same_bits_later
from gradaudit.types import Batch, Forward

Answer = Callable[[], list[bool]]
ALIGN = 16  # bytes: the largest element (complex128)


class InPlaceGuard:
    """Take copies as the batch goes (at the start, `manual_starts`), compare them
    (`forward_done`, `queue`), then ask `verdict` for what was changed.

    The copies go into `kept` buffers, which a pass hands every batch's guard: reusing
    them spares the allocator a megabyte or more a batch (fresh large buffers cost page
    faults on the CPU)."""

    def __init__(self, batch: Batch, kept: dict[str, torch.Tensor] | None = None) -> None:
        self.kept = kept if kept is not None else {}
        self.before = _copies(batch.tensors, self.kept, "batch")
        self.state: _Bytes | _Tensors | None = None
        self.forward_answer: Answer = list
        self.state_answer: Answer = list

    def forward_done(self, batch: Batch, reads: Reads) -> None:
        """Compare the batch with its copy now (the answer rides on `reads`): if the
        forward left it alone, that copy is also what the manual gradient must leave."""
        self.forward_answer = self.before.answer(batch.tensors, reads)

    def manual_starts(self, model: torch.nn.Module, forward: Forward, batch: Batch) -> None:
        """Copy what a manual gradient must only read: parameters, buffers, forward tensors
        and the batch (copied again with them, so that one comparison covers all)."""
        self.state = _copies(_read_only(model, forward, batch), self.kept, "state")

    def queue(
        self, model: torch.nn.Module, forward: Forward, batch: Batch, reads: Reads, ran: bool
    ) -> None:
        """Compare, when the manual gradient `ran` (returned): the model, the forward's
        tensors and the batch after it."""
        if ran and self.state is not None:
            self.state_answer = self.state.answer(_read_only(model, forward, batch), reads)

    def verdict(self, model: torch.nn.Module) -> tuple[str, list[str]] | None:
        """None when nothing changed; ("forward", []) when the model's forward changed the
        batch; ("manual", what) when the manual gradient changed `what` (the model's
        parameters and buffers are put back)."""
        if not all(self.forward_answer()):
            return "forward", []
        same = self.state_answer()  # empty when the manual gradient did not return
        if self.state is None or all(same):
            return None
        changed = [label for label, ok in zip(self.state.labels, same, strict=True) if not ok]
        touched = [label for label in changed if not label.startswith(_BATCH)]
        touched += ["the batch"] if len(touched) < len(changed) else []
        restore(self.state.tensors(), model)
        return "manual", touched


_BATCH = "batch "  # the batch's labels among the state's (guards.watched names the rest)


def _read_only(model: torch.nn.Module, forward: Forward, batch: Batch) -> dict[str, torch.Tensor]:
    return watched(model, forward) | {_BATCH + name: t for name, t in batch.tensors.items()}


def _copies(
    tensors: Mapping[str, torch.Tensor], kept: dict[str, torch.Tensor], key: str
) -> _Bytes | _Tensors:
    on_cpu = all(t.device.type == "cpu" for t in tensors.values())
    if on_cpu and not counting() and memcmp() is not None:
        return _Bytes(tensors, kept, key)
    return _Tensors(tensors, kept, key)


class _Bytes:
    """CPU tensors' bytes, end to end in one kept buffer: a memmove each to copy, a memcmp
    each to compare."""

    def __init__(
        self, tensors: Mapping[str, torch.Tensor], kept: dict[str, torch.Tensor], key: str
    ) -> None:
        self.labels = list(tensors)
        raws = [dense(t) for t in tensors.values()]
        self.kinds = [(t.shape, t.dtype) for t in tensors.values()]
        self.sizes = [r.numel() * r.element_size() for r in raws]
        # Each copy starts on an ALIGN boundary, so that it can be viewed in its dtype
        # to be put back (the buffer's own start is aligned by torch's allocator).
        total = sum(-(-size // ALIGN) * ALIGN for size in self.sizes)
        buffer = kept.get(key)
        if buffer is None or buffer.numel() < total:
            buffer = kept[key] = torch.empty(max(total, 1), dtype=torch.uint8)
        self.buffer = buffer
        self.starts = []
        at = buffer.data_ptr()
        for raw, size in zip(raws, self.sizes, strict=True):
            ctypes.memmove(at, raw.data_ptr(), size)
            self.starts.append(at)
            at += -(-size // ALIGN) * ALIGN

    def answer(self, now: Mapping[str, torch.Tensor], reads: Reads) -> Answer:
        """Per label, whether `now` holds the same bytes (known at once: no device read)."""
        compare = memcmp()
        assert compare is not None
        found = []
        for label, (shape, dtype), start, size in zip(
            self.labels, self.kinds, self.starts, self.sizes, strict=True
        ):
            tensor = now.get(label)
            if tensor is None or tensor.shape != shape or tensor.dtype != dtype:
                found.append(False)
            else:
                raw = dense(tensor)  # held: a copy of a strided tensor must outlive memcmp
                found.append(size == 0 or compare(start, raw.data_ptr(), size) == 0)
        return lambda: found

    def tensors(self) -> dict[str, torch.Tensor]:
        """Each label's copy, as a tensor viewing the buffer (to put it back)."""
        found = {}
        base = self.buffer.data_ptr()
        for label, (shape, dtype), start, size in zip(
            self.labels, self.kinds, self.starts, self.sizes, strict=True
        ):
            piece = self.buffer[start - base : start - base + size]
            found[label] = piece.view(dtype).view(shape)
        return found


class _Tensors:
    """Copies as tensors of the same layout, compared on their device (see syncs)."""

    def __init__(
        self, tensors: Mapping[str, torch.Tensor], kept: dict[str, torch.Tensor], key: str
    ) -> None:
        self.labels = list(tensors)
        self.copies = {}
        for label, tensor in tensors.items():
            tensor = tensor.detach()
            copy = kept.get(f"{key} {label}")
            if copy is None or not _same_layout(copy, tensor):
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
