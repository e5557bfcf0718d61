"""The spec of an op audit: a top-level `op:` section (a candidate against a reference over
declared inputs), validated like model specs. Torch-free."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, model_validator

from gradaudit.spec.common import Dtype, NonNegativeFloat, PositiveInt, SpecBase, Strict
from gradaudit.spec.yamlfile import Loc

Identifier = Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")]
Ref = Annotated[str, Field(min_length=1)]
InputDtype = Literal["float", "int64", "int32", "int16", "int8", "uint8", "bool"]


class InputDecl(Strict):
    """One named input: its shape (sizes or names from `dims`), dtype and distribution.

    `float` follows the case's dtype; integer inputs keep theirs and never require grad.
    """

    shape: list[Annotated[int, Field(ge=1)] | Identifier]
    dtype: InputDtype = "float"
    distribution: Literal["normal", "uniform", "randint"] | None = None
    mean: float = 0.0
    std: Annotated[float, Field(gt=0)] = 1.0
    low: float | None = None
    high: float | Identifier | None = None
    requires_grad: bool | None = None

    @model_validator(mode="after")
    def _consistent(self) -> InputDecl:
        floating = self.dtype == "float"
        if not floating and self.requires_grad:
            raise ValueError(f"an integer input ({self.dtype}) cannot require grad")
        kind = self.distribution or ("normal" if floating else "randint")
        if kind == "randint":
            if floating:
                raise ValueError("randint draws integers: give an integer dtype")
            if self.high is None:
                raise ValueError("randint needs `high` (exclusive; a number or a dim name)")
        elif not floating:
            raise ValueError(f"{kind} draws floats; integer inputs use randint")
        if kind != "normal" and (self.mean != 0.0 or self.std != 1.0):
            raise ValueError(f"mean and std belong to normal, not {kind}")
        if kind == "normal" and (self.low is not None or self.high is not None):
            raise ValueError("low and high belong to uniform and randint, not normal")
        if kind == "uniform" and isinstance(self.high, str):
            raise ValueError("uniform's high must be a number")
        return self

    @property
    def kind(self) -> str:
        return self.distribution or ("normal" if self.dtype == "float" else "randint")

    @property
    def grad(self) -> bool:
        """Whether gradients flow to this input (floats do unless told otherwise)."""
        return self.dtype == "float" if self.requires_grad is None else self.requires_grad


class Variants(Strict):
    """Which input variants are derived from the declared shapes (see variants.py)."""

    sizes: bool = True  # each dimension at an odd prime size and at size 1
    long: bool = True  # each dim at up to 16384, in bfloat16 (else float16): half accumulators
    leading: Annotated[int, Field(ge=0, le=2)] = 2  # extra leading dims on batch inputs
    layouts: bool = True  # transposed, strided and expanded views (inputs and grads)
    extreme: bool = False  # inputs scaled by 1e3 and 1e-3
    zeros: bool = True  # a quarter of the float inputs exactly zero: finite where it is
    opinfo: str | None = None  # torch's OpInfo samples of this entry (targets.op.opinfo)
    shapes: list[dict[Identifier, list[Annotated[int, Field(ge=1)]]]] = Field(default_factory=list)
    exclude: list[Annotated[str, Field(min_length=1)]] = Field(default_factory=list)  # by name
    # just these, by name (a reproduce line's): chosen among every variant the options
    # derive, `extreme` included
    only: list[Annotated[str, Field(min_length=1)]] = Field(default_factory=list)
    # non-tensor arguments (variants.alternatives): other dims and a tuple of two, each bool
    # flipped, a string's other values, an int + 1, a float 0.5, None as 1, ignore_index hit
    arguments: bool = True
    args: dict[Identifier, list[Any]] = Field(default_factory=dict)  # alternatives to run


class MicroBatch(Strict):
    """The batch's gradient equals its micro-batches' gradients, combined.

    `reduction`: none (outputs are per row along dim 0), sum, or mean (over rows).
    """

    splits: Annotated[int, Field(ge=2)] = 2
    reduction: Literal["none", "sum", "mean"] = "none"


class SavedTensors(Strict):
    """Inputs unchanged by forward and backward; a second backward repeats the first."""

    rtol: NonNegativeFloat = 0.0
    atol: NonNegativeFloat = 0.0


class OpChecks(Strict):
    micro_batch: MicroBatch | None = None
    saved_tensors: SavedTensors | None = None


class PairRef(Strict):
    """A hand-written forward/backward pair without an autograd.Function: `forward(...) ->
    (out, cache)`, `backward(dout, cache) -> gradients` (gradaudit/targets/op/pair.py)."""

    forward: Ref
    backward: Ref

    def __str__(self) -> str:
        return f"{self.forward} + {self.backward}"


class OpSection(Strict):
    """What is audited: a candidate against a reference (or float64 finite differences)."""

    candidate: Ref | PairRef
    reference: Ref | None = None
    dims: dict[Identifier, PositiveInt] = Field(default_factory=dict)
    inputs: dict[Identifier, InputDecl] = Field(min_length=1)
    args: dict[Identifier, Any] = Field(default_factory=dict)
    init: dict[Identifier, Any] = Field(default_factory=dict)  # a Module class's arguments
    variants: bool | Variants = True
    checks: OpChecks = Field(default_factory=OpChecks)

    def problems(self) -> list[tuple[Loc, str]]:
        """Names that must be known elsewhere in the section: (where, what is wrong)."""
        out: list[tuple[Loc, str]] = []
        for name, decl in self.inputs.items():
            for key, values in (("shape", decl.shape), ("high", [decl.high])):
                unknown = [d for d in values if isinstance(d, str) and d not in self.dims]
                if unknown:
                    known = ", ".join(self.dims) or "none"
                    out.append(
                        (("op", "inputs", name, key), f"{', '.join(unknown)} not in dims ({known})")
                    )
        if isinstance(self.variants, Variants):
            for i, shapes in enumerate(self.variants.shapes):
                for extra in sorted(set(shapes) - set(self.inputs)):
                    out.append((("op", "variants", "shapes", i, extra), "not an input"))
        return out

    @property
    def variant_options(self) -> Variants | None:
        if self.variants is False:
            return None
        return Variants() if self.variants is True else self.variants


class OpSpec(SpecBase):
    """An op audit: the op, where it runs, how close is close enough, and the seed."""

    op: OpSection
    dtypes: list[Dtype] = Field(default_factory=lambda: ["float64", "float32"], min_length=1)  # type: ignore[arg-type]
    seed: int = 0
