"""gradaudit's tensor-parallel example: a 2-way (any-way) Megatron-style MLP, its manual
backward with the all-reduces it needs, and a gallery of the bugs such backwards ship with.

Written against gradaudit's public API only, as a third-party plugin would be.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from gradaudit import hookimpl


@hookimpl
def register_models(register: Callable[[str, Any], None]) -> None:
    from gradaudit_tp.model import build_tp_mlp

    register("tp-mlp", build_tp_mlp)


@hookimpl
def register_gradients(register: Callable[[str, Any], None]) -> None:
    from gradaudit_tp.backward import tp_mlp_backward

    register("tp-mlp-manual", tp_mlp_backward)
    # The gallery of deliberately wrong backwards registers only when a spec asks for it:
    # `plugins: [gradaudit_tp.gallery]`.
