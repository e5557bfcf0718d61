"""Turning a spec's `candidate:` / `reference:` into something callable.

A reference is `pkg.mod:attr.path` (an autograd.Function class stands for its `.apply`),
or a name that a plugin registered through the `register_ops` hook.
"""

from __future__ import annotations

import difflib
import importlib
import inspect
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gradaudit.targets.op.errors import OpError
from gradaudit.targets.op.pair import as_function


@dataclass(frozen=True)
class Callee:
    """A resolved candidate or reference: a function, or an nn.Module class to build."""

    label: str  # as written, for messages
    fn: Callable[..., Any]
    module_class: type | None = None  # set when `fn` is an nn.Module subclass

    @property
    def signature_of(self) -> Callable[..., Any]:
        """What holds the call's parameters: the function, or the Module's forward."""
        return self.fn if self.module_class is None else self.module_class.forward  # type: ignore[attr-defined]


def resolve(
    ref: Any,
    where: str,
    field: str,
    plugins: Iterable[str] = (),
    base_dir: Path | None = None,
    known: Mapping[str, Callable[..., Any]] | None = None,
) -> Callee:
    """Import or look up one side; OpError (`where: field: why`) when that fails. `known`:
    the registered ops, when the caller already loaded the plugins. A (forward, backward)
    pair (a tuple, or a spec's `{forward:, backward:}`) becomes one Function (pair.py)."""
    parts = _pair_parts(ref)
    if parts is not None:
        sides = [
            resolve(part, where, f"{field}.{side}", plugins, base_dir, known)
            for part, side in zip(parts, ("forward", "backward"), strict=True)
        ]
        label = f"{sides[0].label} + {sides[1].label}"
        return Callee(label, as_function(sides[0].fn, sides[1].fn, label))
    if callable(ref) and not isinstance(ref, str):
        return _classify(getattr(ref, "__qualname__", repr(ref)), ref)
    if ":" in ref:
        return _classify(ref, _import(ref, where, field))
    if known is None:
        known = named_ops(plugins, base_dir, where)
    if ref not in known:
        close = difflib.get_close_matches(ref, list(known), n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        available = ", ".join(sorted(known)) or "none"
        raise OpError(
            f"{where}: {field}: no op named '{ref}'{hint}; registered: {available}; "
            f"or write module.path:attribute"
        )
    return _classify(ref, known[ref])


def _pair_parts(ref: object) -> tuple[Any, Any] | None:
    """(forward, backward) of a pair: a 2-tuple, or an object with both (the spec's)."""
    if isinstance(ref, tuple) and len(ref) == 2:
        return ref[0], ref[1]
    forward, backward = getattr(ref, "forward", None), getattr(ref, "backward", None)
    if isinstance(forward, str) and isinstance(backward, str):
        return forward, backward
    return None


def _import(ref: str, where: str, field: str) -> Any:
    module_name, _, attr_path = ref.partition(":")
    if not module_name or not attr_path:
        raise OpError(f"{where}: {field}: '{ref}' is not module.path:attribute")
    try:
        obj: Any = importlib.import_module(module_name)
    except Exception as exc:
        raise OpError(f"{where}: {field}: cannot import '{module_name}' ({_why(exc)})") from None
    for part in attr_path.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            names = [n for n in dir(obj) if not n.startswith("_")]
            close = difflib.get_close_matches(part, names, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise OpError(f"{where}: {field}: '{ref}' has no attribute '{part}'{hint}") from None
        except Exception as exc:
            raise OpError(f"{where}: {field}: '{ref}': {_why(exc)}") from None
    if not callable(obj):
        raise OpError(f"{where}: {field}: '{ref}' is a {type(obj).__name__}, not callable")
    return obj


def _classify(label: str, obj: Any) -> Callee:
    import torch

    if inspect.isclass(obj) and issubclass(obj, torch.autograd.Function):
        return Callee(label, _apply(obj))
    owner = getattr(obj, "__self__", None)
    is_apply = inspect.ismethod(obj) and obj.__name__ == "apply"
    if is_apply and inspect.isclass(owner) and issubclass(owner, torch.autograd.Function):
        return Callee(label, _apply(owner))
    if inspect.isclass(obj) and issubclass(obj, torch.nn.Module):
        return Callee(label, obj, obj)
    return Callee(label, obj)


def _apply(cls: Any) -> Callable[..., Any]:
    """`Fn.apply` that takes keyword arguments and fills in forward's defaults (apply
    itself leaves out defaults before a keyword given: `missing required argument`)."""
    try:
        signature = inspect.signature(cls.forward)
    except (TypeError, ValueError):
        return cls.apply  # type: ignore[no-any-return]
    params = list(signature.parameters.values())
    if params and params[0].name == "ctx":
        params = params[1:]
    positional = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    if not all(p.kind in positional for p in params):
        return cls.apply  # type: ignore[no-any-return]
    bare = signature.replace(parameters=params)

    def apply(*args: Any, **kwargs: Any) -> Any:
        bound = bare.bind(*args, **kwargs)
        bound.apply_defaults()
        return cls.apply(*bound.args)

    apply.__qualname__ = f"{cls.__qualname__}.apply"
    apply.__signature__ = bare  # type: ignore[attr-defined]
    return apply


def varied_arguments(
    candidate: Callee,
    reference: Callee | None,
    declared: Mapping[str, Any],
    inputs: Iterable[str] = (),
) -> dict[str, Any]:
    """The non-tensor arguments argument variants vary, with base's value: those declared
    in `args:`, and the candidate's keyword defaults (bool, int, float, str or None; not
    the declared inputs) that the reference takes too (a function reference; both sides
    get the same value). gradaudit.targets.op.variants derives their alternatives."""
    found = {k: v for k, v in declared.items() if _varied(v)}
    mine = _defaults(candidate)
    theirs = _defaults(reference) if reference is not None else mine
    tensors = set(inputs)
    for key, value in mine.items():
        if key not in declared and key not in tensors and key in theirs and _varied(value):
            found[key] = value
    return found


def _varied(value: Any) -> bool:
    return value is None or isinstance(value, bool | int | float | str)


def _defaults(callee: Callee) -> dict[str, Any]:
    cls: Any = callee.module_class
    fn = callee.fn if cls is None else cls.forward
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return {}
    return {p.name: p.default for p in params if p.default is not inspect.Parameter.empty}


def named_ops(
    plugins: Iterable[str] = (), base_dir: Path | None = None, where: str = "spec"
) -> dict[str, Callable[..., Any]]:
    """Ops registered through the `register_ops` hook by the installed plugins (allow-list:
    $GRADAUDIT_PLUGINS) and by the spec's own `plugins:` modules."""
    from gradaudit.errors import PluginError
    from gradaudit.plugins import plugin_manager

    try:
        registry = plugin_manager(plugins, base_dir or Path.cwd())
    except PluginError as exc:
        raise OpError(f"{where}: {exc}") from None
    return registry.objects("op")


def _why(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__
