"""Running an audit: cases are device x dtype x batch; results stream out per (device, dtype)."""

from __future__ import annotations

import copy
import fnmatch
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from gradaudit.compare import GradientMismatch, TensorSummary, check, tolerance_for
from gradaudit.errors import DataError, PluginError, SpecError
from gradaudit.plugins import Registry, plugin_manager
from gradaudit.spec import LoadedSpec
from gradaudit.types import Batch, Dataset, Forward


@dataclass
class GroupResult:
    """Every audited tensor on one (device, dtype), over all batches."""

    device: str
    dtype: str
    tensors: list[TensorSummary]
    skipped: str | None = None
    seconds: float = 0.0
    device_name: str = ""


@dataclass
class RunSummary:
    """Counts over a whole run; decides the exit code."""

    passed: int = 0
    failed: int = 0
    errors: int = 0
    skipped: int = 0
    groups: list[GroupResult] = field(default_factory=list)

    def add(self, group: GroupResult) -> None:
        self.groups.append(group)
        for tensor in group.tensors:
            if group.skipped:
                self.skipped += 1
            elif tensor.status == "pass":
                self.passed += 1
            elif tensor.status == "fail":
                self.failed += 1
            else:
                self.errors += 1

    @property
    def ok(self) -> bool:
        return not (self.failed or self.errors)


def device_unavailable(device: str) -> str | None:
    """Why this machine cannot run on `device`, or None when it can."""
    kind, _, index = device.partition(":")
    if kind == "cpu":
        return None
    backend: Any = getattr(torch, kind, None) if kind != "mps" else torch.backends.mps
    if backend is None or not backend.is_available():
        return f"{kind} is not available on this machine"
    if index and kind != "mps" and int(index) >= backend.device_count():
        return (
            f"{device} is not available: this machine has {backend.device_count()} {kind} device(s)"
        )
    return None


def device_name(device: str) -> str:
    if device.startswith("cuda"):
        return torch.cuda.get_device_name(torch.device(device))
    return device


def _why(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__


class Audit:
    """A spec with its plugins and data loaded, ready to run group by group."""

    def __init__(self, loaded: LoadedSpec, registry: Registry | None = None) -> None:
        self.loaded = loaded
        spec = loaded.spec
        self.registry = registry or plugin_manager(spec.plugins, loaded.base_dir)
        self.model_factory: Callable[..., torch.nn.Module] = self.registry.get(
            "model", spec.model.plugin
        )
        self.gradient_fn: Callable[..., Mapping[str, torch.Tensor]] = self.registry.get(
            "gradients", spec.gradients.plugin
        )
        loader = self.registry.get("data", spec.data.plugin)
        try:
            self.dataset: Dataset = loader(spec.data.options, loaded.base_dir)
        except Exception as exc:
            raise DataError(f"data plugin '{spec.data.plugin}': {_why(exc)}") from None
        torch.manual_seed(spec.batches.seed)  # the same initial weights for every case
        try:
            self.master = self.model_factory(self.dataset.vocab_size, **spec.model.options)
        except Exception as exc:
            raise PluginError(
                f"model plugin '{spec.model.plugin}' failed to build: {_why(exc)}"
            ) from None
        self.tensor_names = self._select(self._probe_names())

    def batches(self) -> Iterator[Batch]:
        b = self.loaded.spec.batches
        try:
            yield from self.dataset.batches(b.split, b.count, b.size, b.block_size, b.seed)
        except ValueError as exc:
            raise DataError(f"data plugin '{self.loaded.spec.data.plugin}': {exc}") from None

    def _probe_names(self) -> list[str]:
        """Learn the intermediate names from one small CPU forward."""
        first = next(self.batches(), None)
        if first is None:
            raise DataError("the data plugin gave no batches")
        probe = Batch(first.inputs[:1], first.targets[:1], first.index, first.seed)
        try:
            forward = self.master(probe.inputs, probe.targets)
        except Exception as exc:
            raise PluginError(
                f"model plugin '{self.loaded.spec.model.plugin}': forward failed: {_why(exc)}"
            ) from None
        if not isinstance(forward, Forward):
            raise PluginError(
                f"model plugin '{self.loaded.spec.model.plugin}': forward must return "
                f"gradaudit.Forward, got {type(forward).__name__}"
            )
        params = [name for name, _ in self.master.named_parameters()]
        clash = set(params) & set(forward.intermediates)
        if clash:
            raise PluginError(f"intermediate names clash with parameter names: {sorted(clash)}")
        return [*forward.intermediates, *params]

    def _select(self, names: list[str]) -> list[str]:
        globs = self.loaded.spec.tensors
        for glob in globs:
            if not any(fnmatch.fnmatchcase(n, glob) for n in names):
                raise SpecError(
                    f"{self.loaded.path}: tensors: '{glob}' matches no tensor; the model has: "
                    + ", ".join(names)
                )
        return [n for n in names if any(fnmatch.fnmatchcase(n, g) for g in globs)]

    def groups(
        self, devices: list[str] | None = None, dtypes: list[str] | None = None
    ) -> Iterator[GroupResult]:
        spec = self.loaded.spec
        for device in devices or spec.devices:
            for dtype in dtypes or spec.dtypes:
                yield self.run_group(device, dtype)

    def run_group(self, device: str, dtype: str) -> GroupResult:
        spec = self.loaded.spec
        summaries = {
            name: TensorSummary(name, tolerance_for(spec.tolerance, name, device, dtype))
            for name in self.tensor_names
        }
        group = GroupResult(device, dtype, list(summaries.values()))
        reason = device_unavailable(device)
        if reason:
            group.skipped = reason
            return group
        group.device_name = device_name(device)
        start = time.perf_counter()
        try:
            model = copy.deepcopy(self.master).to(device=device, dtype=getattr(torch, dtype))
        except Exception as exc:
            for s in summaries.values():
                s.add_error(f"moving the model to {device}/{dtype} failed: {_why(exc)}")
            return group
        for batch in self.batches():
            self._run_case(model, batch.to(device), summaries)
        group.seconds = time.perf_counter() - start
        for s in summaries.values():
            s.seconds = group.seconds / max(len(summaries), 1)
        return group

    def _run_case(
        self, model: torch.nn.Module, batch: Batch, summaries: dict[str, TensorSummary]
    ) -> None:
        """One batch: forward, autograd reference, manual gradients, comparison per tensor."""
        spec = self.loaded.spec
        where = f"batch {batch.index} (seed {batch.seed})"

        def fail_all(message: str) -> None:
            for s in summaries.values():
                s.add_error(f"{where}: {message}")

        torch.manual_seed(batch.seed)
        try:
            forward = model(batch.inputs, batch.targets)
            if not isinstance(forward, Forward):
                raise TypeError(f"forward returned {type(forward).__name__}, not gradaudit.Forward")
            params = dict(model.named_parameters())
            available = {**forward.intermediates, **params}
            missing = [n for n in summaries if n not in available]
            if missing:
                raise KeyError(f"forward did not return {missing}")
            targets = [available[n] for n in summaries]
            reference = torch.autograd.grad(forward.loss, targets, allow_unused=True)
        except Exception as exc:
            fail_all(f"model '{spec.model.plugin}' forward/autograd raised {_why(exc)}")
            return
        try:
            with torch.no_grad():
                manual = self.gradient_fn(
                    model, batch, forward.detached(), **spec.gradients.options
                )
            if not isinstance(manual, Mapping):
                raise TypeError(
                    f"returned {type(manual).__name__}, not a mapping of name -> tensor"
                )
        except Exception as exc:
            fail_all(f"gradients '{spec.gradients.plugin}' raised {_why(exc)}")
            return
        for (name, summary), target, ref in zip(summaries.items(), targets, reference, strict=True):
            ref = torch.zeros_like(target) if ref is None else ref
            got = manual.get(name)
            if got is None:
                summary.add_error(
                    f"{where}: gradients '{spec.gradients.plugin}' gave no gradient for '{name}'"
                )
            elif not isinstance(got, torch.Tensor):
                summary.add_error(
                    f"{where}: gradient for '{name}' is a {type(got).__name__}, not a tensor"
                )
            else:
                try:
                    summary.add(check(got, ref, summary.tol), batch.index, batch.seed)
                except GradientMismatch as exc:
                    summary.add_error(f"{where}: gradient for '{name}' has {exc}")
