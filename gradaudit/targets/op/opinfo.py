"""PyTorch's OpInfo samples as one more variant source (opt-in: `variants: {opinfo: NAME}`).

When the reference is a torch op with an entry in torch's OpInfo database
(`torch.testing._internal.common_methods_invocations.op_db`, which needs the `expecttest`
package; torch 2.x), its sample inputs become variants `opinfo0`, `opinfo1`, ...: the
sample's tensors in the declared inputs' order, its other positional arguments under the
candidate's parameter names that follow the inputs, its keyword arguments as given, and its
values as drawn by OpInfo (zeros, ties and empty tensors on purpose). A sample that does not
fit the declaration (another count or kind of tensors, an argument the candidate lacks) is
left out.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from gradaudit.spec.op import InputDecl, Variants
from gradaudit.targets.op.errors import OpSpecError
from gradaudit.targets.op.variants import Variant, derive, variant_seed

if TYPE_CHECKING:
    from gradaudit.targets.op.resolve import Callee


def derive_with_samples(
    inputs: Mapping[str, InputDecl],
    dims: Mapping[str, int],
    options: Variants | None,
    seed: int,
    arguments: Mapping[str, Any] | None,
    candidate: Callee | None,
) -> list[Variant]:
    """`derive`'s variants, and OpInfo's samples after them where `options.opinfo` asks
    (the candidate's signature names their arguments; without it, none)."""
    extra: list[Variant] = []
    if options is not None and options.opinfo and candidate is not None:
        extra = opinfo_variants(options.opinfo, inputs, candidate.signature_of, seed)
    return derive(inputs, dims, options, seed, arguments, extra)


def opinfo_variants(
    name: str, inputs: Mapping[str, InputDecl], candidate: Callable[..., Any], seed: int
) -> list[Variant]:
    """The variants of OpInfo entry `name` (`max.reduction_with_dim`: an entry's
    variant_test_name after the dot); the samples that do not fit are left out."""
    import torch

    entry = _entry(name)
    params = _parameters(candidate)
    found = []
    samples = entry.sample_inputs("cpu", torch.float64, requires_grad=True)
    for i, sample in enumerate(samples):
        fitted = _fit(sample, inputs, params)
        if fitted is None:
            continue
        given, args = fitted
        label = f"opinfo{i}"
        found.append(
            Variant(
                label,
                variant_seed(seed, label),
                {n: tuple(t.shape) for n, t in given.items()},
                args=tuple(args.items()),
                given=tuple(given.items()),
            )
        )
    return found


def _entry(name: str) -> Any:
    try:
        from torch.testing._internal.common_methods_invocations import op_db
    except Exception as exc:  # ImportError without expecttest, or anything torch raises
        raise OpSpecError(
            f"variants.opinfo: torch's OpInfo database did not load ({type(exc).__name__}: "
            f"{exc}); it needs `pip install expecttest`"
        ) from None
    op, _, variant = name.partition(".")
    for entry in op_db:
        if entry.name == op and entry.variant_test_name == variant:
            return entry
    raise OpSpecError(f"variants.opinfo: torch has no OpInfo entry {name!r}")


def _parameters(candidate: Callable[..., Any]) -> list[str]:
    try:
        return [p for p in inspect.signature(candidate).parameters if p not in ("self", "ctx")]
    except (TypeError, ValueError):
        return []


def _fit(
    sample: Any, inputs: Mapping[str, InputDecl], params: list[str]
) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """(tensors by input name, arguments by name), or None where the sample does not fit."""
    import torch

    tensors = [sample.input, *(a for a in sample.args if isinstance(a, torch.Tensor))]
    others = [a for a in sample.args if not isinstance(a, torch.Tensor)]
    if len(tensors) != len(inputs) or not all(isinstance(t, torch.Tensor) for t in tensors):
        return None
    given = {}
    for (name, decl), tensor in zip(inputs.items(), tensors, strict=True):
        if tensor.is_floating_point() != (decl.dtype == "float"):
            return None
        given[name] = tensor.detach().clone()
    rest = [p for p in params if p not in inputs]
    if len(others) > len(rest) or any(k not in params for k in sample.kwargs):
        return None
    args = dict(zip(rest, others, strict=False)) | dict(sample.kwargs)
    return given, args
