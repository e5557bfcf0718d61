"""Pairing what `gradaudit.check` is given: each tensor autograd differentiates with the
manual gradient for it, by name (a mapping), by position (a list: rows named by the
caller's own variables), or by prefix in a namespace (`dX` with `X`).
"""

from __future__ import annotations

import sys
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import FrameType
from typing import Any


@dataclass
class Pair:
    """One tensor to audit: autograd's side (`tensor`) and the manual gradient, if any."""

    name: str
    tensor: Any = None
    grad: Any = None
    problem: str | None = None
    computed: str | None = None  # the dtype the gradient was computed in, when known


def list_names(values: object, frame: FrameType | None) -> list[str] | None:
    """Each value's variable name in `frame` (None unless `values` is a list or tuple):
    found by identity among the frame's local then global variables (what makemore's `cmp`
    is given by hand); a value no name or several rows' names point to keeps `tensors[i]`."""
    if not isinstance(values, Sequence) or isinstance(values, (str, bytes, Mapping)):
        return None
    scopes = [frame.f_locals, frame.f_globals] if frame is not None else []
    found = []
    for i, value in enumerate(values):
        names = (k for scope in scopes for k, v in scope.items() if v is value)
        found.append(next((k for k in names if not k.startswith("_")), f"tensors[{i}]"))
    counts = Counter(found)
    return [name if counts[name] == 1 else f"tensors[{i}]" for i, name in enumerate(found)]


def is_gradient(value: object) -> bool:
    import torch

    numpy = sys.modules.get("numpy")
    return isinstance(value, torch.Tensor) or (
        numpy is not None and isinstance(value, numpy.ndarray)
    )


def by_prefix(namespace: Mapping[str, Any], prefix: str, ignore: Sequence[str]) -> list[Pair]:
    """`dX` pairs with `X`; a tensor named with the prefix that pairs with nothing is
    reported by name (pass its name in `ignore` when it is not a gradient)."""
    import fnmatch

    import torch

    if not prefix:
        raise ValueError("prefix must not be empty")
    pairs = []
    for key, value in namespace.items():
        if not (key.startswith(prefix) and len(key) > len(prefix) and is_gradient(value)):
            continue
        if any(fnmatch.fnmatchcase(key, glob) for glob in ignore):
            continue
        target = key[len(prefix) :]
        tensor = namespace.get(target)
        if isinstance(tensor, torch.Tensor):
            pairs.append(Pair(target, tensor, value))
        else:
            what = "no" if target not in namespace else f"a {type(tensor).__name__}, not a"
            pairs.append(
                Pair(
                    key,
                    problem=f"'{key}' cannot be paired: there is {what} tensor '{target}' "
                    f"(ignore=['{key}'] if it is not a gradient)",
                )
            )
    if not pairs:
        raise ValueError(f"no tensors named '{prefix}X' with a tensor 'X' in the namespace")
    return pairs


def by_name(
    tensors: Mapping[str, Any] | Sequence[Any],
    grads: Mapping[str, Any] | Sequence[Any],
    rows: Sequence[str] | None = None,
) -> list[Pair]:
    if isinstance(tensors, Mapping) != isinstance(grads, Mapping):
        raise ValueError("tensors and grads must both be mappings or both be sequences")
    if not isinstance(tensors, Mapping):
        assert not isinstance(grads, Mapping)
        if len(tensors) != len(grads):
            raise ValueError(f"{len(tensors)} tensors but {len(grads)} gradients")
        names = rows or [f"tensors[{i}]" for i in range(len(tensors))]
        return [Pair(n, t, g) for n, t, g in zip(names, tensors, grads, strict=True)]
    assert isinstance(grads, Mapping)
    # A NumpyGradients mapping says what each array was computed in, and why some are missing.
    computed: Mapping[str, str] = getattr(grads, "computed_in", {})
    problems: Mapping[str, str] = getattr(grads, "problems", {})
    pairs = []
    for n, t in tensors.items():
        if n in grads:
            pairs.append(Pair(str(n), t, grads[n], computed=computed.get(n)))
        else:
            pairs.append(Pair(str(n), t, problem=problems.get(n, "no manual gradient")))
    pairs += [
        Pair(str(n), problem=f"gradient for '{n}' has no tensor of that name to pair with")
        for n in [*grads, *problems]
        if n not in tensors
    ]
    if not pairs:
        raise ValueError("no tensors to check")
    return pairs
