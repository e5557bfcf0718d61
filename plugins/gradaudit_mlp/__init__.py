"""gradaudit's MLP plugins: makemore's batch-norm MLP and its manual backward pass.

A second model family next to the CharRNN, with a different kind of gradient to get
wrong (batch statistics couple every row of the batch). Written against gradaudit's
public API only, as any third-party plugin would be.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from gradaudit import hookimpl


@hookimpl
def register_models(register: Callable[[str, Any], None]) -> None:
    from gradaudit_mlp.model import build_mlp_batchnorm

    register("mlp-batchnorm", build_mlp_batchnorm)


@hookimpl
def register_gradients(register: Callable[[str, Any], None]) -> None:
    from gradaudit_mlp.backward import mlp_batchnorm_backward

    register("mlp-batchnorm-manual", mlp_batchnorm_backward)
