"""`gradaudit.check`: the notebook one-liner that replaces a hand-rolled `cmp()`.

    gradaudit.check(loss, {"W1": W1, "b1": b1}, {"W1": dW1, "b1": db1})
    gradaudit.check(loss, namespace=locals(), prefix="d")      # dX pairs with X

It asks autograd for dloss/dX, compares every manual gradient with gradaudit's comparison
(a shape mismatch is an error, never broadcast away), prints the console table, and
returns a `CheckResult`. With `build=fn(dtype)` and `dtypes=[...]` it re-runs the user's
code per dtype, with a float64 run as the truth for the `baseline` rule; `batches=N` runs it
N times, each under its own seed (torch's, Python's and numpy's global RNGs seeded with
`seed + batch`, the same for every dtype of a batch, restored afterwards), so the
systematic-error check has batches to judge. A truth run starts from its case's rounded
values (rounding.py).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TextIO

from gradaudit import postprocess as post
from gradaudit.compare import Comparison, TensorSummary, Tol, check_all, mismatch, tolerance_for
from gradaudit.numpy_adapter import computed_problem
from gradaudit.results import GroupResult, RunSummary
from gradaudit.spec import DTYPES, Tolerance
from gradaudit.targets.values.pairs import Pair, by_name, by_prefix, is_gradient, list_names
from gradaudit.targets.values.report import CheckResult, render, write_junit
from gradaudit.targets.values.rounding import rounded_through, seeded

if TYPE_CHECKING:
    import torch

Build = Callable[["torch.dtype"], Any]
TRUTH = "float64"


@dataclass
class _Case:
    """One run of the user's code: the loss and its pairs, labelled with the asked dtype."""

    loss: Any
    pairs: list[Pair]
    asked: str | None = None  # the dtype build() was called with
    references: dict[str, torch.Tensor] = field(default_factory=dict)


def check(
    loss: torch.Tensor | None = None,
    tensors: Mapping[str, torch.Tensor] | Sequence[torch.Tensor] | None = None,
    grads: Mapping[str, Any] | Sequence[Any] | None = None,
    *,
    namespace: Mapping[str, Any] | None = None,
    prefix: str = "d",
    ignore: Sequence[str] = (),
    tolerance: str | Mapping[str, Any] | Tolerance | None = None,
    postprocess: Sequence[Mapping[str, Any] | post.Rule] | None = None,
    raise_on_failure: bool = False,
    junit_xml: str | None = None,
    print_table: bool = True,
    dtypes: Sequence[torch.dtype | str] | None = None,
    build: Build | None = None,
    batches: int = 1,
    seed: int | None = None,
    name: str = "notebook",
    out: TextIO | None = None,
) -> CheckResult:
    """Audit manual gradients against autograd; see the module docstring and docs/notebooks.md.

    tolerance: a mode ("exact", "allclose", "baseline", "auto"), a dict of `Tolerance`
    fields, or a Tolerance. Default: "auto" when `build` can give a float64 truth,
    else "allclose" with torch.testing's defaults for each tensor's dtype.
    build: fn(dtype) -> (loss, tensors, grads) or (loss, namespace), run per dtype and
    batch; batches: how many seeded runs (seed, default 0, is the first one's seed).
    Raises ValueError on bad usage; AssertionError on a failed audit if asked.
    """
    start = time.perf_counter()
    rules = post.parse(list(postprocess) if postprocess is not None else None)
    spec_tol = _tolerance(tolerance, build is not None)
    if loss is not None and dtypes is not None:
        raise ValueError("dtypes= re-runs build(dtype): pass build= instead of loss")
    if loss is None and build is None:
        raise ValueError("give a loss (and tensors/grads or namespace=), or build=fn(dtype)")
    if loss is not None and (batches != 1 or seed is not None):
        raise ValueError("batches= and seed= re-run build(dtype): pass build= instead of loss")
    if batches < 1:
        raise ValueError(f"batches must be at least 1, got {batches}")
    groups: dict[tuple[str, str], GroupResult] = {}
    if loss is not None:
        rows = list_names(tensors, sys._getframe(1))  # the caller's names for a list
        case = _case(loss, tensors, grads, namespace, prefix, ignore, rows)
        _reference(case)
        if _needs_truth(case, spec_tol):
            raise ValueError(
                f"tolerance mode '{spec_tol.mode}' compares with a float64 truth: "
                "pass build=fn(dtype) so gradaudit can run your code in float64"
            )
        _fold(groups, _compare(case, spec_tol, rules, {}))
    else:
        assert build is not None
        for b in range(batches):
            batch_seed = (seed or 0) + b
            for dtype in _dtype_names(dtypes):
                case = _built(build, dtype, prefix, ignore, batch_seed)
                truth: dict[str, torch.Tensor] = {}
                if _needs_truth(case, spec_tol):
                    truth = case.references
                    if dtype != TRUTH:  # at the case's own (rounded) values
                        truth = _built(build, TRUTH, prefix, ignore, batch_seed, dtype).references
                _fold(groups, _compare(case, spec_tol, rules, truth, b, batch_seed))
    summary = RunSummary()
    for group in groups.values():
        summary.add(group)
    result = CheckResult(summary, render(summary, time.perf_counter() - start))
    if print_table:
        print(result.table, file=out or sys.stdout)
    if junit_xml is not None:
        write_junit(junit_xml, name, summary)
    if raise_on_failure and not result.ok:
        raise AssertionError(result.failure_text())
    return result


def _tolerance(value: str | Mapping[str, Any] | Tolerance | None, has_build: bool) -> Tolerance:
    if value is None:
        return Tolerance(mode="auto" if has_build else "allclose")
    if isinstance(value, Tolerance):
        return value
    if isinstance(value, str):
        return Tolerance.model_validate({"mode": value})
    return Tolerance.model_validate(dict(value))


def _dtype_names(dtypes: Sequence[torch.dtype | str] | None) -> list[str]:
    import torch

    if dtypes is None:
        return [str(torch.get_default_dtype()).removeprefix("torch.")]
    names = [str(d).removeprefix("torch.") for d in dtypes]
    unknown = [n for n in names if n not in DTYPES]
    if unknown or not names:
        raise ValueError(f"dtypes must be among {', '.join(DTYPES)}; got {unknown or 'none'}")
    return list(dict.fromkeys(names))


def _built(
    build: Build,
    dtype: str,
    prefix: str,
    ignore: Sequence[str],
    seed: int,
    rounded: str | None = None,
) -> _Case:
    """Run build(dtype) under `seed` (the truth: rounded through the case's dtype, see
    rounding.py), pair what it returned and take autograd's gradients; tensors in another
    dtype are errors."""
    import torch

    with seeded(seed), rounded_through(getattr(torch, rounded) if rounded else None):
        made = build(getattr(torch, dtype))
    if isinstance(made, tuple) and len(made) == 3:
        case = _case(made[0], made[1], made[2], None, prefix, ignore)
    elif isinstance(made, tuple) and len(made) == 2 and isinstance(made[1], Mapping):
        case = _case(made[0], None, None, made[1], prefix, ignore)
    else:
        raise ValueError("build(dtype) must return (loss, tensors, grads) or (loss, namespace)")
    case.asked = dtype
    for pair in case.pairs:
        got = getattr(pair.tensor, "dtype", None)
        if pair.problem is None and got is not None and str(got) != f"torch.{dtype}":
            pair.problem = (
                f"build({dtype}) gave '{pair.name}' in {str(got).removeprefix('torch.')}: "
                f"it would not test {dtype}"
            )
    _reference(case)
    return case


def _fold(groups: dict[tuple[str, str], GroupResult], found: list[GroupResult]) -> None:
    """One batch's groups into the run's: a tensor's batches into one summary."""
    for group in found:
        key = (group.device, group.dtype)
        if key not in groups:
            groups[key] = group
            continue
        mine = {t.tensor: t for t in groups[key].tensors}
        for summary in group.tensors:
            if summary.tensor in mine:
                mine[summary.tensor].merge(summary)
            else:
                groups[key].tensors.append(summary)


def _case(
    loss: Any,
    tensors: Mapping[str, Any] | Sequence[Any] | None,
    grads: Mapping[str, Any] | Sequence[Any] | None,
    namespace: Mapping[str, Any] | None,
    prefix: str,
    ignore: Sequence[str],
    rows: list[str] | None = None,
) -> _Case:
    import torch

    if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
        raise ValueError("loss must be a one-element tensor")
    if not loss.requires_grad:
        raise ValueError("loss does not require grad: compute it from tensors that do")
    if namespace is not None:
        if tensors is not None or grads is not None:
            raise ValueError("give tensors and grads, or namespace=, not both")
        return _Case(loss, by_prefix(namespace, prefix, ignore))
    if tensors is None or grads is None:
        raise ValueError("give tensors and grads (or namespace=locals(), prefix='d')")
    return _Case(loss, by_name(tensors, grads, rows))


def _reference(case: _Case) -> None:
    """autograd's gradient for every pairable tensor; the graph is kept for the user."""
    import torch

    wanted = []
    for pair in case.pairs:
        if pair.problem is not None:
            continue
        if not isinstance(pair.tensor, torch.Tensor):
            pair.problem = f"'{pair.name}' is a {type(pair.tensor).__name__}, not a tensor"
        elif not pair.tensor.requires_grad:
            pair.problem = f"'{pair.name}' does not require grad: autograd has no gradient for it"
        else:
            wanted.append(pair)
    if not wanted:
        return
    try:
        grads = torch.autograd.grad(
            case.loss, [p.tensor for p in wanted], retain_graph=True, allow_unused=True
        )
    except RuntimeError as exc:
        if "backward through the graph a second time" not in str(exc):
            raise
        grads = _stored_grads(wanted)
    for pair, grad in zip(wanted, grads, strict=True):
        if grad is None:
            pair.problem = f"'{pair.name}' is not part of the loss's graph (a stale tensor?)"
        else:
            case.references[pair.name] = grad.detach()


def _stored_grads(wanted: Sequence[Pair]) -> tuple[torch.Tensor, ...]:
    """After `loss.backward()` freed the graph: the `.grad` it left on each tensor (what a
    notebook's own `cmp` compares with), or a one-line ValueError saying how to call."""
    missing = [
        p.name
        for p in wanted
        if not (p.tensor.is_leaf or p.tensor.retains_grad) or p.tensor.grad is None
    ]
    if missing:
        raise ValueError(
            f"loss.backward() freed the graph and left no .grad on {', '.join(missing[:3])}: "
            "call gradaudit.check before loss.backward(), or call .retain_grad() on those "
            "tensors before it"
        )
    return tuple(p.tensor.grad for p in wanted)


def _needs_truth(case: _Case, spec: Tolerance) -> bool:
    return any(_tol(spec, name, ref).needs_truth for name, ref in case.references.items())


def _tol(spec: Tolerance, name: str, reference: torch.Tensor) -> Tol:
    dtype = str(reference.dtype).removeprefix("torch.")
    return tolerance_for(spec, name, reference.device.type, dtype)


def _manual(name: str, grad: Any, device: torch.device) -> tuple[Any, str | None, str | None]:
    """(tensor, dtype it was computed in if known, problem)."""
    import torch

    if isinstance(grad, torch.Tensor):
        return grad.detach(), None, None
    if is_gradient(grad):  # a numpy array
        from gradaudit.numpy_adapter import to_tensor

        tensor, why = to_tensor(name, grad, device)
        return (tensor, why, None) if tensor is not None else (None, None, why)
    return None, None, f"manual gradient is a {type(grad).__name__}, not a tensor or array"


def _compare(
    case: _Case,
    spec: Tolerance,
    rules: post.Rules,
    truth: dict[str, torch.Tensor],
    batch: int = 0,
    seed: int = 0,
) -> list[GroupResult]:
    """Every pair of one case, grouped by (device, dtype) of autograd's gradient."""
    groups: dict[tuple[str, str], GroupResult] = {}
    ready: list[tuple[TensorSummary, Comparison]] = []
    for pair in case.pairs:
        reference = case.references.get(pair.name)
        where = _where(pair, reference, case)
        group = groups.setdefault(where, GroupResult(*where, tensors=[], done=True))
        if reference is None or where[1] not in DTYPES:
            summary = TensorSummary(pair.name, Tol())
            summary.add_error(pair.problem or f"gradients in {where[1]} are not supported")
            group.tensors.append(summary)
            continue
        summary = TensorSummary(pair.name, _tol(spec, pair.name, reference))
        group.tensors.append(summary)
        comparison, errors = _comparison(pair, reference, summary.tol, rules, truth)
        for error in errors:
            summary.add_error(error)
        if comparison is not None:
            ready.append((summary, comparison))
    scale = max((float(t.abs().max()) for t in truth.values() if t.numel()), default=0.0)
    results = check_all([c for _, c in ready], scale)
    for (summary, _), result in zip(ready, results, strict=True):
        summary.add(result, batch, seed)
    return list(groups.values())


def _where(pair: Pair, reference: Any, case: _Case) -> tuple[str, str]:
    source = reference if reference is not None else pair.tensor
    if source is None or not hasattr(source, "dtype"):
        source = case.loss
    dtype = str(source.dtype).removeprefix("torch.")
    return source.device.type, dtype


def _comparison(
    pair: Pair,
    reference: torch.Tensor,
    tol: Tol,
    rules: post.Rules,
    truth: dict[str, torch.Tensor],
) -> tuple[Comparison | None, list[str]]:
    """The comparison to run for one pair (None when nothing comparable), and its errors."""
    dtype = str(reference.dtype).removeprefix("torch.")
    manual, computed, problem = _manual(pair.name, pair.grad, reference.device)
    if problem is not None:
        return None, [problem]
    computed = pair.computed or computed
    errors = []
    other = computed_problem(computed, dtype)
    if other is not None:
        errors.append(other)
        manual = manual.to(reference.dtype)  # still measured, for information
    shape = mismatch(manual, reference)
    if shape is not None:
        return None, [*errors, f"gradient has {shape}"]
    reference, clipped = post.apply_counted(pair.name, reference, rules)
    saturated = post.saturated(clipped, reference.numel())
    if saturated:
        errors.append(saturated)
    true = truth.get(pair.name)
    if tol.needs_truth:
        if true is None or true.shape != reference.shape:
            got = "none" if true is None else f"shape {tuple(true.shape)}"
            return None, [*errors, f"no float64 truth of the same shape (build gave {got})"]
        true = post.apply(pair.name, true, rules)
    return Comparison(manual, reference, tol, true if tol.needs_truth else None), errors
