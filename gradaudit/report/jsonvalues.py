"""JSON values as every gradaudit report writes them: strict JSON (no NaN or inf), every
string cleaned. Standard library only, like the placeholder that uses it."""

from __future__ import annotations

import json
from typing import Any

from gradaudit.text import clean

SCHEMA = "gradaudit-run"
SCHEMA_VERSION = 1


def finite(value: Any) -> Any:
    """JSON has no inf or NaN: they are written as the strings "inf", "-inf", "nan".

    Every string (keys too) goes through `gradaudit.text.clean`, like the JUnit report's, so
    that a tensor has the same name in both and no lone surrogate reaches a strict parser.
    """
    if isinstance(value, float) and (value != value or abs(value) == float("inf")):
        return str(value)
    if isinstance(value, str):
        return clean(value)
    if isinstance(value, dict):
        return {clean(str(k)): finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [finite(v) for v in value]
    return value


def unfinite(value: Any) -> Any:
    """The inverse of `finite`, for reading reports back."""
    if isinstance(value, str) and value in ("inf", "-inf", "nan"):
        return float(value)
    if isinstance(value, dict):
        return {k: unfinite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [unfinite(v) for v in value]
    return value


def dumps(value: Any) -> str:
    return json.dumps(finite(value), allow_nan=False, sort_keys=False)
