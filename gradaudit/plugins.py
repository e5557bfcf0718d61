"""Finding plugins (entry points, spec-named modules and files) and what they register."""

from __future__ import annotations

import difflib
import hashlib
import importlib
import importlib.machinery
import importlib.util
import os
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

import pluggy

from gradaudit import hookspecs
from gradaudit.errors import PluginError

if TYPE_CHECKING:
    from gradaudit.spec import LoadedSpec

ENTRY_POINT_GROUP = "gradaudit"
REPORT_GROUP = "gradaudit.report"  # reporters and their options, loaded by the supervisor
BUILTIN = "gradaudit.builtin"
ALLOW_ENV = "GRADAUDIT_PLUGINS"  # comma-separated entry-point names; empty loads none
TRACE_ENV = "GRADAUDIT_TRACE_HOOKS"
KINDS = ("model", "gradients", "data", "check", "reporter", "report-option", "op", "target")
HOOKS = {
    "model": "register_models",
    "gradients": "register_gradients",
    "data": "register_data",
    "check": "register_checks",
    "reporter": "register_reporters",
    "report-option": "register_report_options",
    "op": "register_ops",
    "target": "register_targets",
}


@dataclass(frozen=True)
class Registration:
    """One thing a plugin registered: a model factory, manual gradient, data loader, check
    kind, reporter or op (a candidate or reference of op audits)."""

    kind: str
    name: str
    obj: Any
    plugin: str
    source: str
    version: str


@dataclass
class Registry:
    """Everything registered by the loaded plugins, by kind and name."""

    entries: dict[str, dict[str, Registration]] = field(
        default_factory=lambda: {kind: {} for kind in KINDS}
    )
    plugins: list[tuple[str, str, str]] = field(default_factory=list)  # name, source, version

    def get(self, kind: str, name: str, where: str = "") -> Any:
        """The registered object, or a PluginError (at `where`, the spec's file:line) that
        lists what is available."""
        known = self.entries[kind]
        if name in known:
            return known[name].obj
        available = ", ".join(sorted(known)) or "none"
        close = difflib.get_close_matches(name, list(known), n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        at = f"{where}: " if where else ""
        raise PluginError(f"{at}unknown {kind} plugin '{name}'{hint}; available: {available}")

    def objects(self, kind: str) -> dict[str, Any]:
        """Everything registered of one kind, in registration order."""
        return {name: reg.obj for name, reg in self.entries[kind].items()}

    def all(self, builtin: bool = False) -> list[Registration]:
        """What the plugins registered; gradaudit's own check kinds and reporters too
        when `builtin` (they register through the same hooks)."""
        return [
            reg
            for kind in KINDS
            for reg in self.entries[kind].values()
            if builtin or reg.plugin != BUILTIN
        ]


def _allowed(name: str) -> bool:
    allow = os.environ.get(ALLOW_ENV)
    if allow is None:
        return True
    return name in {part.strip() for part in allow.split(",") if part.strip()}


def _import_file(path: Path) -> ModuleType:
    digest = hashlib.sha1(str(path).encode()).hexdigest()[:8]
    module_name = f"gradaudit_specplugin_{path.stem}_{digest}"
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise PluginError(f"plugin file {path} cannot be imported")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    spec.loader.exec_module(module)
    return module


def _is_file_ref(ref: str) -> bool:
    return ref.endswith(".py") or "/" in ref or os.sep in ref


def locate(ref: str, base_dir: Path) -> str:
    """Where a spec's `plugins:` entry would be imported from, found without importing it
    (nor its parent packages): a file's resolved path, a module's file, or why not found."""
    if _is_file_ref(ref):
        path = (base_dir / Path(ref).expanduser()).resolve()
        return f"file {path}" if path.is_file() else f"file {path} (not found)"
    parts = ref.split(".")
    search: list[str] | None = None
    found = None
    for i in range(len(parts)):
        found = importlib.machinery.PathFinder.find_spec(".".join(parts[: i + 1]), search)
        if found is None:
            return f"module {ref} (not found)"
        search = list(found.submodule_search_locations or [])
        if i < len(parts) - 1 and not search:
            return f"module {ref} (not found)"
    assert found is not None
    return f"module {ref} ({found.origin})"


def _load_named(ref: str, base_dir: Path) -> tuple[ModuleType, str]:
    """Import a spec's `plugins:` entry: a `.py` path (relative to the spec) or a dotted module."""
    if _is_file_ref(ref):
        path = (base_dir / Path(ref).expanduser()).resolve()
        if not path.is_file():
            raise PluginError(f"plugin file not found: {path}")
        return _import_file(path), f"file {path}"
    return importlib.import_module(ref), f"module {ref}"


def plugin_manager(
    spec_plugins: Iterable[str] = (),
    base_dir: Path | None = None,
    loaded: LoadedSpec | None = None,
    group: str = ENTRY_POINT_GROUP,
) -> Registry:
    """Load entry-point plugins of `group` (allow-list: $GRADAUDIT_PLUGINS) and the spec's
    own plugins. The built-in check kinds and reporters register through the same hooks
    (gradaudit.builtin).

    The process that runs plugin code loads the `gradaudit` group; the supervisor loads only
    `gradaudit.report` (REPORT_GROUP): reporters and the command-line options they add, which
    see results, never tensors.
    """
    pm = pluggy.PluginManager("gradaudit")
    pm.add_hookspecs(hookspecs)
    sources: dict[str, tuple[str, str]] = {}
    from gradaudit import builtin

    _register(pm, builtin, BUILTIN)
    sources[BUILTIN] = ("built in (gradaudit.builtin)", _version())

    for ep in entry_points(group=group):
        if not _allowed(ep.name) or pm.has_plugin(ep.name):
            continue
        version = ep.dist.version if ep.dist else "?"
        try:
            module = ep.load()
        except BaseException as exc:  # SystemExit too: a plugin ending the run is its error
            if isinstance(exc, KeyboardInterrupt):
                raise
            raise PluginError(
                f"plugin '{ep.name}' ({ep.value}) failed to import: {_why(exc)}"
            ) from None
        _register(pm, module, ep.name)
        dist = ep.dist.name if ep.dist else "?"
        where = "built in" if dist == "gradaudit" else f"entry point of {dist}"
        sources[ep.name] = (f"{where} ({ep.value})", version)

    for i, ref in enumerate(spec_plugins):
        at = f"{loaded.where('plugins', i)}: " if loaded else ""
        try:
            module, source = _load_named(ref, base_dir or Path.cwd())
        except PluginError as exc:
            raise PluginError(f"{at}{exc}") from None
        except BaseException as exc:
            if isinstance(exc, KeyboardInterrupt):
                raise
            raise PluginError(f"{at}plugin '{ref}' failed to import: {_why(exc)}") from None
        if pm.is_registered(module):  # an installed plugin's own module, listed again: a no-op
            continue
        _register(pm, module, ref)
        sources[ref] = (source, getattr(module, "__version__", "-"))

    try:
        pm.check_pending()
    except pluggy.PluginValidationError as exc:
        raise PluginError(_one_line(str(exc))) from None

    registry = Registry(plugins=[(name, *sources[name]) for name in sources if name != BUILTIN])
    # The supervisor asks for reporters only: the other hooks import what runs plugin code
    # (torch: 1.5 s of every run, spent twice).
    reporting = ("reporter", "report-option")
    kinds = HOOKS if group != REPORT_GROUP else {k: HOOKS[k] for k in reporting}
    for kind, hook_name in kinds.items():
        for impl in getattr(pm.hook, hook_name).get_hookimpls():
            source, version = sources.get(impl.plugin_name, ("?", "?"))
            _collect(registry, kind, impl, source, version)
    return registry


def _register(pm: pluggy.PluginManager, module: ModuleType, name: str) -> None:
    try:
        pm.register(module, name=name)
    except (pluggy.PluginValidationError, ValueError) as exc:
        raise PluginError(f"plugin '{name}' cannot be registered: {_one_line(str(exc))}") from None


def _collect(
    registry: Registry, kind: str, impl: pluggy.HookImpl, source: str, version: str
) -> None:
    """Call one plugin's register hook, recording who registered what."""
    known = registry.entries[kind]

    def register(name: str, obj: Any) -> None:
        if not isinstance(name, str) or not name:
            raise PluginError(f"plugin '{impl.plugin_name}' registered a {kind} with no name")
        if name in known:
            other = known[name].plugin
            raise PluginError(
                f"{kind} plugin '{name}' is registered twice: by '{other}' and '{impl.plugin_name}'"
            )
        if not callable(obj):
            raise PluginError(f"{kind} plugin '{name}' from '{impl.plugin_name}' is not callable")
        known[name] = Registration(kind, name, obj, impl.plugin_name, source, version)
        if os.environ.get(TRACE_ENV):
            print(
                f"gradaudit trace: {impl.plugin_name}.{impl.function.__name__}"
                f"(register) -> {kind} '{name}' ({source})",
                file=sys.stderr,
            )

    try:
        impl.function(register=register)
    except (PluginError, KeyboardInterrupt):
        raise
    except BaseException as exc:
        raise PluginError(f"plugin '{impl.plugin_name}' failed to register: {_why(exc)}") from None


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _why(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def _version() -> str:
    from gradaudit.version import __version__

    return __version__


_REPORTS: list[Registry] = []


def report_registry() -> Registry:
    """The reporters the supervisor uses (built in, and the `gradaudit.report` entry points),
    loaded once per process."""
    if not _REPORTS:
        _REPORTS.append(plugin_manager(group=REPORT_GROUP))
    return _REPORTS[0]
