"""gradaudit_random: seeded tensors from declared names, shapes, dtypes and distributions
(data loader "random"), for models whose inputs are not text.

    data:
      plugin: random
      options:
        tensors:
          x: {shape: [16]}                                  # float, normal(0, 1)
          z: [4, 4]                                         # the same, short
          image: {shape: [3, 8, 8], distribution: uniform, low: -1, high: 1}
          y: {shape: [], classes: 4}                        # int64 class ids in [0, 4)
          mask: {shape: [16], dtype: bool, p: 0.5}          # True with probability p

Each shape is one row's: the batch's `size` is put in front of it. Floating tensors are
cast by gradaudit to each case's dtype; integer and bool tensors stay as they are. The
model factory receives `shapes` ({name: row shape}) and `classes` ({name: count}).
Batch k is drawn from its own generator seeded with `seed + k` (val: `seed + k + 2**31`),
so any batch can be drawn alone. Written only against gradaudit's public API.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gradaudit import Batch, hookimpl

__all__ = ["RandomData", "load_random", "register_data"]

_KEYS = {"shape", "dtype", "distribution", "mean", "std", "low", "high", "classes", "p"}
_DISTRIBUTIONS = ("normal", "uniform")
_VAL_OFFSET = 2**31


@hookimpl
def register_data(register: Callable[[str, Any], None]) -> None:
    register("random", load_random)


@dataclass(frozen=True)
class TensorSpec:
    """One declared tensor: its row shape and how its values are drawn."""

    name: str
    shape: tuple[int, ...]
    kind: str  # float | int | bool
    distribution: str = "normal"
    a: float = 0.0  # mean or low
    b: float = 1.0  # std or high
    classes: int = 0
    p: float = 0.5


def load_random(options: Mapping[str, Any], base_dir: Path) -> RandomData:
    """Read `options.tensors`; every mistake is one ValueError naming the tensor and key."""
    unknown = sorted(str(k) for k in options if k != "tensors")
    if unknown:
        raise ValueError(f"unknown random data option(s) {', '.join(unknown)}: allowed is tensors")
    declared = options.get("tensors")
    if not isinstance(declared, Mapping) or not declared:
        raise ValueError("random data needs `tensors`: a mapping name -> {shape: [...], ...}")
    return RandomData([_tensor_spec(str(name), body) for name, body in declared.items()])


def _tensor_spec(name: str, body: Any) -> TensorSpec:
    if isinstance(body, list):  # `x: [16]` is short for `x: {shape: [16]}`
        body = {"shape": body}
    if not isinstance(body, Mapping):
        raise ValueError(f"tensors.{name}: expected a mapping with at least `shape`")
    extra = sorted(str(k) for k in body if k not in _KEYS)
    if extra:
        raise ValueError(f"tensors.{name}: unknown key(s) {', '.join(extra)}")
    shape = body.get("shape")
    if not isinstance(shape, list) or not all(
        isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape
    ):
        raise ValueError(f"tensors.{name}.shape: expected a list of sizes >= 0, got {shape!r}")
    classes = body.get("classes", 0)
    kind = str(body.get("dtype", "int" if classes else "float"))
    if kind not in ("float", "int", "bool"):
        raise ValueError(f"tensors.{name}.dtype: expected float, int or bool, got {kind!r}")
    if kind == "int" and (not isinstance(classes, int) or isinstance(classes, bool) or classes < 1):
        raise ValueError(f"tensors.{name}: an int tensor needs `classes`, a count >= 1")
    distribution = str(body.get("distribution", "normal"))
    if distribution not in _DISTRIBUTIONS:
        raise ValueError(
            f"tensors.{name}.distribution: expected {' or '.join(_DISTRIBUTIONS)}, "
            f"got {distribution!r}"
        )
    normal = distribution == "normal"
    a = _number(name, body, "mean" if normal else "low", 0.0 if normal else -1.0)
    b = _number(name, body, "std" if normal else "high", 1.0)
    if (normal and b <= 0) or (not normal and b <= a):
        raise ValueError(f"tensors.{name}: an empty distribution ({distribution} {a}, {b})")
    p = _number(name, body, "p", 0.5)
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"tensors.{name}.p: expected a probability, got {p}")
    return TensorSpec(name, tuple(shape), kind, distribution, a, b, int(classes or 0), p)


def _number(name: str, body: Mapping[str, Any], key: str, default: float) -> float:
    value = body.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"tensors.{name}.{key}: expected a number, got {value!r}")
    return float(value)


class RandomData:
    """Draws batches of the declared tensors; see the module docstring."""

    def __init__(self, tensors: list[TensorSpec]) -> None:
        self.tensors = tensors

    @property
    def model_args(self) -> dict[str, Any]:
        return {
            "shapes": {t.name: t.shape for t in self.tensors},
            "classes": {t.name: t.classes for t in self.tensors if t.kind == "int"},
        }

    def batches(
        self, split: str, count: int | None, size: int | None, seed: int
    ) -> Iterator[Batch]:
        if count is None or size is None:
            raise ValueError("random data needs batches.count and batches.size")
        offset = _VAL_OFFSET if split == "val" else 0
        for k in range(count):
            yield self.draw(size, seed + k + offset, index=k, seed=seed + k)

    def draw(self, size: int, generator_seed: int, index: int = 0, seed: int = 0) -> Batch:
        import torch

        generator = torch.Generator().manual_seed(generator_seed)
        drawn: dict[str, torch.Tensor] = {}
        for t in self.tensors:
            shape = (size, *t.shape)
            if t.kind == "int":
                drawn[t.name] = torch.randint(t.classes, shape, generator=generator)
            elif t.kind == "bool":
                drawn[t.name] = torch.rand(shape, generator=generator) < t.p
            elif t.distribution == "normal":
                drawn[t.name] = torch.randn(shape, generator=generator) * t.b + t.a
            else:
                drawn[t.name] = torch.rand(shape, generator=generator) * (t.b - t.a) + t.a
        return Batch(drawn, index, seed)
