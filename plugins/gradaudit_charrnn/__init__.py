"""gradaudit's CharRNN plugins: the seed notebook's model and its manual BPTT.

Written against gradaudit's public API only, as any third-party plugin would be.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from gradaudit import hookimpl


@hookimpl
def register_models(register: Callable[[str, Any], None]) -> None:
    from gradaudit_charrnn.model import build_charrnn

    register("charrnn", build_charrnn)


@hookimpl
def register_gradients(register: Callable[[str, Any], None]) -> None:
    from gradaudit_charrnn.bptt import charrnn_bptt

    register("charrnn-bptt", charrnn_bptt)
    # The gallery of deliberately wrong BPTTs registers only when a spec asks for it:
    # `plugins: [gradaudit_charrnn.gallery]`.
