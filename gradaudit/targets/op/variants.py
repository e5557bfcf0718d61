"""Input variants: from the declared shapes, the cases where op bugs live.

Equal sizes name one dimension (`[4, 8]` and `[8]` share the 8) unless the spec names its
dims (`dims: {N: 4, D: 8}`, `shape: [N, D]`). Each variant is named and seeded from the
spec's seed and its own name, so it draws the same tensors whatever else runs.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from gradaudit.spec.op import InputDecl, Variants

if TYPE_CHECKING:
    import torch

Symbol = str | int  # a dim name, or a size standing for every dim of that size
LAYOUTS = ("contiguous", "transposed", "strided", "expanded")
LEADING = {1: (3,), 2: (2, 3)}
EXTREME = {"large": 1e3, "tiny": 1e-3}
LONG = (16384, 4096, 1024)  # a long reduction's sizes, the longest that fits (variants.long)
LONG_NUMEL = 1 << 15  # no long variant makes an input larger than this
LONG_OUTPUT = 1 << 17  # nor an output (a long dim the op does not reduce): not applicable
# Long variants run in the first of these the audit has: on opbench bfloat16 alone caught
# every accumulator bug that bfloat16 and float16 together did (6/7), at half the cost.
LONG_DTYPES = ("bfloat16", "float16")


@dataclass(frozen=True)
class Variant:
    """One input case: every input's shape, the layout of inputs and grads, a scale."""

    name: str
    seed: int
    shapes: dict[str, tuple[int, ...]]
    sizes: dict[str, int] = field(default_factory=dict)  # named dims at this variant
    layout: str = "contiguous"
    scale: float = 1.0
    batch_inputs: tuple[str, ...] = ()  # inputs sharing the first input's leading dim
    args: tuple[tuple[str, Any], ...] = ()  # non-tensor arguments this variant changes
    hit: tuple[tuple[str, int], ...] = ()  # integer inputs given this special value in places
    long: bool = False  # a long reduction: planned in one half dtype only (LONG_DTYPES)
    zeros: bool = False  # a quarter of each float input exactly zero: compared for finiteness
    given: tuple[tuple[str, Any], ...] = ()  # inputs' values as given (OpInfo samples)


def variant_seed(seed: int, name: str) -> int:
    """The seed of one variant: stable across runs and across which other variants run."""
    return (seed * 1_000_003 + zlib.crc32(name.encode())) % (2**31 - 1)


def _symbols(decl: InputDecl) -> list[Symbol]:
    return list(decl.shape)


def _sizes(inputs: Mapping[str, InputDecl], dims: Mapping[str, int]) -> dict[Symbol, int]:
    sizes: dict[Symbol, int] = {
        k: v for k, v in dims.items()
    }  # a dim only `high` uses keeps its size
    for decl in inputs.values():
        for s in decl.shape:
            sizes[s] = dims[s] if isinstance(s, str) else s
    return sizes


def _make(
    name: str,
    seed: int,
    inputs: Mapping[str, InputDecl],
    sizes: Mapping[Symbol, int],
    lead: tuple[int, ...] = (),
    **options: object,
) -> Variant:
    batch = _batch_inputs(inputs)
    shapes = {
        n: (lead if n in batch else ()) + tuple(sizes[s] for s in _symbols(d))
        for n, d in inputs.items()
    }
    named = {s: v for s, v in sizes.items() if isinstance(s, str)}
    return Variant(
        name,
        variant_seed(seed, name),
        shapes,
        named,
        batch_inputs=batch,
        **options,  # type: ignore[arg-type]
    )


def _batch_inputs(inputs: Mapping[str, InputDecl]) -> tuple[str, ...]:
    first = next(iter(inputs.values()))
    if not first.shape:
        return ()
    lead = first.shape[0]
    return tuple(n for n, d in inputs.items() if d.shape and d.shape[0] == lead)


def _odd_prime_above(n: int) -> int:
    candidate = max(3, n + 1)
    while candidate % 2 == 0 or any(candidate % p == 0 for p in range(3, int(candidate**0.5) + 1)):
        candidate += 1
    return candidate


def derive(
    inputs: Mapping[str, InputDecl],
    dims: Mapping[str, int],
    options: Variants | None,
    seed: int,
    arguments: Mapping[str, Any] | None = None,
    extra: Sequence[Variant] = (),
) -> list[Variant]:
    """`base` (the shapes as declared) then the derived variants, in a fixed order.
    `arguments`: the op's non-tensor arguments that argument variants vary, with the value
    `base` runs (declared in `args:`, or the callable's default)."""
    if options is not None and options.only:
        every = options.model_copy(update={"only": [], "exclude": [], "extreme": True})
        return select(derive(inputs, dims, every, seed, arguments, extra), options.only)
    base_sizes = _sizes(inputs, dims)
    out = [_make("base", seed, inputs, base_sizes)]
    if options is None:
        return out
    if options.sizes:
        for symbol, label in _labels(inputs).items():
            n = base_sizes[symbol]
            for size in (_odd_prime_above(n), 1):
                if size != n:
                    out.append(_make(f"{label}={size}", seed, inputs, {**base_sizes, symbol: size}))
    if _batch_inputs(inputs):
        for count in range(1, options.leading + 1):
            out.append(_make(f"lead{count}", seed, inputs, base_sizes, LEADING[count]))
    if options.layouts:
        for layout in LAYOUTS[1:]:
            out.append(_make(layout, seed, inputs, base_sizes, layout=layout))
    if options.extreme:
        for name, scale in EXTREME.items():
            out.append(_make(name, seed, inputs, base_sizes, scale=scale))
    if options.zeros and any(d.dtype == "float" for d in inputs.values()):
        out.append(_make("zeros", seed, inputs, base_sizes, zeros=True))
    for i, shapes in enumerate(options.shapes):
        out.append(_explicit(f"shapes{i}", seed, inputs, base_sizes, shapes))
    if options.arguments:
        out += _argument_variants(seed, inputs, base_sizes, arguments or {})
    for key, values in options.args.items():
        for value in values:
            name = f"{key}={_label(value)}"
            out.append(_make(name, seed, inputs, base_sizes, args=((key, value),)))
    if options.long:
        out += _long_variants(seed, inputs, base_sizes)
    out += extra  # OpInfo's samples (targets.op.opinfo)
    named = {v.name: v for v in reversed(out)}  # a name derived twice: its first variant
    return _without([v for v in out if named[v.name] is v], options.exclude)


def _long_variants(
    seed: int, inputs: Mapping[str, InputDecl], sizes: Mapping[Symbol, int]
) -> list[Variant]:
    """Each dimension long: the longest of LONG sizes at which halving the other dims (the
    largest first, down to 1) keeps every input within LONG_NUMEL elements. A sum over it
    then runs long enough for an accumulator in bfloat16 or float16 to lose what a float32
    one keeps (16384 terms: a kernel's 32-wide tiles add up 512 partial sums; at 4096 a
    softmax's half accumulator was still inside the allowance). They are planned in one
    half dtype only (the first of LONG_DTYPES the audit has), where accumulators differ:
    kept cheap."""
    found = []
    for symbol, label in _labels(inputs).items():
        for size in LONG:
            if size <= sizes[symbol]:
                break
            fitted = _fit(inputs, {**sizes, symbol: size}, symbol)
            if fitted is not None:
                found.append(_make(f"{label}={size}", seed, inputs, fitted, long=True))
                break
    return found


def _fit(
    inputs: Mapping[str, InputDecl], sizes: dict[Symbol, int], long: Symbol
) -> dict[Symbol, int] | None:
    """`sizes` with the dims other than `long` halved, the largest first, until every input
    has at most LONG_NUMEL elements; None when even 1 is too large."""

    def numel() -> int:
        return max(math.prod(sizes[s] for s in _symbols(d)) for d in inputs.values())

    used = {s for d in inputs.values() for s in _symbols(d)} - {long}
    while numel() > LONG_NUMEL:
        others = [s for s in used if sizes[s] > 1]
        if not others:
            return None
        largest = max(others, key=lambda s: sizes[s])
        sizes[largest] = max(1, sizes[largest] // 2)
    return sizes


# torch.nn.functional's vocabularies for a string argument of that name (others: `args:`).
CHOICES = {"reduction": ("mean", "sum", "none"), "approximate": ("none", "tanh")}
DIMS = ("dim", "axis")  # an argument naming a dimension of the first input


def _argument_variants(
    seed: int, inputs: Mapping[str, InputDecl], sizes: Mapping[Symbol, int], args: Mapping[str, Any]
) -> list[Variant]:
    """Variants over non-tensor arguments, on the declared shapes, one argument at a time
    (see `alternatives`); `ignore_index` is hit by the integer inputs instead."""
    found = []
    ndim = len(next(iter(inputs.values())).shape)
    targets = [n for n, d in inputs.items() if d.kind == "randint" and d.dtype != "bool"]
    for key, value in args.items():
        if key == "ignore_index" and isinstance(value, int) and not isinstance(value, bool):
            if targets:
                hit = tuple((n, value) for n in targets)
                found.append(_make(f"{key}-hit", seed, inputs, sizes, hit=hit))
            continue
        for other in alternatives(key, value, ndim):
            name = f"{key}={_label(other)}"
            found.append(_make(name, seed, inputs, sizes, args=((key, other),)))
    return found


def alternatives(key: str, value: Any, ndim: int) -> list[Any]:
    """The values an argument variant gives `key` besides `value`: a bool flipped; for a
    dimension (`dim`, `axis`) every other dim of the first input and two of them as a
    tuple; a string's other values in CHOICES; an int + 1 (`num_groups`, `groups`); a
    float 0.5 (2.0 where it is 0.5: `beta`, `threshold`, `delta`, `eps` cross into the
    regions their defaults never reach); None as 1 (`padding_idx`, a count). A value the
    reference rejects, where its outputs are not finite or not deterministic, is not
    applicable (targets.op.target)."""
    if isinstance(value, bool):
        return [not value]
    if key in DIMS and (value is None or isinstance(value, int)) and ndim >= 1:
        dims: list[Any] = [d for d in range(ndim) if value is None or d != value % ndim]
        return dims + ([(0, ndim - 1)] if ndim >= 2 else [])
    if isinstance(value, str):
        return [c for c in CHOICES.get(key, ()) if c != value]
    if isinstance(value, int):
        return [value + 1]
    if isinstance(value, float):
        return [0.5 if value != 0.5 else 2.0]
    return [1] if value is None else []


def _label(value: Any) -> str:
    """An argument value in a variant's name: a tuple of dims as `0+1` (no comma, so the
    name stays one item of a YAML flow list)."""
    if isinstance(value, tuple):
        return "+".join(str(v) for v in value)
    return str(value)


def _without(variants: list[Variant], exclude: Sequence[str]) -> list[Variant]:
    """The variants but those named in `variants.exclude` (base cannot be left out)."""
    from gradaudit.targets.op.errors import OpSpecError

    names = [v.name for v in variants]
    for name in exclude:
        if name == "base" or name not in names:
            known = ", ".join(names[1:]) or "none"
            raise OpSpecError(
                f"variants.exclude: {name!r} is not a derived variant (derived: {known})"
            )
    return [v for v in variants if v.name not in exclude]


def _labels(inputs: Mapping[str, InputDecl]) -> dict[Symbol, str]:
    """A variant label per dimension: its name, or `input.axis` where it first appears."""
    labels: dict[Symbol, str] = {}
    for name, decl in inputs.items():
        for axis, s in enumerate(decl.shape):
            labels.setdefault(s, s if isinstance(s, str) else f"{name}.{axis}")
    return labels


def _explicit(
    name: str,
    seed: int,
    inputs: Mapping[str, InputDecl],
    base_sizes: Mapping[Symbol, int],
    shapes: Mapping[str, Sequence[int]],
) -> Variant:
    """Listed shapes as given; the dims they fix also size the inputs left unlisted."""
    sizes = dict(base_sizes)
    for input_name, shape in shapes.items():
        for s, size in zip(inputs[input_name].shape, shape, strict=False):
            sizes[s] = size
    variant = _make(name, seed, inputs, sizes)
    listed = {n: tuple(s) for n, s in shapes.items()}
    return Variant(
        name,
        variant.seed,
        {**variant.shapes, **listed},
        variant.sizes,
        batch_inputs=variant.batch_inputs,
    )


def select(variants: list[Variant], names: Sequence[str]) -> list[Variant]:
    """The variants with these names, in the order given; unknown names are an error."""
    from gradaudit.targets.op.errors import OpSpecError

    by_name = {v.name: v for v in variants}
    unknown = [n for n in names if n not in by_name]
    if unknown:
        raise OpSpecError(
            f"unknown variant {', '.join(unknown)}; this op has: {', '.join(by_name)}"
        )
    return [by_name[n] for n in names]


# --- drawing (torch) ---------------------------------------------------------------------


def draw_inputs(inputs: Mapping[str, InputDecl], variant: Variant) -> dict[str, torch.Tensor]:
    """Seeded values on the CPU, float64 for float inputs. `expanded` draws one row."""
    import torch

    gen = torch.Generator().manual_seed(variant.seed)
    drawn = {}
    given = dict(variant.given)
    for name, decl in inputs.items():
        if name in given:  # an OpInfo sample's own values, float64 for float inputs
            value = given[name]
            drawn[name] = value.double() if value.is_floating_point() else value.clone()
            continue
        shape = _compact(variant.shapes[name], variant.layout)
        if decl.kind == "randint":
            high = decl.high
            top = variant.sizes[high] if isinstance(high, str) else int(high or 0)
            low = int(decl.low or 0)
            dtype = getattr(torch, decl.dtype)
            if decl.dtype == "bool":
                values = torch.randint(0, 2, shape, generator=gen).bool()
            else:
                values = torch.randint(low, top, shape, generator=gen, dtype=dtype)
        elif decl.kind == "uniform":
            start = 0.0 if decl.low is None else float(decl.low)
            stop = 1.0 if decl.high is None else float(decl.high)
            values = torch.rand(shape, generator=gen, dtype=torch.float64)
            values = values * (stop - start) + start
        else:
            values = torch.randn(shape, generator=gen, dtype=torch.float64)
            values = values * decl.std + decl.mean
        if decl.dtype == "float" and variant.scale != 1.0:
            values = values * variant.scale
        if decl.dtype == "float" and variant.zeros:  # every fourth entry, from the second
            values.view(-1)[1::4] = 0.0
        for target, special in variant.hit:  # every third entry, the first among them
            if target == name and values.numel():
                values.view(-1)[::3] = special
        drawn[name] = values
    return drawn


def draw_upstream(shapes: Sequence[tuple[int, ...]], variant: Variant) -> list[torch.Tensor]:
    """Random upstream gradients (never all ones: a uniform one hides wrong weight grads)."""
    import torch

    gen = torch.Generator().manual_seed((variant.seed + 1) % (2**31 - 1))
    return [
        torch.randn(_compact(shape, variant.layout), generator=gen, dtype=torch.float64)
        for shape in shapes
    ]


def _compact(shape: tuple[int, ...], layout: str) -> tuple[int, ...]:
    return (1, *shape[1:]) if layout == "expanded" and shape else shape


def materialise(
    values: torch.Tensor,
    shape: tuple[int, ...],
    layout: str,
    dtype: torch.dtype | None,
    device: torch.device | str,
    requires_grad: bool = False,
) -> torch.Tensor:
    """A fresh tensor with these values, in this dtype (None: keep), device and layout."""
    t = values.to(device=device, dtype=dtype or values.dtype, copy=True)
    if layout == "expanded" and t.dim():
        t = t.expand(shape)
    elif layout == "transposed" and t.dim() >= 2:
        t = t.transpose(-1, -2).contiguous().transpose(-1, -2)
    elif layout in ("strided", "transposed") and t.dim() >= 1:
        buffer = t.new_zeros(*t.shape[:-1], 2 * t.shape[-1])
        buffer[..., ::2] = t
        t = buffer[..., ::2]
    return t.requires_grad_(requires_grad)
