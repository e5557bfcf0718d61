"""Running an audit: cases are device x dtype x batch; results stream out per (device, dtype)."""

from __future__ import annotations

import copy
import fnmatch
import math
import signal
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import torch

from gradaudit.compare import (
    Check,
    Comparison,
    GradientMismatch,
    Scratch,
    TensorSummary,
    Tol,
    check_all,
    mismatch,
    tolerance_for,
)
from gradaudit.errors import DataError, PluginError, SpecError
from gradaudit.mutate import Mutant, MutantResult, MutationReport, sensitivity
from gradaudit.plugins import Registry, plugin_manager
from gradaudit.results import CaseListener, CaseResult, GroupResult, Shard
from gradaudit.spec import LoadedSpec
from gradaudit.types import Batch, Dataset, Forward


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
        self.all_names = self._probe_names()
        self.tensor_names = self._select(self.all_names)
        self.current: list[GroupResult] = []  # the groups of the (device, dtype) in progress
        self.mutants: list[Mutant] | None = None  # set by `gradaudit mutate`
        self.timeout: float | None = None  # seconds per case (--timeout)
        self.mutation_reports: list[MutationReport] = []

    def check_memory(self, dtypes: list[str]) -> None:
        """Refuse, before running, a batch whose tensors cannot fit in this machine's memory."""
        available = _available_memory()
        b = self.loaded.spec.batches
        if available is None or self.probe_numel == 0 or b.size is None:
            return  # val with every window: its size is the data's, checked by the data plugin
        rows = b.size
        widest = max(torch.finfo(getattr(torch, d)).bits // 8 for d in dtypes)
        # forward, reference, manual and the float64 truth's copies, roughly
        needed = self.probe_numel * rows * (3 * widest + 2 * 8)
        if needed > 0.8 * available:
            raise DataError(
                f"a batch of {rows} x {b.block_size} needs about {needed / 2**30:.1f} GiB for its "
                f"tensors; this machine has {available / 2**30:.1f} GiB available: "
                "lower batches.size or block_size"
            )

    def batches(self) -> Iterator[Batch]:
        b = self.loaded.spec.batches
        try:
            yield from self.dataset.batches(b.split, b.count, b.size, b.block_size, b.seed)
        except ValueError as exc:
            raise DataError(f"data plugin '{self.loaded.spec.data.plugin}': {exc}") from None

    def _probe_names(self) -> list[str]:
        """Learn the intermediate names from one small CPU forward."""
        b = self.loaded.spec.batches
        try:  # one row: never the whole (possibly huge) first batch
            first = next(iter(self.dataset.batches(b.split, 1, 1, b.block_size, b.seed)), None)
        except ValueError as exc:
            raise DataError(f"data plugin '{self.loaded.spec.data.plugin}': {exc}") from None
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
        self.probe_numel = sum(t.numel() for t in forward.intermediates.values())
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
        """Groups in spec order: per (device, dtype) the gradients, then any extra checks."""
        spec = self.loaded.spec
        for device in devices or spec.devices:
            for dtype in dtypes or spec.dtypes:
                yield from self.run_groups(device, dtype, on_case, shard)

    def run_groups(
        self,
        device: str,
        dtype: str,
        on_case: CaseListener | None = None,
        shard: Shard | None = None,
    ) -> list[GroupResult]:
        spec = self.loaded.spec
        checks = spec.checks

        def new_group(kind: str, names: list[str], tol: Callable[[str], Tol]) -> GroupResult:
            summaries = [TensorSummary(name, tol(name)) for name in names]
            return GroupResult(device, dtype, summaries, check=kind)

        groups = [
            new_group(
                "gradients",
                self.tensor_names,
                lambda name: tolerance_for(spec.tolerance, name, device, dtype),
            )
        ]
        if checks.repeat:
            repeat = checks.repeat
            groups.append(
                new_group(
                    "repeat",
                    self.tensor_names,
                    lambda _: Tol("allclose", repeat.rtol, repeat.atol),
                )
            )
        if checks.finite_difference and dtype == spec.dtypes[0]:
            fd = checks.finite_difference
            group = new_group(
                "finite_difference",
                ["manual", "autograd"],
                lambda _: Tol("allclose", fd.rtol, fd.atol),
            )
            group.dtype = "float64"  # always computed in float64, once per device
            groups.append(group)
        self.current = groups
        reason = device_unavailable(device)
        if reason:
            for group in groups:
                group.skipped = reason
                for summary in group.tensors:
                    summary.skipped = reason
                group.done = True
            return groups
        start = time.perf_counter()
        for group in groups:
            group.device_name = device_name(device)
        case = _Case(self, device, dtype, groups, on_case)
        if case.setup_error is None:
            for batch in self.batches():
                if shard is None or shard.takes(batch.index):
                    case.run(batch.to(device))
                    for group in groups:
                        group.seconds = time.perf_counter() - start
        for group in groups:
            for summary in group.tensors:
                summary.seconds = group.seconds / max(len(group.tensors), 1)
                if not summary.batches and not summary.error_count:
                    summary.skipped = f"shard {shard} has no batches" if shard else "no batches"
            group.done = True
        return groups


def _float64_device(device: str) -> str:
    """Where the float64 truth is computed: the same device, unless it lacks float64."""
    return "cpu" if device.startswith("mps") else device


class _Case:
    """Runs the batches of one (device, dtype) and records every check's results."""

    def __init__(
        self,
        audit: Audit,
        device: str,
        dtype: str,
        groups: list[GroupResult],
        on_case: CaseListener | None,
    ) -> None:
        self.spec = audit.loaded.spec
        self.gradient_fn = audit.gradient_fn
        self.device, self.dtype = device, dtype
        self.on_case = on_case
        self.groups = {g.check: g for g in groups}
        self.summaries = {s.tensor: s for s in self.groups["gradients"].tensors}
        self.names = list(self.summaries)  # the audited tensors (unknown names join summaries)
        self.param_storage: dict[int, str] = {}
        self.batch_scale = 0.0  # the largest float64-truth gradient entry of the batch
        self.mutation: MutationReport | None = None
        if audit.mutants is not None:
            self.mutation = MutationReport(
                device,
                dtype,
                [MutantResult(m) for m in audit.mutants],
                tolerances={name: s.tol for name, s in self.summaries.items()},
            )
            audit.mutation_reports.append(self.mutation)
        self.fd_batches_done = 0
        self.scratch = Scratch()  # comparison buffers, reused batch after batch
        self.timeout = audit.timeout
        self.all_names = set(audit.all_names)
        self.setup_error: str | None = None
        self.truth_model: torch.nn.Module | None = None
        try:
            self.model = copy.deepcopy(audit.master).to(device=device, dtype=getattr(torch, dtype))
            self.param_storage = {
                p.untyped_storage().data_ptr(): f"parameter {n}"
                for n, p in self.model.named_parameters()
            }
            needs_truth = any(s.tol.mode == "baseline" for s in self.summaries.values())
            if needs_truth or "finite_difference" in self.groups:
                # Built from the tested dtype's weights, so only arithmetic differs.
                self.truth_model = copy.deepcopy(self.model).to(
                    device=_float64_device(device), dtype=torch.float64
                )
        except Exception as exc:
            self.setup_error = f"moving the model to {device}/{dtype} failed: {_why(exc)}"
            for group in groups:
                for summary in group.tensors:
                    summary.add_error(self.setup_error)

    def _emit(self, kind: str, name: str, batch: Batch, **fields: Any) -> None:
        if self.on_case:
            summary = next(s for s in self.groups[kind].tensors if s.tensor == name)
            self.on_case(
                CaseResult(
                    self.device,
                    self.groups[kind].dtype,
                    name,
                    batch.index,
                    batch.seed,
                    tol=summary.tol,
                    kind=kind,
                    **fields,
                )
            )

    def _error(self, name: str, batch: Batch, message: str, kind: str = "gradients") -> None:
        full = f"batch {batch.index} (seed {batch.seed}): {message}"
        next(s for s in self.groups[kind].tensors if s.tensor == name).add_error(full)
        self._emit(kind, name, batch, error=full)

    def _fail_all(self, batch: Batch, message: str) -> None:
        for kind, group in self.groups.items():
            for summary in group.tensors:
                self._error(summary.tensor, batch, message, kind)

    def _reference(
        self, model: torch.nn.Module, batch: Batch, names: list[str]
    ) -> tuple[Forward, list[torch.Tensor], list[torch.Tensor]]:
        """Forward and autograd's gradient of the loss w.r.t. each named tensor."""
        _seed(batch.seed, batch.inputs.device)
        forward = model(batch.inputs, batch.targets)
        if not isinstance(forward, Forward):
            raise TypeError(f"forward returned {type(forward).__name__}, not gradaudit.Forward")
        available = {**forward.intermediates, **dict(model.named_parameters())}
        missing = [n for n in names if n not in available]
        if missing:
            raise KeyError(f"forward did not return {missing}")
        targets = [available[n] for n in names]
        grads = torch.autograd.grad(forward.loss, targets, allow_unused=True)
        reference = [
            torch.zeros_like(t) if g is None else g for t, g in zip(targets, grads, strict=True)
        ]
        return forward, targets, reference

    def _manual(self, batch: Batch, forward: Forward) -> Mapping[str, torch.Tensor]:
        with torch.no_grad():
            manual = self.gradient_fn(
                self.model, batch, forward.detached(), **self.spec.gradients.options
            )
        if not isinstance(manual, Mapping):
            raise TypeError(f"returned {type(manual).__name__}, not a mapping name -> tensor")
        return manual

    def run(self, batch: Batch) -> None:
        """One batch under the per-case time limit; a timeout is an error for that case."""
        try:
            with _deadline(self.timeout):
                self._run(batch)
        except CaseTimeout:
            self._fail_all(batch, f"timed out after {self.timeout:g}s (--timeout)")

    def _run(self, batch: Batch) -> None:
        """Forward, autograd reference, manual gradients, then every comparison."""
        names = self.names
        inputs = (batch.inputs.clone(), batch.targets.clone())
        try:
            forward, _, reference = self._reference(self.model, batch, names)
            truth: list[torch.Tensor] | None = None
            if self.truth_model is not None:
                truth_batch = batch.to(_float64_device(self.device))
                truth = self._reference(self.truth_model, truth_batch, names)[2]
                self.batch_scale = max(float(t.abs().max()) for t in truth if t.numel())
        except Exception as exc:
            self._fail_all(batch, f"model '{self.spec.model.plugin}' forward/autograd: {_why(exc)}")
            return
        if not (torch.equal(batch.inputs, inputs[0]) and torch.equal(batch.targets, inputs[1])):
            self._fail_all(batch, f"model '{self.spec.model.plugin}' modified the batch in place")
            return
        before = _snapshot(self.model, forward)
        try:
            manual = self._manual(batch, forward)
        except Exception as exc:
            self._fail_all(batch, f"gradients '{self.spec.gradients.plugin}' raised {_why(exc)}")
            return
        touched = _changed(before, self.model, forward)
        if not (torch.equal(batch.inputs, inputs[0]) and torch.equal(batch.targets, inputs[1])):
            touched.append("the batch")
        if touched:
            _restore(before, self.model)
            self._fail_all(
                batch,
                f"gradients '{self.spec.gradients.plugin}' modified {', '.join(touched)} in place",
            )
            return
        self._unknown_names(batch, manual)
        checks = self._compare(
            "gradients",
            batch,
            [
                (name, manual.get(name), ref, truth[i] if truth else None)
                for i, (name, ref) in enumerate(zip(names, reference, strict=True))
            ],
        )
        if self.mutation is not None:
            self._mutate(batch, manual, names, reference, truth, checks)
        if "repeat" in self.groups:
            self._repeat(batch, forward, manual, names)
        if "finite_difference" in self.groups:
            self._finite_difference(batch)

    def _compare(
        self,
        kind: str,
        batch: Batch,
        wanted: Sequence[tuple[str, object, torch.Tensor, torch.Tensor | None]],
        tol: Tol | None = None,
    ) -> dict[str, Check]:
        """Check each (name, manual gradient, reference, truth) in one check_all call, then
        record and report them in the given order; unusable gradients become errors."""
        group = {s.tensor: s for s in self.groups[kind].tensors}
        problems: dict[str, str] = {}
        ready: dict[str, Comparison] = {}
        for name, got, reference, truth in wanted:
            problem = self._unusable(got, reference)
            if problem is not None:
                problems[name] = problem
            else:
                assert isinstance(got, torch.Tensor)
                ready[name] = Comparison(got, reference, tol or group[name].tol, truth)
        results = dict(
            zip(ready, check_all(list(ready.values()), self.batch_scale, self.scratch), strict=True)
        )
        for name, *_ in wanted:
            if name in problems:
                self._error(name, batch, problems[name], kind)
            else:
                group[name].add(results[name], batch.index, batch.seed)
                self._emit(kind, name, batch, check=results[name])
        return results

    def _unusable(self, got: object, reference: torch.Tensor) -> str | None:
        """Why a plugin's gradient cannot be compared with autograd's, or None."""
        if got is None:
            return f"gradients '{self.spec.gradients.plugin}' gave no gradient"
        if not isinstance(got, torch.Tensor):
            return f"gradient is a {type(got).__name__}, not a tensor"
        if got.requires_grad:
            return "gradient requires grad: return plain tensors"
        alias = self._aliased(got)
        if alias:
            return f"gradient shares memory with {alias}: return a new tensor"
        problem = mismatch(got, reference)
        return f"gradient has {problem}" if problem else None

    def _aliased(self, tensor: torch.Tensor) -> str | None:
        """The parameter whose memory this gradient shares (a view, or the parameter itself)."""
        return self.param_storage.get(tensor.untyped_storage().data_ptr())

    def _unknown_names(self, batch: Batch, manual: Mapping[str, torch.Tensor]) -> None:
        """A gradient for a tensor the model does not have is a mistake worth a test case."""
        group = self.groups["gradients"]
        for name in manual:
            if name in self.all_names:
                continue
            if name not in self.summaries:
                summary = TensorSummary(str(name), Tol("allclose"))
                self.summaries[name] = summary
                group.tensors.append(summary)
            plugin = self.spec.gradients.plugin
            message = f"gradients '{plugin}' returned '{name}', which the model does not have"
            self._error(str(name), batch, message)

    def _mutate(
        self,
        batch: Batch,
        manual: Mapping[str, torch.Tensor],
        names: list[str],
        reference: list[torch.Tensor],
        truth: list[torch.Tensor] | None,
        checks: dict[str, Check],
    ) -> None:
        """Check every not-yet-killed mutant of this batch's manual gradients."""
        assert self.mutation is not None
        index = {name: i for i, name in enumerate(names)}
        for name, i in index.items():
            base = truth[i] if truth else reference[i]
            scale = float(base.double().abs().max()) if base.numel() else 0.0
            error = checks[name].reference_error if name in checks else 0.0
            found = sensitivity(self.summaries[name].tol, scale, error, self.batch_scale)
            previous = self.mutation.sensitivity.get(name, float("inf"))
            self.mutation.sensitivity[name] = min(previous, found)
        for result in self.mutation.results:
            if result.killed:
                continue
            try:
                changed = result.mutant.apply(manual, batch)
            except (KeyError, RuntimeError, IndexError):
                changed = None
            if changed is None:
                continue
            result.applicable = True
            for name, mutated in changed.items():
                i = index[name]
                if torch.equal(mutated, manual[name]):
                    continue
                result.changed = True
                tol = self.summaries[name].tol
                try:
                    pair = Comparison(mutated, reference[i], tol, truth[i] if truth else None)
                    outcome = check_all([pair], self.batch_scale, self.scratch)[0]
                except GradientMismatch:
                    continue
                result.budget = max(result.budget, outcome.budget)
                if not outcome.passed and not result.killed:
                    result.killed = True
                    result.killed_by = f"{name} on batch {batch.index} (seed {batch.seed})"

    def _repeat(
        self, batch: Batch, forward: Forward, first: Mapping[str, torch.Tensor], names: list[str]
    ) -> None:
        """Run the manual gradient again on the same inputs; every run must match the first."""
        assert self.spec.checks.repeat is not None
        for _ in range(self.spec.checks.repeat.count - 1):
            try:
                again = self._manual(batch, forward)
            except Exception as exc:
                for name in names:
                    self._error(name, batch, f"repeat raised {_why(exc)}", "repeat")
                return
            wanted = [
                (name, again.get(name), reference, None)
                for name in names
                if isinstance(reference := first.get(name), torch.Tensor)
            ]
            self._compare("repeat", batch, wanted)

    def _finite_difference(self, batch: Batch) -> None:
        """Central differences of the float64 loss along random unit directions.

        Compares (L(p + eps v) - L(p - eps v)) / 2eps with <g, v> for the manual and the
        autograd gradient: a wrong custom backward inside the model fools the
        manual-vs-autograd comparison, but not this.
        """
        fd = self.spec.checks.finite_difference
        assert fd is not None and self.truth_model is not None
        if self.fd_batches_done >= fd.batches:
            return
        self.fd_batches_done += 1
        model = self.truth_model
        params = dict(model.named_parameters())
        try:
            batch64 = batch.to(_float64_device(self.device))
            forward, _, autograd = self._reference(model, batch64, list(params))
            with torch.no_grad():
                manual = self.gradient_fn(
                    model, batch64, forward.detached(), **self.spec.gradients.options
                )
            manual64 = [manual[n] for n in params]
        except Exception as exc:
            for name in ("manual", "autograd"):
                self._error(name, batch, f"finite differences: {_why(exc)}", "finite_difference")
            return
        generator = torch.Generator().manual_seed(batch.seed)
        numeric: list[float] = []
        loss_scale = 0.0
        projected: dict[str, list[float]] = {"manual": [], "autograd": []}
        originals = [p.detach().clone() for p in params.values()]
        with torch.no_grad():
            for _ in range(fd.directions):
                vs = [
                    torch.randn(p.shape, generator=generator, dtype=torch.float64)
                    for p in originals
                ]
                norm = math.sqrt(sum(float((v * v).sum()) for v in vs))
                vs = [(v / norm).to(originals[0].device) for v in vs]
                losses = []
                for sign in (1.0, -1.0):
                    for p, p0, v in zip(params.values(), originals, vs, strict=True):
                        p.copy_(p0 + sign * fd.eps * v)
                    _seed(batch.seed, batch64.inputs.device)
                    losses.append(float(model(batch64.inputs, batch64.targets).loss))
                numeric.append((losses[0] - losses[1]) / (2 * fd.eps))
                loss_scale = max(loss_scale, abs(losses[0]), abs(losses[1]))
                projected["manual"].append(_dot(manual64, vs))
                projected["autograd"].append(_dot(autograd, vs))
            for p, p0 in zip(params.values(), originals, strict=True):
                p.copy_(p0)
        truth = torch.tensor(numeric, dtype=torch.float64)
        # Rounding in L(p +- eps v) is amplified by 1/eps: allow 16 ulps of the loss for it.
        rounding = 16 * 2.0**-52 * max(loss_scale, 1.0) / fd.eps
        tol = Tol("allclose", fd.rtol, fd.atol + rounding)
        for name, values in projected.items():
            got = torch.tensor(values, dtype=torch.float64)
            self._compare("finite_difference", batch, [(name, got, truth, None)], tol=tol)


def _dot(gradients: list[torch.Tensor], direction: list[torch.Tensor]) -> float:
    """<g, v> over all parameters."""
    return sum(float((g * v).sum()) for g, v in zip(gradients, direction, strict=True))


class CaseTimeout(BaseException):  # not an Exception: plugin error handlers must not eat it
    """A case ran past --timeout."""


@contextmanager
def _deadline(seconds: float | None) -> Iterator[None]:
    """SIGALRM-based limit (Unix, main thread); a no-op elsewhere or when unset."""
    usable = (
        seconds
        and hasattr(signal, "setitimer")
        and threading.current_thread() is threading.main_thread()
    )
    if not usable:
        yield
        return

    def expire(signum: int, frame: object) -> None:
        raise CaseTimeout()

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, float(seconds or 0))
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


Snapshot = dict[str, torch.Tensor]


def _snapshot(model: torch.nn.Module, forward: Forward) -> Snapshot:
    """Copies of what a manual gradient must only read: parameters and forward tensors."""
    state = {f"parameter {n}": p.detach().clone() for n, p in model.named_parameters()}
    state |= {f"intermediate {n}": t.detach().clone() for n, t in forward.intermediates.items()}
    return state


def _changed(before: Snapshot, model: torch.nn.Module, forward: Forward) -> list[str]:
    now: dict[str, torch.Tensor] = {f"parameter {n}": p for n, p in model.named_parameters()}
    now |= {f"intermediate {n}": t for n, t in forward.intermediates.items()}
    return [k for k, v in before.items() if not _same_bits(v, now[k].detach())]


def _restore(before: Snapshot, model: torch.nn.Module) -> None:
    with torch.no_grad():
        for name, param in model.named_parameters():
            param.copy_(before[f"parameter {name}"])


def _same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Bitwise equality; torch.equal first, since it is fast and NaN is the only value it
    calls unequal to itself."""
    if a.shape != b.shape:
        return False
    if torch.equal(a, b):
        return True
    return torch.equal(a.reshape(-1).view(torch.uint8), b.reshape(-1).view(torch.uint8))


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


def _seed(seed: int, device: torch.device) -> None:
    """Seed what a forward on `device` may draw from (dropout), so every pass sees the same.

    torch.manual_seed would also queue seeds for every accelerator backend, at ~2 ms a call.
    """
    torch.default_generator.manual_seed(seed)
    if device.type == "cuda":
        torch.cuda.manual_seed(seed)
