"""Cleaning text that came from plugins before it reaches a report."""

from __future__ import annotations

import re

_ANSI = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b[@-_]")
_ILLEGAL = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x84\x86-\x9f\ud800-\udfff\ufffe\uffff]")


def clean(text: str, limit: int) -> str:
    """Strip ANSI escapes and XML-illegal characters, then cap the length."""
    text = _ILLEGAL.sub("", _ANSI.sub("", text))
    if len(text) <= limit:
        return text
    return text[:limit] + f"... ({len(text) - limit} characters cut)"
