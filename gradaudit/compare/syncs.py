"""Host-device synchronisations: count them, and make fewer.

On a GPU every Python read of a tensor's value (`float(t)`, `.item()`, `.tolist()`,
`bool(t)`, `torch.equal`) waits for the device to drain its queue. `count_syncs()` counts
those reads on any device, the CPU included, so a test can hold the hot path to a budget
without a GPU. The helpers below answer many questions with one read.
"""

from __future__ import annotations

import ctypes
import functools
import sys
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch.overrides import TorchFunctionMode

# The reads of a tensor's value from Python: each one waits for the device.
_READS = {
    torch.Tensor.__float__: "float",
    torch.Tensor.__int__: "int",
    torch.Tensor.__bool__: "bool",
    torch.Tensor.__index__: "index",
    torch.Tensor.item: "item",
    torch.Tensor.tolist: "tolist",
    torch.equal: "equal",
    torch.Tensor.equal: "equal",
}


class SyncCounter(TorchFunctionMode):
    """Counts the value reads (`counts` by kind, `total`) made while it is active."""

    active = 0  # counters entered and not yet left, in this process

    def __init__(self) -> None:
        super().__init__()
        self.counts: Counter[str] = Counter()

    def __enter__(self) -> SyncCounter:
        SyncCounter.active += 1
        super().__enter__()  # type: ignore[no-untyped-call]
        return self

    def __exit__(self, *exc: object) -> None:
        SyncCounter.active -= 1
        super().__exit__(*exc)  # type: ignore[no-untyped-call]

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def __torch_function__(
        self,
        func: Any,
        types: Any,
        args: Sequence[Any] = (),
        kwargs: Mapping[str, Any] | None = None,
    ) -> Any:
        kind = _READS.get(func)
        if kind is not None:
            self.counts[kind] += 1
        return func(*args, **(kwargs or {}))


@contextmanager
def count_syncs() -> Iterator[SyncCounter]:
    """Count the value reads made inside the block (a debug tool: it slows torch calls)."""
    counter = SyncCounter()
    with counter:
        yield counter


def counting() -> bool:
    """Whether a SyncCounter is active (it then stands in for a GPU on the CPU)."""
    return SyncCounter.active > 0


class Reads:
    """Device values queued to be read together: one host-device synchronisation for all of
    them. `add` returns a handle; after `read`, `row`, `rows` and `value` give the values
    (as Python floats; float64 holds every index and count below 2**53 exactly)."""

    def __init__(self) -> None:
        self.parts: list[torch.Tensor] = []
        self.starts: list[int] = []
        self.size = 0
        self.values: list[float] = []

    def add(self, values: torch.Tensor) -> int:
        flat = values.detach().reshape(-1).double()
        if self.parts and flat.device != self.parts[0].device:
            flat = flat.to(self.parts[0].device)
        self.parts.append(flat)
        self.starts.append(self.size)
        self.size += flat.numel()
        return len(self.parts) - 1

    def read(self) -> None:
        """One read for everything added (none when nothing is new since the last)."""
        if self.parts and len(self.values) < self.size:
            joined = torch.cat(self.parts) if len(self.parts) > 1 else self.parts[0]
            self.values = joined.tolist()

    def row(self, handle: int) -> list[float]:
        start = self.starts[handle]
        return self.values[start : start + self.parts[handle].numel()]

    def rows(self, handle: int, count: int) -> list[list[float]]:
        flat = self.row(handle)
        width = len(flat) // count if count else 0
        return [flat[k * width : (k + 1) * width] for k in range(count)]

    def value(self, handle: int) -> float:
        return self.row(handle)[0]


@functools.cache
def memcmp() -> Callable[[int, int, int], int] | None:
    """The C library's memcmp, where ctypes finds one (None elsewhere)."""
    try:
        libc = ctypes.CDLL(None) if sys.platform != "win32" else ctypes.cdll.msvcrt
        found = libc.memcmp
    except (OSError, AttributeError):
        return None
    found.restype = ctypes.c_int
    found.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t]
    return found


def same_bytes(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Whether two CPU tensors of one shape and dtype hold the same bits: memcmp on their
    dense bytes (3-10x faster than torch.equal, whose per-call cost dominates at gradient
    sizes; measured in benchmarks/README.md), torch.equal on the bits without memcmp."""
    compare = memcmp()
    if compare is None:
        return torch.equal(_words(a), _words(b))
    a, b = dense(a), dense(b)
    size = a.numel() * a.element_size()
    return (
        size == 0 or a.data_ptr() == b.data_ptr() or compare(a.data_ptr(), b.data_ptr(), size) == 0
    )


def dense(tensor: torch.Tensor) -> torch.Tensor:
    """The tensor's values in dense, contiguous memory (itself, most of the time), whose
    bytes memcmp and memmove can take."""
    if (
        tensor.layout == torch.strided
        and tensor.is_contiguous()
        and not (tensor.is_conj() or tensor.is_neg())
    ):
        return tensor
    tensor = tensor.detach()
    if tensor.layout != torch.strided:
        tensor = tensor.to_dense()
    if tensor.is_conj():
        tensor = tensor.resolve_conj()
    if tensor.is_neg():
        tensor = tensor.resolve_neg()
    return tensor.contiguous()


def _words(t: torch.Tensor) -> torch.Tensor:
    """The tensor's bytes as 64-bit words where they fill whole words (equal compares them
    1.8x faster than 32-bit ones), else its bits element by element."""
    if t.is_contiguous() and t.numel() and (t.numel() * t.element_size()) % 8 == 0:
        return t.reshape(-1).view(torch.uint8).view(torch.int64)
    return _bits(t)


def _bits(t: torch.Tensor) -> torch.Tensor:
    """The tensor's bits as integers, so NaN equals NaN and -0.0 differs from 0.0."""
    if t.is_floating_point() or t.is_complex():
        width = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}
        size = t.element_size()
        if t.is_complex():
            t = torch.view_as_real(t)
            size //= 2
        return t.view(width[size])  # same element size: any strides, no copy
    return t


def same_bits_all(pairs: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> list[bool]:
    """For each pair, whether the two tensors have the same shape, dtype and bits: one read
    for all of them (not one read per pair)."""
    return same_bits_later(pairs, Reads())()


def same_bits_later(
    pairs: Sequence[tuple[torch.Tensor, torch.Tensor]], reads: Reads
) -> Callable[[], list[bool]]:
    """same_bits_all, with the device's answer queued on `reads` (read with whatever else
    it holds, when the returned function is called: reading it then if nobody has)."""
    alike = [a.shape == b.shape and a.dtype == b.dtype and a.device == b.device for a, b in pairs]
    checked = [(a, b) for (a, b), ok in zip(pairs, alike, strict=True) if ok]
    if not checked:
        return lambda: alike
    device = checked[0][0].device
    if device.type == "cpu" and not counting():
        # Reads cost nothing on the CPU: compare the bytes. Under count_syncs() the device
        # path runs, so the count is what a GPU would see.
        found = [ok and same_bytes(a, b) for (a, b), ok in zip(pairs, alike, strict=True)]
        return lambda: found
    handle = reads.add(torch.stack([(_bits(a) == _bits(b)).all().to(device) for a, b in checked]))

    def answer() -> list[bool]:
        reads.read()
        values = iter(reads.row(handle))
        return [ok and bool(next(values)) for ok in alike]

    return answer


def largest_entry(tensors: Sequence[torch.Tensor]) -> torch.Tensor | float:
    """The largest finite |entry| of the tensors as a 0-d float64 tensor, not read (0.0
    when there is none): the comparison reads it with its results."""
    maxima = [t.detach().abs().amax().double() for t in tensors if t.numel()]
    if not maxima:
        return 0.0
    device = maxima[0].device
    found = torch.stack([m.to(device) for m in maxima])
    return torch.where(found.isfinite(), found, 0.0).amax()


def any_nonzero(tensors: Sequence[torch.Tensor]) -> list[bool]:
    """For each tensor, whether it has a nonzero entry, in one read."""
    live = [t for t in tensors if t.numel()]
    if not live:
        return [False] * len(tensors)
    device = live[0].device
    flags = iter(torch.stack([t.any().to(device) for t in live]).tolist())
    return [bool(next(flags)) if t.numel() else False for t in tensors]
