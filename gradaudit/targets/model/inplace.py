"""The in-place guard of one batch: what the model's forward and the manual gradient must
only read is checked for changes against what it held before them.

On the CPU each tensor's bytes are hashed (xxh3-128; why: docs/development.md): hashing reads
the tensors while they are in the cache, where a copy also writes half a megabyte a batch
(the CharRNN's) and compares it after the float64 truth has pushed it out (with the rest of
the cache flushed, as in a run: copy and compare 0.25 ms, the two digests 0.09 ms; see
benchmarks/README.md). A change goes unseen only if the two contents share a 128-bit digest.
The parameters and buffers, which are put back when the manual gradient changed them, are
also copied, once per pass and again only when their digest changed (a forward that
renormalises its weights). On a device the copies are tensors, and the comparison's answer
is queued on the batch's one device read (syncs.Reads), which the comparison of gradients
takes: a GPU then waits once per batch, not once more for the guard."""

from __future__ import annotations

import ctypes
from collections.abc import Callable, Mapping

import torch
import xxhash

from gradaudit.compare.syncs import Reads, counting, dense, same_bits_later
from gradaudit.targets.model.guards import restore, watched
from gradaudit.types import Batch, Forward

Answer = Callable[[], list[bool]]
Kept = dict[str, object]  # what a pass keeps from batch to batch, handed to every guard
_RESTORABLE = ("parameter ", "buffer ")  # labels (guards.watched) of what is put back


class InPlaceGuard:
    """Fingerprint as the batch goes (the batch at the start, the rest at `manual_starts`),
    compare (`forward_done`, `queue`), then ask `verdict` for what was changed.

    `kept` is the pass's, handed to every batch's guard: the parameters' copies (CPU) or
    every copy (device) are kept there, sparing the allocator a megabyte or more a batch."""

    def __init__(self, batch: Batch, kept: Kept | None = None) -> None:
        self.kept = kept if kept is not None else {}
        self.before = _fingerprint(batch.tensors, self.kept, "batch")
        self.state: _Digests | _Tensors | None = None
        self.forward_answer: Answer = list
        self.state_answer: Answer = list
        self.batch_answer: Answer = list

    def forward_done(self, batch: Batch, reads: Reads) -> None:
        """Compare the batch with its fingerprint now (the answer rides on `reads`): if the
        forward left it alone, that is also what the manual gradient must leave."""
        self.forward_answer = self.before.answer(batch.tensors, reads)

    def manual_starts(self, model: torch.nn.Module, forward: Forward) -> None:
        """Fingerprint what a manual gradient must only read besides the batch: parameters,
        buffers and the forward's tensors."""
        self.state = _fingerprint(watched(model, forward), self.kept, "state")

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


def _fingerprint(tensors: Mapping[str, torch.Tensor], kept: Kept, key: str) -> _Digests | _Tensors:
    if all(t.is_cpu for t in tensors.values()) and not counting():
        return _Digests(tensors, kept)
    return _Tensors(tensors, kept, key)


class _Digests:
    """CPU tensors' xxh3-128 digests, with a kept copy of each parameter and buffer whose
    digest matches (made again only when it does not)."""

    def __init__(self, tensors: Mapping[str, torch.Tensor], kept: Kept) -> None:
        self.labels = list(tensors)
        self.kinds = [(t.shape, t.dtype) for t in tensors.values()]
        self.digests = [_digest(t) for t in tensors.values()]
        self.copies: dict[str, torch.Tensor] = {}
        for label, tensor, digest in zip(self.labels, tensors.values(), self.digests, strict=True):
            if label.startswith(_RESTORABLE):
                self.copies[label] = _copy_of(tensor, digest, kept, label)

    def answer(self, now: Mapping[str, torch.Tensor], reads: Reads) -> Answer:
        """Per label, whether `now` holds the same values (known at once: no device read)."""
        found = []
        for label, (shape, dtype), digest in zip(
            self.labels, self.kinds, self.digests, strict=True
        ):
            tensor = now.get(label)
            found.append(
                tensor is not None
                and tensor.shape == shape
                and tensor.dtype == dtype
                and _digest(tensor) == digest
            )
        return lambda: found

    def tensors(self) -> dict[str, torch.Tensor]:
        """The parameters' and buffers' copies from before the manual gradient."""
        return dict(self.copies)


def _digest(tensor: torch.Tensor) -> int:
    """The xxh3-128 digest of the tensor's values, as laid out densely."""
    raw = dense(tensor)  # held: a copy of a strided tensor must outlive the hashing
    size = raw.nbytes
    if not size:
        return 0
    window = _WINDOWS.get(size)
    if window is None:
        if len(_WINDOWS) > 4096:  # batches of ever new shapes: keep it bounded
            _WINDOWS.clear()
        window = _WINDOWS[size] = ctypes.c_char * size
    return xxhash.xxh3_128_intdigest(window.from_address(raw.data_ptr()))


_WINDOWS: dict[int, type[ctypes.Array[ctypes.c_char]]] = {}  # byte arrays by size, made once


def _copy_of(tensor: torch.Tensor, digest: int, kept: Kept, label: str) -> torch.Tensor:
    """The kept copy of `tensor`, made again when its digest or kind changed."""
    entry = kept.get(label)
    if isinstance(entry, tuple) and entry[0] == digest:
        copy: torch.Tensor = entry[1]
        if copy.shape == tensor.shape and copy.dtype == tensor.dtype:
            return copy
    copy = tensor.detach().clone()
    kept[label] = (digest, copy)
    return copy


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
