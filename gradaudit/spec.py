"""Spec files: YAML (safe loader only) to a validated `Spec`; errors as `file:line: field: msg`."""

from __future__ import annotations

import difflib
import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from gradaudit.distributed.config import Distributed
from gradaudit.errors import SpecError
from gradaudit.postprocess import Rule
from gradaudit.yamlfile import MAX_SPEC_BYTES as MAX_SPEC_BYTES
from gradaudit.yamlfile import Loc as Loc
from gradaudit.yamlfile import _check_expansion as _check_expansion
from gradaudit.yamlfile import _deep_line as _deep_line
from gradaudit.yamlfile import _dotted as _dotted
from gradaudit.yamlfile import _key_lines as _key_lines
from gradaudit.yamlfile import _line_for as _line_for
from gradaudit.yamlfile import _Loader as _Loader
from gradaudit.yamlfile import _model_in as _model_in
from gradaudit.yamlfile import _one_line as _one_line
from gradaudit.yamlfile import read_mapping, read_spec_file

DTYPES = ("float64", "float32", "bfloat16", "float16")
Dtype = Literal["float64", "float32", "bfloat16", "float16"]
DEVICE_PATTERN = r"^(cpu|mps|(cuda|xpu)(:\d+)?)$"
Device = Annotated[str, Field(pattern=DEVICE_PATTERN)]
Glob = Annotated[str, Field(min_length=1)]
PositiveInt = Annotated[int, Field(gt=0)]
NonNegativeFloat = Annotated[float, Field(ge=0)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class PluginRef(_Strict):
    """Which registered plugin to use, and the options passed to it."""

    plugin: Annotated[str, Field(min_length=1)]
    options: dict[str, Any] = Field(default_factory=dict)


class ModelRef(PluginRef):
    """The model plugin, its options, and the seed its weights are drawn with (default:
    `batches.seed`, as before model.seed existed, so existing reports keep their numbers)."""

    seed: int | None = None


class Batches(_Strict):
    """How batches are drawn; batch k is seeded with `seed + k`.

    `split: val` with `count` or `size` left out means every batch, or every window in
    one batch (the notebook's exhaustive val batch); `train` needs both."""

    split: Literal["train", "val"] = "train"
    count: PositiveInt | None = 8
    size: PositiveInt | None = 32
    seed: int = 0

    @model_validator(mode="before")
    @classmethod
    def _val_defaults(cls, data: Any) -> Any:
        if isinstance(data, dict):
            if "block_size" in data:
                raise ValueError(
                    "block_size is an option of the text data now: "
                    "move it to data.options.block_size"
                )
            if data.get("split") == "val":
                data = {"count": None, "size": None, **data}
        return data

    @model_validator(mode="after")
    def _train_needs_sizes(self) -> Batches:
        if self.split == "train" and (self.count is None or self.size is None):
            raise ValueError("split 'train' needs both count and size")
        return self


Mode = Literal["auto", "exact", "allclose", "baseline", "ulps"]


class ToleranceOverride(_Strict):
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


class Tolerance(_Strict):
    """How close is close enough; see compare.py and the README for the modes.

    exact: bitwise. allclose: |manual - autograd| <= atol + rtol*|autograd| elementwise,
    defaults from torch.testing.assert_close. baseline: max|manual - truth| <=
    k * max|autograd - truth| + floor_ulps * eps(dtype) * max|truth| (see tolerance.floor_scale),
    truth = autograd in float64. ulps: |manual - autograd| within a few ULPs of the tensor's
    and the batch's scale (float64, which has no higher-precision truth). auto: ulps for
    float64, baseline for lower precisions. `systematic` (on unless false) adds the
    systematic-error check wherever a truth exists: baseline, ulps, and any mode but exact
    in float64 (docs/specs.md).
    """

    mode: Mode = "auto"
    rtol: NonNegativeFloat | None = None
    atol: NonNegativeFloat | None = None
    k: NonNegativeFloat | None = None
    floor_ulps: NonNegativeFloat | None = None
    systematic: bool = True
    overrides: list[ToleranceOverride] = Field(default_factory=list)


class FiniteDifference(_Strict):
    """Central differences of the loss along random parameter directions, in float64."""

    directions: PositiveInt = 8
    batches: PositiveInt = 1  # the first N batches (of this shard)
    eps: Annotated[float, Field(gt=0)] = 1e-6
    rtol: NonNegativeFloat = 1e-6
    atol: NonNegativeFloat = 1e-12


class Repeat(_Strict):
    """Run the manual gradient `count` times on the same inputs; results must agree."""

    count: Annotated[int, Field(ge=2)] = 2
    rtol: NonNegativeFloat = 0.0
    atol: NonNegativeFloat = 0.0


class MicroBatch(_Strict):
    """The batch's gradient equals its micro-batches' manual gradients, combined.

    Keys as op audits' (gradaudit.ops.spec.MicroBatch); a model's loss is a scalar, so
    `reduction` is how it reduces over rows: mean (weights rows_i/N) or sum. A loss that
    is a mean over tokens (a padding mask, labels with an ignore index) weighs each
    micro-batch by its tokens: `weight` names the batch tensor that counts them (its sum
    over the micro-batch's rows; with `ignore_index`, its entries not equal to it)."""

    splits: Annotated[int, Field(ge=2)] = 2
    reduction: Literal["sum", "mean"] = "mean"
    weight: Annotated[str, Field(min_length=1)] | None = None
    ignore_index: int | None = None

    @model_validator(mode="after")
    def _weight_is_for_a_mean(self) -> MicroBatch:
        if self.weight is not None and self.reduction != "mean":
            raise ValueError(
                "weight applies to reduction mean (a sum adds micro-batches as they are)"
            )
        if self.ignore_index is not None and self.weight is None:
            raise ValueError("ignore_index needs weight: the batch tensor whose entries it ignores")
        return self


class SavedTensors(_Strict):
    """Forward and manual gradient leave what they read unchanged; a second manual call
    on the same forward repeats the first (bitwise, unless rtol/atol are given)."""

    rtol: NonNegativeFloat = 0.0
    atol: NonNegativeFloat = 0.0


class Checks(_Strict):
    """Extra checks beyond manual-vs-autograd, each reported as its own test cases."""

    finite_difference: FiniteDifference | None = None
    repeat: Repeat | None = None
    micro_batch: MicroBatch | None = None
    saved_tensors: SavedTensors | None = None


class Spec(_Strict):
    """One audit: a model, its manual gradients, data, and where and how to check them."""

    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]+$")]
    description: str = ""
    plugins: list[Annotated[str, Field(min_length=1)]] = Field(default_factory=list)
    model: ModelRef
    gradients: PluginRef
    data: PluginRef = Field(default_factory=lambda: PluginRef(plugin="text"))
    batches: Batches = Field(default_factory=Batches)
    devices: list[Device] = Field(default_factory=lambda: ["cpu"], min_length=1)
    dtypes: list[Dtype] = Field(default_factory=lambda: ["float32"], min_length=1)  # type: ignore[arg-type]
    # Globs of tensor names; "!glob" excludes what an earlier glob included.
    tensors: list[Glob] = Field(default_factory=lambda: ["*"], min_length=1)
    tolerance: Tolerance = Field(default_factory=Tolerance)
    checks: Checks = Field(default_factory=Checks)
    # Transformations the manual code applies on purpose (clip to +-c, a scale), applied to
    # autograd's reference and the float64 truth too, so such code is audited as written.
    postprocess: list[Rule] = Field(default_factory=list)
    distributed: Distributed | None = None

    @field_validator("devices", "dtypes")
    @classmethod
    def _no_repeats(cls, values: list[str]) -> list[str]:
        repeated = sorted({v for v in values if values.count(v) > 1})
        if repeated:
            raise ValueError(f"listed more than once: {', '.join(repeated)}")
        return values

    @property
    def model_seed(self) -> int:
        """The seed of the model's initial weights."""
        return self.batches.seed if self.model.seed is None else self.model.seed


@dataclass(frozen=True)
class LoadedSpec:
    """A validated spec plus where it came from (for relative paths and reports)."""

    spec: Spec
    path: Path
    sha256: str  # of the file, and of the --set options when there are any
    lines: dict[tuple[str | int, ...], int] = field(default_factory=dict)
    sets: tuple[str, ...] = ()

    def line_of(self, *loc: str | int) -> int:
        """The line of a key in the file (1 when unknown), for annotations that point at it."""
        return _line_for(tuple(loc), self.lines)

    def where(self, *loc: str | int) -> str:
        """`file:line` of a key, for one-line errors that point at the spec."""
        return f"{self.path}:{self.line_of(*loc)}"

    @property
    def base_dir(self) -> Path:
        return self.path.resolve().parent


def _suggest(loc: Loc, error_type: str) -> str:
    """'did you mean ...?' for a misspelled key."""
    if error_type != "extra_forbidden" or not loc or not isinstance(loc[-1], str):
        return ""
    model: type[BaseModel] = Spec
    for part in loc[:-1]:
        if isinstance(part, int):  # a list index: stay on the list's item model
            continue
        info = model.model_fields.get(part)
        inner = _model_in(info.annotation) if info else None
        if inner is None:
            return ""
        model = inner
    close = difflib.get_close_matches(loc[-1], list(model.model_fields), n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""


_MESSAGES = {
    "extra_forbidden": "unknown key",
    "devices": "not a device: expected cpu, cuda, cuda:N, mps, xpu or xpu:N",
    "name": "use only letters, digits, '.', '_' and '-'",
}


def parse_spec(text: str, where: str, sets: tuple[str, ...] = ()) -> Spec:
    """Validate spec text; `where` names the file in error messages."""
    return _parse(text, where, sets)[0]


def _apply_sets(data: dict[str, Any], sets: tuple[str, ...]) -> dict[Loc, str]:
    """Apply `--set key.path=value` options (values read as YAML scalars or flow
    collections by the safe loader) to the spec's data; returns which option set which key."""
    origin: dict[Loc, str] = {}
    for option in sets:
        key, sep, text = option.partition("=")
        parts = key.strip().split(".")
        if not sep or not all(parts):
            raise SpecError(f"--set {option}: expected key.path=value, e.g. batches.count=2")
        try:
            value = yaml.load(text, Loader=_Loader)
        except yaml.YAMLError as exc:
            raise SpecError(f"--set {option}: not a YAML value: {_one_line(str(exc))}") from None
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


def _parse(text: str, where: str, sets: tuple[str, ...] = ()) -> tuple[Spec, dict[Loc, int]]:
    data, lines = read_mapping(text, where)
    origin = _apply_sets(data, sets)
    try:
        return Spec.model_validate(data), lines
    except ValidationError as exc:
        messages = []
        for err in exc.errors(include_url=False):
            loc = tuple(err["loc"])
            dotted = _dotted(loc) or "spec"
            key = err["type"]
            if key == "string_pattern_mismatch":
                key = "devices" if "devices" in loc else str(loc[-1] if loc else "")
            msg = _MESSAGES.get(key, err["msg"]).removeprefix("Value error, ")
            line = _line_for(loc, lines)
            at = next((o for k, o in origin.items() if loc[: len(k)] == k), None)
            at = at or f"{where}:{line}"
            messages.append(f"{at}: {dotted}: {msg}{_suggest(loc, err['type'])}")
        raise SpecError("\n".join(messages)) from None


def load_spec(path: str | Path, sets: tuple[str, ...] = ()) -> LoadedSpec:
    """Read and validate a spec file, with `--set key.path=value` overrides applied."""
    path = Path(path)
    raw, text = read_spec_file(path)
    spec, lines = _parse(text, str(path), sets)
    digest = hashlib.sha256(raw + "\n".join(sets).encode()).hexdigest()
    return LoadedSpec(spec, path, digest, lines, sets)


def json_schema() -> str:
    """The JSON Schema of a spec, as committed in specs/schema.json for editors."""
    import json

    schema = Spec.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "gradaudit spec"
    return json.dumps(schema, indent=2, sort_keys=True) + "\n"
