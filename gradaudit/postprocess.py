"""Declared post-processing: what the manual code does to its gradients on purpose.

Code that clips its gradients to ±c (min-char-rnn's `np.clip(dparam, -5, 5)`) or scales
them differs from autograd by design. Declaring the transformation applies it to the
reference (and the float64 truth) too, so the code is audited as written:

    postprocess: [{clip: 5.0, tensors: ["*"]}, {scale: 0.5, tensors: ["W*"]}]

Rules apply in order, each to the tensors whose names match one of its globs. Clipping
hides what lies beyond ±c, so `apply_counted` also says how many reference elements were
clipped: a tensor whose every element is clipped is compared by sign only, which is
nothing to pass on (see `saturated`).
"""

from __future__ import annotations

import fnmatch
import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, field_validator, model_validator

if TYPE_CHECKING:
    import torch

Glob = Annotated[str, Field(min_length=1)]


class Rule(BaseModel):
    """One declared transformation: exactly one of `clip` (to ±clip) or `scale`."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)  # as spec.py's models

    clip: float | None = None
    scale: float | None = None
    tensors: list[Glob] = Field(default_factory=lambda: ["*"], min_length=1)

    @field_validator("clip", "scale")
    @classmethod
    def _finite_nonzero(cls, value: float | None) -> float | None:
        # Zero would make both sides zero: a comparison of nothing, which must not pass.
        if value is not None and (not math.isfinite(value) or value == 0.0):
            raise ValueError("must be a finite, non-zero number")
        return value

    @model_validator(mode="after")
    def _one_kind(self) -> Rule:
        if (self.clip is None) == (self.scale is None):
            raise ValueError("give exactly one of 'clip' or 'scale'")
        if self.clip is not None and self.clip < 0:
            raise ValueError("clip must be positive (values are clipped to ±clip)")
        return self

    def matches(self, name: str) -> bool:
        return any(fnmatch.fnmatchcase(name, glob) for glob in self.tensors)

    def describe(self) -> str:
        what = f"clip ±{self.clip:g}" if self.clip is not None else f"scale {self.scale:g}"
        return f"{what} on {', '.join(self.tensors)}"


Rules = Sequence[Rule]
_RULES = TypeAdapter(list[Rule])


def parse(raw: object) -> list[Rule]:
    """Rules from a spec value or a Python list of dicts/Rules; raises pydantic's
    ValidationError (a ValueError) on bad input."""
    if raw is None:
        return []
    items: Any = raw
    return _RULES.validate_python(items)


def applies(name: str, rules: Rules) -> bool:
    return any(rule.matches(name) for rule in rules)


def apply(name: str, tensor: torch.Tensor, rules: Rules) -> torch.Tensor:
    """`tensor` transformed by every rule matching `name`, in order (a new tensor when any
    rule applies; the same tensor otherwise)."""
    return apply_counted(name, tensor, rules)[0]


def apply_counted(name: str, tensor: torch.Tensor, rules: Rules) -> tuple[torch.Tensor, int]:
    """(transformed tensor, elements that a clip rule changed). NaN is left as NaN."""
    import torch

    clipped = torch.zeros((), dtype=torch.bool, device=tensor.device).expand(tensor.shape)
    for rule in rules:
        if not rule.matches(name):
            continue
        if rule.clip is not None:
            clipped = clipped | (tensor.abs() > rule.clip)
            tensor = tensor.clamp(-rule.clip, rule.clip)
        else:
            assert rule.scale is not None
            tensor = tensor * rule.scale
    return tensor, int(clipped.sum())


def saturated(clipped: int, numel: int) -> str | None:
    """Why a comparison after clipping says nothing, or None."""
    if numel and clipped == numel:
        return (
            f"declared clipping changed all {numel} elements of autograd's gradient: "
            "only signs would be compared"
        )
    return None
