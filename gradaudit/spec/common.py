"""What every kind of spec shares: its common keys, the tolerance section, how a loaded spec
remembers where it came from, and how a validation error becomes `file:line: field: msg`."""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from gradaudit.errors import SpecError
from gradaudit.spec.yamlfile import Loader, Loc, dotted, line_for, model_in, one_line

DTYPES = ("float64", "float32", "bfloat16", "float16")
Dtype = Literal["float64", "float32", "bfloat16", "float16"]
DEVICE_PATTERN = r"^(cpu|mps|(cuda|xpu)(:\d+)?)$"
Device = Annotated[str, Field(pattern=DEVICE_PATTERN)]
Glob = Annotated[str, Field(min_length=1)]
PositiveInt = Annotated[int, Field(gt=0)]
NonNegativeFloat = Annotated[float, Field(ge=0)]
Name = Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]+$")]
# The modes the tolerance module knows (gradaudit.tolerance.MODES); the schema lists them.
Mode = Literal["auto", "exact", "allclose", "baseline", "ulps", "finite"]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class PluginRef(Strict):
    """Which registered plugin to use, and the options passed to it."""

    plugin: Annotated[str, Field(min_length=1)]
    options: dict[str, Any] = Field(default_factory=dict)


class ToleranceOverride(Strict):
    """Tolerance settings for the tensors whose names match `tensors` (globs)."""

    tensors: list[Glob] = Field(min_length=1)
    devices: list[Device] | None = None
    dtypes: list[Dtype] | None = None
    mode: Mode | None = None
    rtol: NonNegativeFloat | None = None
    atol: NonNegativeFloat | None = None
    k: NonNegativeFloat | None = None
    floor_ulps: NonNegativeFloat | None = None
    systematic: bool | None = None


class Tolerance(Strict):
    """How close is close enough; the modes and their rules are gradaudit.tolerance's.

    `systematic` (on unless false) adds the systematic-error check wherever a truth exists
    (docs/specs.md).
    """

    mode: Mode = "auto"
    rtol: NonNegativeFloat | None = None
    atol: NonNegativeFloat | None = None
    k: NonNegativeFloat | None = None
    floor_ulps: NonNegativeFloat | None = None
    systematic: bool = True
    overrides: list[ToleranceOverride] = Field(default_factory=list)


class SpecBase(Strict):
    """The keys every kind of spec has."""

    name: Name
    description: str = ""
    plugins: list[Annotated[str, Field(min_length=1)]] = Field(default_factory=list)
    devices: list[Device] = Field(default_factory=lambda: ["cpu"], min_length=1)
    tolerance: Tolerance = Field(default_factory=Tolerance)

    @field_validator("devices", "dtypes", check_fields=False)
    @classmethod
    def _no_repeats(cls, values: list[str]) -> list[str]:
        repeated = sorted({v for v in values if values.count(v) > 1})
        if repeated:
            raise ValueError(f"listed more than once: {', '.join(repeated)}")
        return values


@dataclass(frozen=True)
class LoadedSpec:
    """A validated spec of any kind plus where it came from (for relative paths, reports and
    the `file:line` of errors). `kind`: model, op, sharded, or a plugin's target kind."""

    spec: Any  # the kind's model: spec.model.Spec, spec.op.OpSpec, spec.load.TargetSpec
    path: Path
    sha256: str  # of the file, and of the --set options when there are any
    lines: dict[Loc, int] = field(default_factory=dict)
    sets: tuple[str, ...] = ()
    kind: str = "model"
    # The resolved paths of the other specs this run runs too (a model spec's `functions:`
    # op audits count only when they run beside it).
    alongside: tuple[str, ...] = ()

    def line_of(self, *loc: str | int) -> int:
        """The line of a key in the file (1 when unknown), for annotations that point at it."""
        return line_for(tuple(loc), self.lines)

    def where(self, *loc: str | int) -> str:
        """`file:line` of a key, for one-line errors that point at the spec."""
        return f"{self.path}:{self.line_of(*loc)}"

    @property
    def base_dir(self) -> Path:
        return self.path.resolve().parent


def apply_sets(data: dict[str, Any], sets: tuple[str, ...]) -> dict[Loc, str]:
    """Apply `--set key.path=value` options (values read as YAML scalars or flow
    collections by the safe loader) to a spec's data; returns which option set which key."""
    origin: dict[Loc, str] = {}
    for option in sets:
        key, sep, text = option.partition("=")
        parts = key.strip().split(".")
        if not sep or not all(parts):
            raise SpecError(f"--set {option}: expected key.path=value, e.g. batches.count=2")
        try:
            value = yaml.load(text, Loader=Loader)
        except yaml.YAMLError as exc:
            raise SpecError(f"--set {option}: not a YAML value: {one_line(str(exc))}") from None
        node: Any = data
        for part in parts[:-1]:
            child = node.get(part) if isinstance(node, dict) else None
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise SpecError(f"--set {option}: {part} is not a mapping")
            node = child
        node[parts[-1]] = value
        origin[tuple(parts)] = f"--set {option}"
    return origin


_PATTERNS = {
    "^[A-Za-z_][A-Za-z0-9_]*$": "use a name of letters, digits and '_' (not starting with a digit)",
    "^[A-Za-z0-9_.-]+$": "use only letters, digits, '.', '_' and '-'",
    DEVICE_PATTERN: "not a device: expected cpu, cuda, cuda:N, mps, xpu or xpu:N",
}
# Tags pydantic puts in the location of a union's members (a model member: its class name).
_UNION_TAGS = {"constrained-int", "constrained-str", "float", "bool", "int", "str", "Variants"}


def validation_messages(exc: ValidationError, root: type[BaseModel]) -> list[tuple[Loc, str]]:
    """One message per field: a union's members merged, and a type error that a deeper error
    explains (`variants: {sizez: 1}` is not a bool, but says more as an unknown key) dropped;
    a misspelled key gets 'did you mean'."""
    groups: dict[Loc, list[tuple[str, str]]] = {}
    for err in exc.errors(include_url=False):
        loc = tuple(p for p in err["loc"] if p not in _UNION_TAGS)
        msg = "unknown key" if err["type"] == "extra_forbidden" else err["msg"]
        if err["type"] == "string_pattern_mismatch":
            msg = _PATTERNS.get(str(err.get("ctx", {}).get("pattern")), msg)
        groups.setdefault(loc, []).append((err["type"], msg.removeprefix("Value error, ")))
    out: list[tuple[Loc, str]] = []
    for loc, errs in groups.items():
        specific = [m for t, m in errs if not t.endswith("_type")]
        if not specific and any(other[: len(loc)] == loc and other != loc for other in groups):
            continue
        text = "; ".join(dict.fromkeys(specific)) or " or ".join(dict.fromkeys(m for _, m in errs))
        out.append((loc, text + _suggest(root, loc, errs[0][0])))
    return out


def _suggest(root: type[BaseModel], loc: Loc, error_type: str) -> str:
    """'did you mean ...?' for a misspelled key."""
    if error_type != "extra_forbidden" or not loc or not isinstance(loc[-1], str):
        return ""
    model: type[BaseModel] = root
    parents = list(loc[:-1])
    while parents:
        part = parents.pop(0)
        if isinstance(part, int):
            continue
        info = model.model_fields.get(part)
        if info is None:
            return ""
        inner = model_in(info.annotation)
        if inner is None:
            return ""
        if _is_mapping_of_models(info.annotation) and parents:
            parents.pop(0)  # a user's name (an op input): stay on the item model
        model = inner
    close = difflib.get_close_matches(loc[-1], list(model.model_fields), n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""


def _is_mapping_of_models(annotation: Any) -> bool:
    return str(annotation).startswith("dict[")


def raise_messages(
    found: list[tuple[Loc, str]], where: str, lines: dict[Loc, int], origin: dict[Loc, str]
) -> None:
    """Raise every problem as one SpecError line each; a key set by --set names the option."""
    if not found:
        return
    messages = []
    for loc, msg in sorted(found, key=lambda item: line_for(item[0], lines)):
        at = next((o for k, o in origin.items() if loc[: len(k)] == k), None)
        at = at or f"{where}:{line_for(loc, lines)}"
        messages.append(f"{at}: {dotted(loc) or 'spec'}: {msg}")
    raise SpecError("\n".join(dict.fromkeys(messages)))
