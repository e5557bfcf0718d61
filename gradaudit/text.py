"""The one place where text from plugins, specs and paths is made fit for a report.

Every string that enters a report (JUnit names, attributes and bodies, JSON strings, GitHub
annotations and summaries, mutation reports) goes through `clean`: a tensor named
`"W.weight\\x0c"` or a spec path with a control character must not make the JUnit file
not well-formed. ANSI colour sequences are dropped (they are decoration); every other
character that XML 1.0 forbids or discourages is shown as a visible escape (`\\x0c`,
`\\udcff`), so that two names differing only there stay distinct and a reader sees what
the plugin really returned. Tab, newline and carriage return are kept.
"""

from __future__ import annotations

import re

_ANSI = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b[@-_]")
_ILLEGAL = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x84\x86-\x9f\ud800-\udfff\ufffe\uffff]")


def _visible(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def clean(text: str, limit: int | None = None) -> str:
    """Drop ANSI escapes, make XML-illegal characters visible escapes, cap at `limit` chars.

    Idempotent: cleaning a cleaned string changes nothing (when it is within `limit`).
    Names are cleaned without a limit, so that cleaning never merges two of them.
    """
    text = _ILLEGAL.sub(_visible, _ANSI.sub("", text))
    if limit is None or len(text) <= limit:
        return text
    return text[:limit] + f"... ({len(text) - limit} characters cut)"
