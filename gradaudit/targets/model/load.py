"""What a model audit checks, loaded: plugins, data, the model built once, its tensor names.

Everything here happens before the plan exists and before any batch is audited; every
failure is a one-line GradauditError pointing at the spec line it comes from.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import torch

from gradaudit.errors import DataError, PluginError, SpecError, why
from gradaudit.plugins import Registry, plugin_manager
from gradaudit.spec import LoadedSpec
from gradaudit.types import Batch, Dataset, Forward

PROBE_ROWS = 4  # enough for batch statistics with Bessel's correction (n - 1 > 0)


def select(names: list[str], globs: list[str], where: str) -> list[str]:
    """The names the globs pick, in model order; "!glob" removes what earlier globs added.

    A glob that matches no name at all is a spec error (a typo would silently audit less).
    """
    chosen: list[str] = []
    for glob in globs:
        pattern = glob[1:] if glob.startswith("!") else glob
        hits = [n for n in names if fnmatch.fnmatchcase(n, pattern)]
        if not hits:
            raise SpecError(
                f"{where}: tensors: '{glob}' matches no tensor; the model has: " + ", ".join(names)
            )
        if glob.startswith("!"):
            chosen = [n for n in chosen if n not in hits]
        else:
            chosen += [n for n in hits if n not in chosen]
    if not chosen:
        raise SpecError(f"{where}: tensors: the globs {globs} leave no tensor to audit")
    return [n for n in names if n in chosen]


class Audit:
    """A spec with its plugins and data loaded and its model built from the spec's seed."""

    def __init__(self, loaded: LoadedSpec, registry: Registry | None = None) -> None:
        self.loaded = loaded
        spec = loaded.spec
        self.registry = registry or plugin_manager(spec.plugins, loaded.base_dir, loaded)
        self.model_factory: Callable[..., torch.nn.Module] = self.registry.get(
            "model", spec.model.plugin, loaded.where("model", "plugin")
        )
        self.gradient_fn: Callable[..., Mapping[str, torch.Tensor]] = self.registry.get(
            "gradients", spec.gradients.plugin, loaded.where("gradients", "plugin")
        )
        loader = self.registry.get("data", spec.data.plugin, loaded.where("data", "plugin"))
        try:
            self.dataset: Dataset = loader(spec.data.options, loaded.base_dir)
        except Exception as exc:
            raise DataError(
                f"{loaded.where('data')}: data plugin '{spec.data.plugin}': {why(exc)}"
            ) from None
        self.master = self._build()
        self.all_names = self._probe_names()
        self.tensor_names = select(self.all_names, spec.tensors, loaded.where("tensors"))

    def _build(self) -> torch.nn.Module:
        spec, loaded = self.loaded.spec, self.loaded
        model_args = dict(getattr(self.dataset, "model_args", {}))
        clash = sorted(set(model_args) & set(spec.model.options))
        if clash:
            raise PluginError(
                f"{loaded.where('model', 'options')}: model.options {', '.join(clash)}: "
                f"given by the data plugin '{spec.data.plugin}' already; remove it here"
            )
        torch.manual_seed(spec.model_seed)  # the same initial weights for every case
        try:
            model = self.model_factory(**model_args, **spec.model.options)
        except Exception as exc:
            raise PluginError(
                f"{loaded.where('model')}: model plugin '{spec.model.plugin}' failed to build: "
                f"{why(exc)}"
            ) from None
        if not isinstance(model, torch.nn.Module):
            raise PluginError(
                f"{loaded.where('model')}: model plugin '{spec.model.plugin}' returned "
                f"{type(model).__name__}, not a torch.nn.Module"
            )
        return model

    def batches(self) -> Iterator[Batch]:
        b = self.loaded.spec.batches
        try:
            yield from self.dataset.batches(b.split, b.count, b.size, b.seed)
        except ValueError as exc:
            raise DataError(
                f"{self.loaded.where('batches')}: data plugin '{self.loaded.spec.data.plugin}': "
                f"{exc}"
            ) from None

    def _probe_names(self) -> list[str]:
        """Learn the intermediate names from a forward on the first rows of the first batch
        (a few rows, never the whole, possibly huge, batch)."""
        plugin, b = self.loaded.spec.model.plugin, self.loaded.spec.batches
        rows = PROBE_ROWS if b.size is None else min(b.size, PROBE_ROWS)
        try:
            first = next(iter(self.dataset.batches(b.split, 1, rows, b.seed)), None)
        except ValueError as exc:
            raise DataError(
                f"{self.loaded.where('batches')}: data plugin '{self.loaded.spec.data.plugin}': "
                f"{exc}"
            ) from None
        if first is None:
            raise DataError(f"{self.loaded.where('batches')}: the data plugin gave no batches")
        probe = first.head(PROBE_ROWS)
        self.probe_rows = probe.rows
        size = "all" if b.size is None else str(b.size)
        self.inputs = [  # one batch's tensors, for reports: "inputs 32x8"
            f"{n} {'x'.join([size, *map(str, t.shape[1:])]) if t.dim() else 'scalar'}"
            for n, t in probe.tensors.items()
        ]
        try:
            forward = self.master(**probe.tensors)
        except Exception as exc:
            try:  # a forward that fails only on some shapes fails its cases, not the plan
                forward = self.master(**probe.head(1).tensors)
            except Exception:
                raise PluginError(
                    f"{self.loaded.where('model')}: model plugin '{plugin}': the probe forward "
                    f"on {probe.rows} row(s) of the first batch (run to learn the tensor names) "
                    f"failed: {why(exc)}"
                ) from None
        if not isinstance(forward, Forward):
            raise PluginError(
                f"{self.loaded.where('model')}: model plugin '{plugin}': forward must return "
                f"gradaudit.Forward, got {type(forward).__name__}"
            )
        from gradaudit.targets.model.functions import custom_functions_in_graph

        self.functions = custom_functions_in_graph(forward.loss)
        params = [name for name, _ in self.master.named_parameters()]
        self.probe_numel = sum(t.numel() for t in forward.intermediates.values())
        clash = set(params) & set(forward.intermediates)
        if clash:
            raise PluginError(f"intermediate names clash with parameter names: {sorted(clash)}")
        return [*forward.intermediates, *params]

    def check_memory(self, dtypes: list[str]) -> None:
        """Refuse, before running, a batch whose tensors cannot fit in this machine's memory."""
        available = _available_memory()
        size = self.loaded.spec.batches.size
        if available is None or self.probe_numel == 0 or size is None:
            return  # val with every window: its size is the data's, checked by the data plugin
        widest = max(torch.finfo(getattr(torch, d)).bits // 8 for d in dtypes)
        per_row = self.probe_numel / max(self.probe_rows, 1)
        # forward, reference, manual and the float64 truth's copies, roughly
        needed = per_row * size * (3 * widest + 2 * 8)
        if needed > 0.8 * available:
            raise DataError(
                f"{self.loaded.where('batches', 'size')}: a batch of {size} rows needs about "
                f"{needed / 2**30:.1f} GiB for its tensors; this machine has "
                f"{available / 2**30:.1f} GiB available: lower batches.size"
            )


def plugin_options_error(fn: Any, options: Mapping[str, Any]) -> str | None:
    """Why `fn(model, batch, forward, **options)` cannot accept these options, or None."""
    import inspect

    try:
        signature = inspect.signature(fn)
    except (TypeError, ValueError):
        return None
    params = list(signature.parameters.values())
    if any(p.kind is p.VAR_KEYWORD for p in params):
        return None
    names = {p.name for p in params[3:] if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    unknown = sorted(set(options) - names)
    if unknown:
        return f"does not accept option(s) {', '.join(unknown)} (it takes: {sorted(names)})"
    return None


def _available_memory() -> int | None:
    """MemAvailable from /proc/meminfo (Linux); None where unknown."""
    try:
        with open("/proc/meminfo", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None
