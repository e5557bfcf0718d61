"""Loading a spec of any kind: YAML (safe loader only), `--set` options, the kind, validation;
every error one `file:line: field: msg` line. Torch-free, so `gradaudit validate` and the
supervisor that plans a run never import torch.

The kind is read off the top-level keys: `op:` makes an op audit, `target:` a target kind a
plugin registers (its section validated by that plugin, when the run loads it), and anything
else a model audit, sharded across ranks when it has `distributed:`.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, Field, ValidationError

from gradaudit.errors import SpecError
from gradaudit.spec.common import (
    Dtype,
    LoadedSpec,
    SpecBase,
    apply_sets,
    raise_messages,
    validation_messages,
)
from gradaudit.spec.model import Spec
from gradaudit.spec.op import OpSpec
from gradaudit.spec.yamlfile import Loc, read_mapping, read_spec_file

BUILT_IN_KINDS = ("model", "op", "sharded")


class TargetSection(BaseModel):
    """`target:` of a spec whose target kind a plugin registers: `kind` and the options the
    plugin validates."""

    model_config = {"extra": "allow", "frozen": True}

    kind: Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]+$")]


class TargetSpec(SpecBase):
    """A spec for a plugin's target kind: the common keys, a seed, and `target:`."""

    target: TargetSection
    dtypes: list[Dtype] = Field(default_factory=lambda: ["float64", "float32"], min_length=1)  # type: ignore[arg-type]
    seed: int = 0


def kind_of(data: dict[str, Any]) -> str:
    """The kind of a spec's data (see the module docstring)."""
    if "op" in data:
        return "op"
    if "target" in data:
        target = data["target"]
        return str(target.get("kind", "?")) if isinstance(target, dict) else "?"
    return "sharded" if data.get("distributed") is not None else "model"


def _model(kind: str) -> type[BaseModel]:
    models: dict[str, type[BaseModel]] = {"op": OpSpec, "model": Spec, "sharded": Spec}
    return models.get(kind, TargetSpec)


def parse(text: str, where: str, sets: tuple[str, ...] = ()) -> tuple[Any, dict[Loc, int], str]:
    """Validate spec text: (the kind's spec model, the line of every key, the kind)."""
    data, lines = read_mapping(text, where)
    origin = apply_sets(data, sets)
    kind = kind_of(data)
    model = _model(kind)
    try:
        spec = model.model_validate(data)
        found = spec.op.problems() if isinstance(spec, OpSpec) else []
    except ValidationError as exc:
        found = validation_messages(exc, model)
    raise_messages(found, where, lines, origin)
    return spec, lines, kind


def parse_spec(text: str, where: str, sets: tuple[str, ...] = ()) -> Any:
    """Validate spec text of any kind; `where` names the file in error messages."""
    return parse(text, where, sets)[0]


def load_spec(path: str | Path, sets: tuple[str, ...] = ()) -> LoadedSpec:
    """Read and validate a spec file, with `--set key.path=value` overrides applied."""
    path = Path(path)
    raw, text = read_spec_file(path)
    spec, lines, kind = parse(text, str(path), sets)
    if isinstance(spec, Spec):
        _check_function_specs(spec, path, lines)
    digest = hashlib.sha256(raw + "\n".join(sets).encode()).hexdigest()
    return LoadedSpec(spec, path, digest, lines, sets, kind)


def _check_function_specs(spec: Spec, path: Path, lines: dict[Loc, int]) -> None:
    """Each op spec named under `functions:` exists and is an op spec (read, not run)."""
    found: list[tuple[Loc, str]] = []
    for name, relative in spec.functions.items():
        target = path.resolve().parent / relative
        if not target.is_file():
            found.append(
                (("functions", name), f"{relative}: no such file (paths are relative to the spec)")
            )
        elif peek_kind(target) != "op":
            found.append(
                (("functions", name), f"{relative}: not an op spec (it has no op: section)")
            )
    raise_messages(found, str(path), lines, {})


def peek_kind(path: str | Path) -> str | None:
    """The kind of a spec file without validating it (None: not readable as a mapping)."""
    try:
        data, _ = read_mapping(read_spec_file(Path(path))[1], str(path))
    except SpecError:
        return None
    return kind_of(data)


def json_schema() -> str:
    """The JSON Schema of spec files (model and sharded specs, op specs, plugin targets), as
    committed in specs/schema.json for editors."""
    schemas = [m.model_json_schema() for m in (Spec, OpSpec, TargetSpec)]
    defs: dict[str, Any] = {}
    branches = []
    for schema in schemas:
        defs.update(schema.pop("$defs", {}))
        branches.append(schema)
    document = {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "gradaudit spec",
        "anyOf": branches,
        "$defs": defs,
    }
    return json.dumps(document, indent=2, sort_keys=True) + "\n"
