"""Running an audit: cases are device x dtype x batch; results stream out per (device, dtype)."""

from __future__ import annotations

import copy
import fnmatch
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from gradaudit.compare import Check, GradientMismatch, TensorSummary, Tol, check, tolerance_for
from gradaudit.errors import DataError, PluginError, SpecError
from gradaudit.plugins import Registry, plugin_manager
from gradaudit.spec import LoadedSpec
from gradaudit.types import Batch, Dataset, Forward


@dataclass
class GroupResult:
    """Every audited tensor on one (device, dtype), over all batches (of this shard)."""

    device: str
    dtype: str
    tensors: list[TensorSummary]
    skipped: str | None = None
    seconds: float = 0.0
    device_name: str = ""
    done: bool = False  # False while running, and for a group cut short by an interrupt


@dataclass(frozen=True)
class CaseResult:
    """One tensor on one batch: a comparison, or the error that prevented it."""

    device: str
    dtype: str
    tensor: str
    batch: int
    seed: int
    check: Check | None = None
    error: str | None = None
    tol: Tol | None = None


CaseListener = Callable[[CaseResult], None]


@dataclass(frozen=True)
class Shard:
    """Shard `index` of `total` (1-based) takes every batch k with k % total == index - 1."""

    index: int
    total: int

    def __str__(self) -> str:
        return f"{self.index}/{self.total}"

    def takes(self, batch_index: int) -> bool:
        return batch_index % self.total == self.index - 1


@dataclass
class RunSummary:
    """Counts over a whole run; decides the exit code."""

    passed: int = 0
    failed: int = 0
    errors: int = 0
    skipped: int = 0
    groups: list[GroupResult] = field(default_factory=list)
    stopped: str | None = None  # why the run ended early: interrupted, internal error

    def add(self, group: GroupResult) -> None:
        self.groups.append(group)
        for tensor in group.tensors:
            status = tensor.status
            if status == "pass":
                self.passed += 1
            elif status == "fail":
                self.failed += 1
            elif status == "error":
                self.errors += 1
            else:
                self.skipped += 1

    @property
    def ok(self) -> bool:
        return not (self.failed or self.errors or self.stopped)


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
        self.current: GroupResult | None = None

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
        self,
        devices: list[str] | None = None,
        dtypes: list[str] | None = None,
        on_case: CaseListener | None = None,
        shard: Shard | None = None,
    ) -> Iterator[GroupResult]:
        """Run (device, dtype) groups in spec order; `self.current` is the group in progress."""
        spec = self.loaded.spec
        for device in devices or spec.devices:
            for dtype in dtypes or spec.dtypes:
                yield self.run_group(device, dtype, on_case, shard)

    def run_group(
        self,
        device: str,
        dtype: str,
        on_case: CaseListener | None = None,
        shard: Shard | None = None,
    ) -> GroupResult:
        spec = self.loaded.spec
        summaries = {
            name: TensorSummary(name, tolerance_for(spec.tolerance, name, device, dtype))
            for name in self.tensor_names
        }
        group = GroupResult(device, dtype, list(summaries.values()))
        self.current = group
        reason = device_unavailable(device)
        if reason:
            group.skipped = reason
            for summary in summaries.values():
                summary.skipped = reason
            group.done = True
            return group
        group.device_name = device_name(device)
        start = time.perf_counter()
        try:
            model = copy.deepcopy(self.master).to(device=device, dtype=getattr(torch, dtype))
        except Exception as exc:
            for summary in summaries.values():
                summary.add_error(f"moving the model to {device}/{dtype} failed: {_why(exc)}")
            group.done = True
            return group
        case = _Case(self, model, device, dtype, summaries, on_case)
        for batch in self.batches():
            if shard is None or shard.takes(batch.index):
                case.run(batch.to(device))
                group.seconds = time.perf_counter() - start
        for summary in summaries.values():
            summary.seconds = group.seconds / max(len(summaries), 1)
            if not summary.batches and not summary.error_count:
                summary.skipped = f"shard {shard} has no batches" if shard else "no batches"
        group.done = True
        return group


class _Case:
    """Runs batches of one (device, dtype) group and records each tensor's result."""

    def __init__(
        self,
        audit: Audit,
        model: torch.nn.Module,
        device: str,
        dtype: str,
        summaries: dict[str, TensorSummary],
        on_case: CaseListener | None,
    ) -> None:
        self.spec = audit.loaded.spec
        self.gradient_fn = audit.gradient_fn
        self.model = model
        self.device, self.dtype = device, dtype
        self.summaries = summaries
        self.on_case = on_case

    def _error(self, name: str, batch: Batch, message: str) -> None:
        full = f"batch {batch.index} (seed {batch.seed}): {message}"
        summary = self.summaries[name]
        summary.add_error(full)
        if self.on_case:
            self.on_case(
                CaseResult(
                    self.device,
                    self.dtype,
                    name,
                    batch.index,
                    batch.seed,
                    error=full,
                    tol=summary.tol,
                )
            )

    def _fail_all(self, batch: Batch, message: str) -> None:
        for name in self.summaries:
            self._error(name, batch, message)

    def run(self, batch: Batch) -> None:
        """One batch: forward, autograd reference, manual gradients, comparison per tensor."""
        names = list(self.summaries)
        torch.manual_seed(batch.seed)
        try:
            forward = self.model(batch.inputs, batch.targets)
            if not isinstance(forward, Forward):
                raise TypeError(f"forward returned {type(forward).__name__}, not gradaudit.Forward")
            available = {**forward.intermediates, **dict(self.model.named_parameters())}
            missing = [n for n in names if n not in available]
            if missing:
                raise KeyError(f"forward did not return {missing}")
            targets = [available[n] for n in names]
            reference = torch.autograd.grad(forward.loss, targets, allow_unused=True)
        except Exception as exc:
            self._fail_all(batch, f"model '{self.spec.model.plugin}' forward/autograd: {_why(exc)}")
            return
        try:
            with torch.no_grad():
                manual = self.gradient_fn(
                    self.model, batch, forward.detached(), **self.spec.gradients.options
                )
            if not isinstance(manual, Mapping):
                raise TypeError(f"returned {type(manual).__name__}, not a mapping name -> tensor")
        except Exception as exc:
            self._fail_all(batch, f"gradients '{self.spec.gradients.plugin}' raised {_why(exc)}")
            return
        for name, target, ref in zip(names, targets, reference, strict=True):
            got = manual.get(name)
            if got is None:
                self._error(
                    name, batch, f"gradients '{self.spec.gradients.plugin}' gave no gradient"
                )
                continue
            if not isinstance(got, torch.Tensor):
                self._error(name, batch, f"gradient is a {type(got).__name__}, not a tensor")
                continue
            summary = self.summaries[name]
            try:
                result = check(got, torch.zeros_like(target) if ref is None else ref, summary.tol)
            except GradientMismatch as exc:
                self._error(name, batch, f"gradient has {exc}")
                continue
            summary.add(result, batch.index, batch.seed)
            if self.on_case:
                self.on_case(
                    CaseResult(
                        self.device,
                        self.dtype,
                        name,
                        batch.index,
                        batch.seed,
                        result,
                        tol=summary.tol,
                    )
                )
