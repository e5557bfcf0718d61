"""The hooks a gradaudit plugin may implement.

Each hook is handed a `register` callback, so one plugin module can
register any number of models, gradients or datasets under its own names.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pluggy

hookspec = pluggy.HookspecMarker("gradaudit")
hookimpl = pluggy.HookimplMarker("gradaudit")


@hookspec
def register_models(register: Callable[[str, Any], None]) -> None:
    """Register model factories: `register(name, factory)`.

    `factory(vocab_size, **options)` returns a `torch.nn.Module` whose
    `forward(inputs, targets)` returns a `gradaudit.Forward`.
    """


@hookspec
def register_gradients(register: Callable[[str, Any], None]) -> None:
    """Register manual-gradient functions: `register(name, fn)`.

    `fn(model, batch, forward, **options)` returns a mapping
    tensor name -> gradient of the loss with respect to that tensor.
    """


@hookspec
def register_data(register: Callable[[str, Any], None]) -> None:
    """Register dataset loaders: `register(name, loader)`.

    `loader(options, base_dir)` returns a `gradaudit.Dataset`.
    """
