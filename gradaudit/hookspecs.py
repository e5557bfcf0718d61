"""The hooks a gradaudit plugin may implement.

Each hook is handed a `register` callback, so one plugin module can
register any number of models, gradients, datasets or ops under its own names.
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

    `factory(**dataset.model_args, **options)` returns a `torch.nn.Module` whose
    `forward(**batch.tensors)` returns a `gradaudit.Forward`.
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


@hookspec
def register_checks(register: Callable[[str, Any], None]) -> None:
    """Register check kinds: `register(name, check)`, `check` a `gradaudit.checks.CheckKind`.

    A check kind plans its cases from the spec (`plan_cases`) and runs beside the gradient
    comparison on every batch (`start(...).batch(context)`); see gradaudit/checks/.
    """


@hookspec
def register_reporters(register: Callable[[str, Any], None]) -> None:
    """Register report formats: `register(name, factory)`.

    `factory(options: gradaudit.report.base.ReportOptions)` returns a reporter (start, case,
    group, checkpoint, finish), or None when the run did not ask for this format.
    """


@hookspec
def register_report_options(register: Callable[[str, Any], None]) -> None:
    """Register `gradaudit run` options for reporters: `register(name, ReportOption(...))`
    (gradaudit.report.base), as pytest's `pytest_addoption`: `--NAME VALUE` reaches every
    reporter factory as `options.extra[NAME]`. Read, like reporters, from the built-in
    plugin and the `gradaudit.report` entry points, before the command line is parsed (a
    spec's `plugins:` come too late to add options).
    """


@hookspec
def register_targets(register: Callable[[str, Any], None]) -> None:
    """Register target kinds: `register(name, build)`.

    A spec with `target: {kind: NAME, ...}` is audited by `build(loaded_spec)`, which returns
    a `gradaudit.targets.Target` (see that module: its head, its cases, its samples, and a
    pass per device and dtype). The engine plans, runs, supervises and reports it like the
    built-in kinds.
    """


@hookspec
def register_ops(register: Callable[[str, Any], None]) -> None:
    """Register op-audit candidates and references: `register(name, obj)`.

    `obj` is a function, an `autograd.Function` (or its `.apply`) or an `nn.Module`
    class; an op spec's `op.candidate` / `op.reference` may then name it (docs/ops.md).
    """
