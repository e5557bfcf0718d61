"""Op specs: a YAML file with a top-level `op:` section, validated like model specs.

Torch-free, so `gradaudit validate` and `--help` stay fast. YAML goes through
gradaudit.spec's safe loader and line bookkeeping; errors read `file:line: field: msg`.
"""

from __future__ import annotations

import difflib
import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field, ValidationError, field_validator, model_validator

from gradaudit.errors import SpecError
from gradaudit.ops.errors import OpSpecError
from gradaudit.spec import (
    Device,
    Dtype,
    Loc,
    NonNegativeFloat,
    PositiveInt,
    Tolerance,
    _dotted,
    _model_in,
    _Strict,
)
from gradaudit.spec import _line_for as line_for
from gradaudit.yamlfile import read_mapping, read_spec_file

Identifier = Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")]
Ref = Annotated[str, Field(min_length=1)]
InputDtype = Literal["float", "int64", "int32", "int16", "int8", "uint8", "bool"]


class InputDecl(_Strict):
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


class Variants(_Strict):
    """Which input variants are derived from the declared shapes (see variants.py)."""

    sizes: bool = True  # each dimension at an odd prime size and at size 1
    leading: Annotated[int, Field(ge=0, le=2)] = 2  # extra leading dims on batch inputs
    layouts: bool = True  # transposed, strided and expanded views (inputs and grads)
    extreme: bool = False  # inputs scaled by 1e3 and 1e-3
    shapes: list[dict[Identifier, list[Annotated[int, Field(ge=1)]]]] = Field(default_factory=list)


class MicroBatch(_Strict):
    """The batch's gradient equals its micro-batches' gradients, combined.

    `reduction`: none (outputs are per row along dim 0), sum, or mean (over rows).
    """

    splits: Annotated[int, Field(ge=2)] = 2
    reduction: Literal["none", "sum", "mean"] = "none"


class SavedTensors(_Strict):
    """Inputs unchanged by forward and backward; a second backward repeats the first."""

    rtol: NonNegativeFloat = 0.0
    atol: NonNegativeFloat = 0.0


class OpChecks(_Strict):
    micro_batch: MicroBatch | None = None
    saved_tensors: SavedTensors | None = None


class OpSection(_Strict):
    """What is audited: a candidate against a reference (or float64 finite differences)."""

    candidate: Ref
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


class OpSpec(_Strict):
    """An op audit: the op, where it runs, how close is close enough, and the seed."""

    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]+$")]
    description: str = ""
    plugins: list[Annotated[str, Field(min_length=1)]] = Field(default_factory=list)
    op: OpSection
    devices: list[Device] = Field(default_factory=lambda: ["cpu"], min_length=1)
    dtypes: list[Dtype] = Field(default_factory=lambda: ["float64", "float32"], min_length=1)  # type: ignore[arg-type]
    tolerance: Tolerance = Field(default_factory=Tolerance)
    seed: int = 0

    @field_validator("devices", "dtypes")
    @classmethod
    def _no_repeats(cls, values: list[str]) -> list[str]:
        repeated = sorted({v for v in values if values.count(v) > 1})
        if repeated:
            raise ValueError(f"listed more than once: {', '.join(repeated)}")
        return values


@dataclass(frozen=True)
class LoadedOpSpec:
    """A validated op spec and where it came from (errors and reports point at its lines)."""

    spec: OpSpec
    path: Path
    sha256: str
    lines: dict[Loc, int] = field(default_factory=dict)

    def where(self, *loc: str | int) -> str:
        """`file:line` of a key, for one-line errors."""
        return f"{self.path}:{line_for(tuple(loc), self.lines)}"

    @property
    def base_dir(self) -> Path:
        return self.path.resolve().parent


def _read(path: Path) -> tuple[bytes, str]:
    return read_spec_file(path)


def _yaml(text: str, where: str) -> tuple[Any, dict[Loc, int]]:
    """Safe-load one document, with the line of every key (as gradaudit.spec does)."""
    return read_mapping(text, where)


def is_op_spec(path: str | Path) -> bool:
    """Whether a spec file has a top-level `op:` (any read or YAML error: False, so that the
    model-spec loader reports it)."""
    try:
        data, _ = _yaml(_read(Path(path))[1], str(path))
    except SpecError:
        return False
    return isinstance(data, dict) and "op" in data


def parse_op_spec(text: str, where: str) -> tuple[OpSpec, dict[Loc, int]]:
    data, lines = _yaml(text, where)
    if data is None:
        raise SpecError(f"{where}:1: the spec is empty")
    if not isinstance(data, dict):
        raise SpecError(f"{where}:1: the spec must be a mapping of keys, not {type(data).__name__}")
    try:
        spec = OpSpec.model_validate(data)
        found = spec.op.problems()
    except ValidationError as exc:
        found = _messages(exc)
    if found:
        messages = [
            f"{where}:{line_for(loc, lines)}: {_dotted(loc) or 'spec'}: {msg}" for loc, msg in found
        ]
        raise OpSpecError("\n".join(dict.fromkeys(messages))) from None
    return spec, lines


_UNION_TAGS = {"constrained-int", "constrained-str", "float", "bool", "int", "str", "Variants"}


def _messages(exc: ValidationError) -> list[tuple[Loc, str]]:
    """One message per field: a union's members are merged, and a type error that a deeper
    error explains (`variants: {sizez: 1}` is not a bool, but says more as an unknown key) is
    dropped."""
    groups: dict[Loc, list[tuple[str, str]]] = {}
    for err in exc.errors(include_url=False):
        loc = tuple(p for p in err["loc"] if p not in _UNION_TAGS)
        msg = "unknown key" if err["type"] == "extra_forbidden" else err["msg"]
        if err["type"] == "string_pattern_mismatch":
            msg = _PATTERNS.get(str(err.get("ctx", {}).get("pattern")), msg)
            if "devices" in loc:
                msg = "not a device: expected cpu, cuda, cuda:N, mps, xpu or xpu:N"
        groups.setdefault(loc, []).append((err["type"], msg.removeprefix("Value error, ")))
    out: list[tuple[Loc, str]] = []
    for loc, errs in groups.items():
        specific = [m for t, m in errs if not t.endswith("_type")]
        if not specific and any(other[: len(loc)] == loc and other != loc for other in groups):
            continue
        text = "; ".join(dict.fromkeys(specific)) or " or ".join(dict.fromkeys(m for _, m in errs))
        out.append((loc, text + _suggest(loc, errs[0][0])))
    return out


_PATTERNS = {
    "^[A-Za-z_][A-Za-z0-9_]*$": "use a name of letters, digits and '_' (not starting with a digit)",
    "^[A-Za-z0-9_.-]+$": "use only letters, digits, '.', '_' and '-'",
}


def _suggest(loc: Loc, error_type: str) -> str:
    """'did you mean ...?' for a misspelled key."""
    if error_type != "extra_forbidden" or not loc or not isinstance(loc[-1], str):
        return ""
    model: type[BaseModel] = OpSpec
    parents = list(loc[:-1])
    while parents:
        part = parents.pop(0)
        if isinstance(part, int):
            continue
        info = model.model_fields.get(part)
        inner = _model_in(info.annotation) if info else None
        if inner is None:
            return ""
        if inner is InputDecl and part == "inputs" and parents:
            parents.pop(0)  # the input's name
        model = inner
    close = difflib.get_close_matches(loc[-1], list(model.model_fields), n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""


def load_op_spec(path: str | Path) -> LoadedOpSpec:
    """Read and validate an op spec file."""
    path = Path(path)
    raw, text = _read(path)
    spec, lines = parse_op_spec(text, str(path))
    return LoadedOpSpec(spec, path, hashlib.sha256(raw).hexdigest(), lines)
