"""Auditing a manual gradient written in numpy: tensors in, arrays out.

`from_numpy(fn)` turns `fn(params, data) -> {name: array}` (or a tuple of arrays named by
`names=`) into a gradaudit manual gradient `grad(model, batch, forward, **options)`.

numpy has no bfloat16, and numpy code often promotes to float64 on its own (a one-hot
built with `np.zeros`). A gradient computed in float64 says nothing about bfloat16, so
the adapter records the dtype each returned array was computed in and never casts it:
the result is a `NumpyGradients` mapping whose tensors keep numpy's dtype and whose
`computed_in` names it. A consumer compares `computed_in[name]` with the case dtype and
reports a difference as an error ("computed in float64, not bfloat16"); a consumer that
does not know about `computed_in` still sees a dtype mismatch, so it cannot pass either.

Checks made here, per tensor (in `problems`; the tensor is left out of the mapping):
not array-like or not floating point, no torch dtype (float128), NaN/Inf, rows of a
per-row function with different shapes. The shape against autograd's is checked by the
consumer (runner or `gradaudit.check`), as for any manual gradient.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    import numpy as np
    import torch

    from gradaudit.types import Forward

Combine = Literal["sum", "mean"]
NumpyFn = Callable[..., Any]  # fn(params, data, **options)
FLOAT_NAMES = {"float16", "float32", "float64"}


class NumpyGradients(dict[str, "torch.Tensor"]):
    """name -> gradient (in the dtype numpy computed it in), plus what must be reported.

    computed_in: name -> the dtype numpy computed that gradient in ("float64").
    problems: name -> why there is no usable gradient for it (a per-tensor error).
    """

    def __init__(self) -> None:
        super().__init__()
        self.computed_in: dict[str, str] = {}
        self.problems: dict[str, str] = {}


def computed_problem(computed: str | None, dtype: str) -> str | None:
    """Why a gradient computed in `computed` is no result for a `dtype` case, or None."""
    if computed is None or computed == dtype:
        return None
    why = " (numpy has no bfloat16)" if dtype == "bfloat16" else ""
    return f"computed in {computed}, not {dtype}: it says nothing about {dtype}{why}"


def _numpy() -> Any:
    try:
        import numpy
    except ImportError:  # pragma: no cover - depends on the environment
        raise ImportError("the numpy adapter needs numpy: pip install 'gradaudit[numpy]'") from None
    return numpy


def to_array(tensor: torch.Tensor, bfloat16_as: str = "float64") -> np.ndarray[Any, Any]:
    """A CPU copy of `tensor` as a numpy array; bfloat16 becomes `bfloat16_as`."""
    import torch

    t = tensor.detach().cpu()
    if t.dtype == torch.bfloat16:
        t = t.to(getattr(torch, bfloat16_as))
    array: np.ndarray[Any, Any] = t.clone().numpy()
    return array


def to_tensor(
    name: str, value: object, device: torch.device | str = "cpu"
) -> tuple[torch.Tensor | None, str]:
    """(tensor in numpy's own dtype, dtype name) or (None, why it cannot be a gradient)."""
    import torch

    numpy = _numpy()
    try:
        array = numpy.asarray(value)
    except Exception as exc:
        return None, f"numpy gradient for '{name}' is not array-like: {exc}"
    if array.dtype.kind != "f":
        return None, f"numpy gradient for '{name}' is a {array.dtype} array, not floating point"
    if array.dtype.name not in FLOAT_NAMES:
        return (
            None,
            f"numpy gradient for '{name}' is {array.dtype.name}, which torch has no dtype for",
        )
    bad = int(array.size - numpy.isfinite(array).sum())
    if bad:
        return None, (
            f"numpy gradient for '{name}' has {bad} non-finite value"
            f"{'s' if bad > 1 else ''} (NaN/Inf) of {array.size}"
        )
    tensor = torch.from_numpy(numpy.ascontiguousarray(array).copy()).to(device)
    return tensor, array.dtype.name


def _named(result: object, names: Sequence[str | None] | None) -> dict[str, object]:
    """The function's output as name -> value; a bad overall shape raises (all tensors)."""
    if names is not None:
        if isinstance(result, Mapping) or not isinstance(result, (tuple, list)):
            raise TypeError(f"returned {type(result).__name__}; with names= it must be a tuple")
        if len(result) != len(names):
            raise ValueError(f"returned {len(result)} values for {len(names)} names")
        return {n: v for n, v in zip(names, result, strict=True) if n is not None}
    if not isinstance(result, Mapping):
        raise TypeError(
            f"returned {type(result).__name__}, not a mapping name -> array (or pass names=)"
        )
    return {str(k): v for k, v in result.items()}


def _batch_tensors(batch: object) -> dict[str, torch.Tensor]:
    """The batch's named tensors (`Batch.tensors`, or the older inputs/targets pair)."""
    tensors = getattr(batch, "tensors", None)
    if isinstance(tensors, Mapping):
        return dict(tensors)
    return {"inputs": getattr(batch, "inputs"), "targets": getattr(batch, "targets")}  # noqa: B009


def _rows(data: dict[str, torch.Tensor]) -> int:
    sizes = {name: (t.shape[0] if t.dim() else None) for name, t in data.items()}
    distinct = set(sizes.values())
    if not sizes or None in distinct or len(distinct) != 1:
        raise ValueError(f"per_row needs batch tensors with one leading size, got {sizes}")
    rows = distinct.pop()
    assert rows is not None
    return rows


def from_numpy(
    fn: NumpyFn,
    *,
    per_row: bool = False,
    combine: Combine | None = None,
    names: Sequence[str | None] | None = None,
    bfloat16_as: Literal["float32", "float64"] = "float64",
) -> Callable[..., NumpyGradients]:
    """A gradaudit manual gradient from `fn(params, data, **options)` (a spec's
    `gradients.options` reach fn as keyword arguments).

    params: the model's parameters and buffers by name; data: the batch's tensors by name
    and (unless per_row) the forward's intermediates, all as numpy copies (bfloat16 as
    `bfloat16_as`). With `per_row=True`, fn sees one row of every batch tensor at a time
    (for code written for one sequence); `combine` says how the model's loss combines rows:
    "sum" adds the rows' parameter gradients, "mean" averages them. Gradients of tensors
    that are not parameters (intermediates with a leading batch dimension) are stacked,
    divided by the row count for "mean". fn returns {name: array}, or a tuple whose
    positions `names` names (None skips one, e.g. a loss).
    """
    if per_row and combine not in ("sum", "mean"):
        raise ValueError(
            "per_row=True needs combine='sum' or combine='mean' (how the loss adds rows)"
        )
    if bfloat16_as not in ("float32", "float64"):
        raise ValueError("bfloat16_as must be 'float32' or 'float64'")

    def manual(
        model: torch.nn.Module, batch: object, forward: Forward, **options: Any
    ) -> NumpyGradients:
        _numpy()
        params = {
            name: to_array(t, bfloat16_as)
            for name, t in [*model.named_parameters(), *model.named_buffers()]
        }
        batch_tensors = _batch_tensors(batch)
        if not per_row:
            clash = set(batch_tensors) & set(forward.intermediates)
            if clash:
                raise ValueError(f"batch and forward both have {sorted(clash)}")
            data = {
                name: to_array(t, bfloat16_as)
                for name, t in {**batch_tensors, **forward.intermediates}.items()
            }
            outputs = [_named(fn(params, data, **options), names)]
        else:
            outputs = [
                _named(
                    fn(
                        {k: v.copy() for k, v in params.items()},
                        {k: to_array(t[i], bfloat16_as) for k, t in batch_tensors.items()},
                        **options,
                    ),
                    names,
                )
                for i in range(_rows(batch_tensors))
            ]
        return _combine(outputs, set(params), per_row, combine, forward.loss.device)

    manual.__doc__ = fn.__doc__
    manual.__name__ = getattr(fn, "__name__", "numpy_gradient")
    return manual


def _combine(
    outputs: list[dict[str, object]],
    param_names: set[str],
    per_row: bool,
    combine: Combine | None,
    device: torch.device,
) -> NumpyGradients:
    """One gradient per name from the per-row outputs (one output unless per_row)."""
    import torch

    result = NumpyGradients()
    names = list(dict.fromkeys(n for out in outputs for n in out))
    for name in names:
        if any(name not in out for out in outputs):
            result.problems[name] = f"numpy gradient for '{name}' is missing from some rows"
            continue
        converted = [to_tensor(name, out[name]) for out in outputs]
        problem = next((why for t, why in converted if t is None), None)
        if problem is not None:
            result.problems[name] = problem
            continue
        tensors = [t for t, _ in converted if t is not None]
        shapes = {tuple(t.shape) for t in tensors}
        if len(shapes) > 1:
            result.problems[name] = (
                f"numpy gradient for '{name}' has shapes {sorted(shapes)} across rows"
            )
            continue
        dtype = tensors[0].dtype
        for t in tensors[1:]:
            dtype = torch.promote_types(dtype, t.dtype)
        tensors = [t.to(dtype) for t in tensors]
        if not per_row:
            combined = tensors[0]
        elif name in param_names:
            combined = torch.stack(tensors).sum(0)
            if combine == "mean":
                combined = combined / len(tensors)
        else:
            combined = torch.stack(tensors)
            if combine == "mean":
                combined = combined / len(tensors)
        result[name] = combined.to(device)
        result.computed_in[name] = str(dtype).removeprefix("torch.")
    return result
