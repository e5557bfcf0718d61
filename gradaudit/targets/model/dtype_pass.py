"""One (device, dtype) pass of a model audit: a batch's gradient comparison and every extra
check on it.

The engine's loop (gradaudit.run.loop) drives the passes of a device batch by batch; a pass
queues its events per batch, and the loop sends them. Where another pass has computed this
pass's float64 truth already, bit for bit, the pass takes it (see `lender`, and sharing.py).
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from functools import partial
from typing import Any

import torch

from gradaudit.checks import CheckKind, CheckRun
from gradaudit.compare import (
    Check,
    Comparison,
    Scratch,
    TensorSummary,
    batch_scale_of,
    check_all,
)
from gradaudit.compare.syncs import Reads, largest_entry
from gradaudit.errors import OURS, why
from gradaudit.mutate import Mutant, MutationReport, MutationRun
from gradaudit.numpy_adapter import computed_problem
from gradaudit.plan import PlannedCase
from gradaudit.results import CaseResult, GroupResult
from gradaudit.run.events import CaseDone
from gradaudit.targets.model.guards import plain_tensors
from gradaudit.targets.model.inplace import InPlaceGuard, Kept
from gradaudit.targets.model.load import Audit
from gradaudit.targets.model.parts import (
    Lent,
    Step,
    autograd_reference,
    buffers,
    device_name,
    float64_device,
    note_nonzero,
    postprocess_all,
    unusable,
)
from gradaudit.tolerance import Tol
from gradaudit.types import Batch, Forward

Event = CaseResult | CaseDone | MutationReport


class DtypePass:
    """The batches of one (device, dtype): the gradient comparison and every extra check."""

    def __init__(
        self,
        audit: Audit,
        device: str,
        dtype: str,
        planned: list[PlannedCase],
        checks: Mapping[str, CheckKind],
        mutants: list[Mutant] | None,
    ) -> None:
        self.audit = audit
        self.spec = audit.loaded.spec
        self.gradient_fn = audit.gradient_fn
        self.device, self.dtype = device, dtype
        self.torch_dtype: torch.dtype = getattr(torch, dtype)
        cases = [(case, GroupResult.planned(case)) for case in planned]
        self.cases = cases
        self.groups = {case.check: group for case, group in cases}
        self.summaries = {s.tensor: s for s in self.groups.get("gradients", _EMPTY).tensors}
        self._by_name: dict[tuple[str, str], TensorSummary] = {}
        self.names = [t.name for c, _ in cases if c.check == "gradients" for t in c.tensors]
        self.all_names = set(audit.all_names)
        # The largest float64-truth gradient entry of the batch: 0.0 without a truth; None
        # until the gradients' comparison has measured it (see compare), a 0-d tensor (read
        # with the comparison's results) when some of the truths are not compared.
        self.scale: float | torch.Tensor | None = 0.0
        self.truths: list[torch.Tensor] = []
        self.scratch = Scratch()  # comparison buffers, reused batch after batch
        self.guard_copies: Kept = {}  # the in-place guard's, likewise
        # a batch's results reach summaries and events together (see `drain`)
        self.events: list[Event] = []
        self.pending: list[Callable[[], None]] = []
        self.nonzero: set[str] = set()  # tensors whose autograd gradient was nonzero once
        self.computed: tuple[Mapping[str, str], Mapping[str, str]] = ({}, {})
        self.truth_model: torch.nn.Module | None = None
        self.seconds = 0.0
        # Sharing (set by the runner): the float64 pass whose reference is this pass's truth
        # when `borrow` (checked before each batch); `lends`: keep this pass's reference.
        self.lender: DtypePass | None = None
        self.borrow = False
        self.lends = False
        self.lent: Lent | None = None
        self.setup_error = self._setup()
        kinds = (
            []
            if self.setup_error
            else [(checks[c.check], c) for c, _ in cases if c.check in checks]
        )
        started = [kind.start(case, self) for kind, case in kinds]
        self.extra: list[CheckRun] = [run for run in started if run is not None]
        self.mutation = MutationRun(device, dtype, mutants, self) if mutants is not None else None
        for group in self.groups.values():
            group.device_name = device_name(device)

    def _setup(self) -> str | None:
        try:
            self.model = copy.deepcopy(self.audit.master).to(self.device, self.torch_dtype)
            plain = plain_tensors(self.model, self.torch_dtype)
            if plain:
                return (
                    f"the model holds {', '.join(plain)} as plain tensor attribute(s), which "
                    f"are never cast: this {self.dtype} case would compute in their dtype; "
                    "register them with nn.Parameter (or register_buffer)"
                )
            self.param_storage = {
                p.untyped_storage().data_ptr(): f"parameter {n}"
                for n, p in self.model.named_parameters()
            }
            needs_truth = any(s.tol.needs_truth for s in self.summaries.values())
            if needs_truth or len(self.groups) > 1:
                # Built from the tested dtype's weights, so only arithmetic differs.
                self.truth_model = copy.deepcopy(self.model).to(
                    float64_device(self.device), torch.float64
                )
        except Exception as exc:
            return f"moving the model to {self.device}/{self.dtype} failed: {why(exc)}"
        return None

    def step(self, batch: Batch) -> None:
        """Run one batch (its events wait in `events` until `drain`)."""
        start = time.perf_counter()
        try:
            if self.setup_error is not None:
                self.fail_all(batch, self.setup_error)
            else:
                self._gradients(batch.to(self.device, self.torch_dtype))
        finally:
            self.seconds += time.perf_counter() - start

    def timed_out(self, batch: Batch, message: str) -> None:
        """The batch ran past the time limit: an error for every tensor of every case."""
        self.fail_all(batch, message)

    def drain(self) -> Iterator[Event]:
        """The batch's events, each with its summary update: a run cut short reports the
        same batches in its summaries and its event stream."""
        for fold, event in zip(self.pending, self.events, strict=True):
            fold()  # the summary counts the result just as the event goes out
            yield event
        self.pending.clear()
        self.events.clear()
        for group in self.groups.values():
            group.seconds = self.seconds

    def finish(self) -> Iterator[Event]:
        """After the last batch: the mutants' report, then each case's end (its time, its
        device, the tensors whose reference was never nonzero)."""
        gradients = self.groups.get("gradients", _EMPTY)
        zero = tuple(
            s.tensor
            for s in gradients.tensors
            if s.batches and s.tensor in self.all_names - self.nonzero
        )
        if self.mutation is not None:
            yield self.mutation.report
        for case, _ in self.cases:
            found = zero if case.check == "gradients" else ()
            yield CaseDone(case.key, self.seconds, device_name(self.device), found)

    # -- what check kinds call -------------------------------------------------------------

    def emit(
        self, kind: str, name: str, batch: Batch, fold: Callable[[], None], **fields: Any
    ) -> None:
        """Queue a tensor's result with the update of its summary (`fold`)."""
        summary = self._summary(kind, name)
        self.events.append(
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
        self.pending.append(fold)

    def _summary(self, check: str, name: str) -> TensorSummary:
        """A group's summary of a tensor (summaries are only ever appended: kept by name)."""
        found = self._by_name.get((check, name))
        if found is None:
            found = next(s for s in self.groups[check].tensors if s.tensor == name)
            self._by_name[(check, name)] = found
        return found

    @property
    def batch_scale(self) -> float:
        """The batch's scale as a number (mutation testing's sensitivity needs it)."""
        if self.scale is None:
            return 0.0
        if not isinstance(self.scale, float):
            self.scale = float(self.scale)
        return self.scale

    def error(self, name: str, batch: Batch, message: str, check: str = "gradients") -> None:
        full = f"batch {batch.index} (seed {batch.seed}): {message}"
        self.emit(
            check, name, batch, partial(self._summary(check, name).add_error, full), error=full
        )

    def fail_all(self, batch: Batch, message: str) -> None:
        for check, group in self.groups.items():
            for summary in group.tensors:
                self.error(summary.tensor, batch, message, check)

    def reference(
        self, model: torch.nn.Module, batch: Batch, names: Sequence[str]
    ) -> tuple[Forward, list[torch.Tensor]]:
        """Forward and autograd's gradient of the loss w.r.t. each named tensor."""
        return autograd_reference(model, batch, names, self.device)

    def manual(
        self, model: torch.nn.Module, batch: Batch, forward: Forward
    ) -> Mapping[str, torch.Tensor]:
        """The plugin's gradients; anything it raises, SystemExit included, is its error."""
        with torch.no_grad():
            grads = self.gradient_fn(
                model, batch, forward.detached(), **self.spec.gradients.options
            )
        if not isinstance(grads, Mapping):
            raise TypeError(f"returned {type(grads).__name__}, not a mapping name -> tensor")
        return grads

    def compare(
        self,
        check: str,
        batch: Batch,
        wanted: Sequence[tuple[str, object, torch.Tensor, torch.Tensor | None]],
        tol: Tol | None = None,
        reads: Reads | None = None,
    ) -> dict[str, Check]:
        """Check each (name, manual gradient, reference, truth) in one check_all call, then
        record and report them in the given order; unusable gradients become errors.
        `reads` may hold other values to read with the comparison's results."""
        problems: dict[str, str] = {}
        ready: dict[str, Comparison] = {}
        summaries = {name: self._summary(check, name) for name, *_ in wanted}
        said, computed_in = self.computed
        for name, got, reference, truth in wanted:
            problem = unusable(
                got,
                reference,
                self.spec.gradients.plugin,
                self.param_storage,
                said.get(name) or computed_problem(computed_in.get(name), self.dtype),
            )
            if problem is not None:
                problems[name] = problem
            else:
                assert isinstance(got, torch.Tensor)
                ready[name] = Comparison(got, reference, tol or summaries[name].tol, truth)
        scale = self.scale
        if scale is None and set(ready) != set(self.names):
            scale = largest_entry(self.truths)  # the truths of tensors not compared count too
        # each tensor's worst budget so far: a passing batch under it need not be located
        beat = [None if (w := summaries[n].worst) is None else w.budget for n in ready]
        found = check_all(list(ready.values()), scale, self.scratch, beat, reads)
        results = dict(zip(ready, found, strict=True))
        if self.scale is None:
            self.scale = scale if scale is not None else batch_scale_of(found)
        for name, *_ in wanted:
            if name in problems:
                self.error(name, batch, problems[name], check)
            else:
                fold = partial(summaries[name].add, results[name], batch.index, batch.seed)
                self.emit(check, name, batch, fold, check=results[name])
        return results

    # -- the gradient comparison -----------------------------------------------------------

    def _gradients(self, batch: Batch) -> None:
        """Forward, autograd reference, manual gradients, then every comparison."""
        names, plugin = self.names, self.spec.gradients.plugin
        guard = InPlaceGuard(batch, self.guard_copies)
        try:
            forward, reference = self.reference(self.model, batch, names)
            # Hashed while the forward's tensors are still in the CPU's cache (the truth
            # below touches none of them).
            guard.manual_starts(self.model, forward)
            if self.lends:
                self.lent = Lent(batch.index, list(reference), buffers(self.model))
            truth: list[torch.Tensor] | None = None
            if self.truth_model is not None:
                truth = self._borrowed(batch.index)
                if truth is None:
                    truth_batch = batch.to(float64_device(self.device), torch.float64)
                    truth = self.reference(self.truth_model, truth_batch, names)[1]
            saturated = postprocess_all(self.spec.postprocess, names, reference, truth)
            if truth is not None:
                self.scale, self.truths = None, truth
        except OURS:
            raise
        except BaseException as exc:
            self.fail_all(batch, f"model '{self.spec.model.plugin}' forward/autograd: {why(exc)}")
            return
        reads = Reads()  # the guard's answers ride on the comparison's read
        guard.forward_done(batch, reads)
        try:
            grads = self.manual(self.model, batch, forward)
        except OURS:
            raise
        except BaseException as exc:
            guard.queue(self.model, forward, batch, reads, ran=False)
            self.fail_all(batch, self._modified(guard) or f"gradients '{plugin}' raised {why(exc)}")
            return
        mark = len(self.events)
        guard.queue(self.model, forward, batch, reads, ran=True)
        self._unknown_names(batch, grads)
        for name, problem in saturated.items():
            self.error(name, batch, problem)
        self.computed = (getattr(grads, "problems", {}), getattr(grads, "computed_in", {}))
        wanted = [
            (name, grads.get(name), ref, truth[i] if truth else None)
            for i, (name, ref) in enumerate(zip(names, reference, strict=True))
            if name not in saturated
        ]
        checks = self.compare("gradients", batch, wanted, reads=reads)
        changed = self._modified(guard)
        if changed is not None:
            del self.events[mark:], self.pending[mark:]  # the batch is an error, not compared
            self.fail_all(batch, changed)
            return
        note_nonzero(self.nonzero, wanted, checks)
        step = Step(batch, forward, grads, names, reference, truth, checks)
        if self.mutation is not None:
            self.mutation.batch(step)
        for extra in self.extra:
            extra.batch(step)

    def _modified(self, guard: InPlaceGuard) -> str | None:
        """Why the batch fails when the forward or the manual gradient changed what they
        must only read (the model's parameters and buffers are put back), else None."""
        found = guard.verdict(self.model)
        if found is None:
            return None
        culprit, what = found
        if culprit == "forward":
            return f"model '{self.spec.model.plugin}' modified the batch in place"
        return f"gradients '{self.spec.gradients.plugin}' modified {', '.join(what)} in place"

    def _borrowed(self, index: int) -> list[torch.Tensor] | None:
        """The lender's reference as this batch's truth, when it is provably the same (the
        runner checked the weights; the inputs cast exactly): the truth model then takes the
        buffers that its own forward would have left."""
        lent = self.lender.lent if self.lender is not None and self.borrow else None
        if lent is None or lent.index != index or self.truth_model is None:
            return None
        if lent.buffers:
            with torch.no_grad():
                for name, buffer in self.truth_model.named_buffers():
                    buffer.copy_(lent.buffers[name])
        return list(lent.reference)

    def _unknown_names(self, batch: Batch, grads: Mapping[str, torch.Tensor]) -> None:
        """A gradient for a tensor the model does not have is a mistake worth a test case."""
        group = self.groups["gradients"]
        for name in grads:
            if name in self.all_names:
                continue
            if name not in self.summaries:
                summary = TensorSummary(str(name), Tol("allclose"))
                self.summaries[name] = summary
                group.tensors.append(summary)
            plugin = self.spec.gradients.plugin
            message = f"gradients '{plugin}' returned '{name}', which the model does not have"
            self.error(str(name), batch, message)


_EMPTY = GroupResult("", "", [])
