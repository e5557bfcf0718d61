"""Spec files: YAML read with the safe loader only, validated per kind (model, sharded, op, a
plugin's target), every error one `file:line: field: msg` line. Torch-free.

The names most callers need are here; the kinds' sections live in spec.model and spec.op.
"""

from gradaudit.spec.common import DTYPES, LoadedSpec, Tolerance
from gradaudit.spec.load import json_schema, load_spec, parse_spec, peek_kind
from gradaudit.spec.model import Spec
from gradaudit.spec.op import OpSpec

__all__ = [
    "DTYPES",
    "LoadedSpec",
    "OpSpec",
    "Spec",
    "Tolerance",
    "json_schema",
    "load_spec",
    "parse_spec",
    "peek_kind",
]
