"""An op audit as a target: a candidate against a reference over input variants (the
samples), every (device, dtype) a pass; a case per variant, and the invariance checks on
the base variant."""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from gradaudit.errors import why
from gradaudit.plan import Plan, PlannedCase, Skeleton
from gradaudit.results import CaseResult
from gradaudit.run.events import CaseDone, Event
from gradaudit.spec.common import LoadedSpec
from gradaudit.targets import Context, Linked, Pass
from gradaudit.targets.devices import device_unavailable
from gradaudit.targets.op.call import OpAudit, build_modules, reference_outputs
from gradaudit.targets.op.engine import run_case
from gradaudit.targets.op.invariance import invariance_group
from gradaudit.targets.op.load import audit_of, metadata
from gradaudit.targets.op.shard import TensorNames, case_checks
from gradaudit.targets.op.share import Shared
from gradaudit.targets.op.variants import LONG_DTYPES, LONG_OUTPUT, Variant, draw_inputs
from gradaudit.tolerance import Tol

if TYPE_CHECKING:
    import torch

FINITE = Tol("finite")  # the `zeros` variant: finite where the reference is, nothing more


@dataclass(frozen=True)
class OpSample:
    """One input variant, numbered as the plan numbers them."""

    index: int
    variant: Variant

    @property
    def seed(self) -> int:
        return self.variant.seed


class OpTarget:
    kind = "op"

    def __init__(
        self,
        audit: OpAudit,
        dtypes: Sequence[str],
        where: tuple[str, str, str] = ("check_op", "check_op", ""),
        facts: dict[str, str] | None = None,
        header: str = "",
    ) -> None:
        """`where`: (spec name, spec path, its sha256); `dtypes`: every dtype the audit may
        run, whose narrowest the inputs are rounded to (so one float64 truth serves all)."""
        self.audit = audit
        self.dtypes = list(dtypes)
        self.where, self.facts, self.header = where, facts or {}, header
        self.shared: Shared | None = None
        self.drawn: dict[str, Any] = {}
        self.masters: dict[str, tuple[Any, Any]] = {}
        self.contract: dict[str, str | None] = {}  # variant -> why the reference rejects it
        base = self.audit.variants[0]
        self._draw(base)
        self.names = TensorNames(self.audit, self.drawn[base.name], *self.masters[base.name])

    @classmethod
    def from_spec(cls, loaded: LoadedSpec) -> OpTarget:
        spec = loaded.spec
        where = (spec.name, str(loaded.path), loaded.sha256)
        audit = audit_of(loaded)
        facts = metadata(loaded, audit.variants)
        return cls(audit, spec.dtypes, where, facts, f"op {spec.op.candidate}")

    def _draw(self, variant: Variant) -> None:
        """The variant's inputs (CPU, float64, rounded to the run's narrowest dtype) and its
        modules, once, for every pass."""
        if variant.name in self.drawn:
            return
        if self.shared is None:
            self.shared = Shared(self.audit, self.dtypes)
        self.drawn[variant.name] = self.shared.inputs(
            variant, draw_inputs(self.audit.inputs, variant)
        )
        self.masters[variant.name] = build_modules(self.audit, variant)

    def head(self) -> Plan:
        audit = self.audit
        base = audit.variants[0]
        inputs = tuple(f"{n} {'x'.join(map(str, s)) or 'scalar'}" for n, s in base.shapes.items())
        name, path, sha = self.where
        header = self.header or f"op {audit.name}"
        return Plan(
            kind=self.kind,
            spec_name=name,
            spec_path=path,
            spec_sha256=sha,
            cases=(),
            tensors=tuple(self.names.of(f"variant:{base.name}")),
            sample_names=tuple(v.name for v in audit.variants),
            samples=tuple(range(len(audit.variants))),
            inputs=inputs,
            facts=self.facts,
            header=f"{header}, {len(audit.variants)} variants of {', '.join(inputs)}",
        )

    def skeletons(self, devices: Sequence[str], dtypes: Sequence[str]) -> list[Skeleton]:
        found = []
        checks = case_checks(self.audit)[len(self.audit.variants) :]
        truth = self.audit.reference is not None  # else finite differences are the truth
        long_dtype = next((d for d in LONG_DTYPES if d in dtypes), None)
        for device in devices:
            absent = device_unavailable(device)
            for dtype in dtypes:
                for i, v in enumerate(self.audit.variants):
                    if v.long and dtype != long_dtype:
                        continue  # not planned: a long reduction is about half types
                    check = f"variant:{v.name}"
                    names = tuple(self.names.of(check))
                    skip = absent or (self.rejected(v) if i else None)
                    found.append(
                        Skeleton(
                            device, dtype, check, names, (i,), skip, dtype,
                            tol=FINITE if v.zeros else None,
                            rerun=("--variant", v.name), truth=truth,
                        )
                    )  # fmt: skip
                for kind in checks:
                    names = tuple(self.names.of(kind))
                    found.append(Skeleton(device, dtype, kind, names, (0,), absent, dtype))
        return found

    def rejected(self, variant: Variant) -> str | None:
        """Why a derived variant is outside the op's contract, or None: the trusted side
        (the reference) raises on it, in float64 on the CPU. Such a variant is not
        applicable, a skip saying how to leave it out, never the candidate's error."""
        if self.audit.reference is None:
            return None
        if variant.name not in self.contract:
            self.contract[variant.name] = self._probe(variant)
        return self.contract[variant.name]

    def _probe(self, variant: Variant) -> str | None:
        import torch

        name = variant.name
        try:
            self._draw(variant)
            drawn, masters = self.drawn[name], self.masters[name]
            if variant.long:  # shapes first, without memory: a long dim may not be reduced
                size = _largest_output(self.audit, variant, drawn, masters)
                if size > LONG_OUTPUT:
                    return (
                        f"not applicable: variant {name} gives an output of {size} elements "
                        f"(its long dim is not reduced); leave it out with variants: "
                        f"{{exclude: [{name}]}}"
                    )
            first = reference_outputs(
                self.audit, variant, drawn, masters, "cpu", torch.float64, variant.zeros
            )
            again = None
            if variant.args:  # a reference with randomness (`p=0.5`) differs run to run
                again = reference_outputs(self.audit, variant, drawn, masters, "cpu", torch.float64)
        except Exception as exc:
            return (
                f"not applicable: the reference rejects variant {name} ({why(exc)}); "
                f"leave it out with variants: {{exclude: [{name}]}}"
            )
        if (variant.args or variant.zeros) and not all(
            t.isfinite().all() for t in first if t.is_floating_point()
        ):
            return (
                f"not applicable: the reference's results are not finite at variant {name}; "
                f"leave it out with variants: {{exclude: [{name}]}}"
            )
        if again is not None and not all(map(_same, first, again)):
            return (
                f"not applicable: the reference is not deterministic at variant {name}; "
                f"leave it out with variants: {{exclude: [{name}]}}"
            )
        return None

    def samples(self, wanted: tuple[int, ...] | None) -> Iterator[OpSample]:
        for i, variant in enumerate(self.audit.variants):
            if wanted is None or i in wanted:
                self._draw(variant)
                yield OpSample(i, variant)

    def open(self, device: str, dtype: str, cases: list[PlannedCase], context: Context) -> Pass:
        return OpPass(self, device, dtype, cases, context)

    def link(self, passes: Sequence[Pass]) -> Linked:
        """float64 first: its reference run is the truth the other dtypes take."""
        order = sorted(passes, key=lambda p: getattr(p, "dtype", "") != "float64")
        return Linked(order)


class OpPass:
    """The cases of one (device, dtype): a variant's case when its sample comes, and the
    invariance checks with the base variant."""

    def __init__(
        self, target: OpTarget, device: str, dtype: str, cases: list[PlannedCase], context: Context
    ) -> None:
        self.target, self.device, self.dtype = target, device, dtype
        self.cases = {c.check: c for c in cases}
        self.events: list[Event] = []
        self.beat: dict[str, float] = {}  # each tensor's worst budget so far (run_case)
        self.mutation: Any = None
        if context.mutants is not None:
            from gradaudit.targets.op.mutate import OpMutation

            self.mutation = OpMutation()

    def step(self, sample: OpSample) -> None:
        target, variant = self.target, sample.variant
        case = self.cases.get(f"variant:{variant.name}")
        if case is not None:
            group = run_case(
                target.audit,
                (self.device, self.dtype, sample.index, variant),
                target.drawn,
                target.masters,
                target.names,
                self.events.append,
                _shared(target),
                _tols(case),
                self.mutation,
                self.beat,
            )
            self._done(case, group.seconds)
        if sample.index != 0:
            return
        for kind in case_checks(target.audit)[len(target.audit.variants) :]:
            check = self.cases.get(kind)
            if check is None:
                continue
            start = time.perf_counter()
            invariance_group(
                kind,
                target.audit,
                self.device,
                self.dtype,
                variant,
                target.drawn[variant.name],
                target.masters[variant.name],
                self.events.append,
                _tols(check),
            )
            self._done(check, time.perf_counter() - start)

    def _done(self, case: PlannedCase, seconds: float) -> None:
        self.events.append(CaseDone(case.key, seconds, self.device))

    def timed_out(self, sample: OpSample, message: str) -> None:
        """Every case of the sample that has not ended gets the error on every tensor."""
        ended = {e.key for e in self.events if isinstance(e, CaseDone)}
        for case in self.cases.values():
            mine = case.samples is not None and sample.index in case.samples
            if not mine or case.key in ended:
                continue
            for t in case.tensors:
                error = f"variant {sample.variant.name} (seed {sample.seed}): {message}"
                self.events.append(
                    CaseResult(
                        self.device, case.dtype, t.name, sample.index, sample.seed,
                        error=error, tol=t.tol, kind=case.check,
                    )
                )  # fmt: skip
            self._done(case, 0.0)

    def drain(self) -> Iterator[Event]:
        events, self.events = self.events, []
        yield from events

    def finish(self) -> Iterator[Event]:
        if self.mutation is not None:
            yield from self.mutation.reports()


def _shared(target: OpTarget) -> Shared:
    assert target.shared is not None
    return target.shared


def _tols(case: PlannedCase) -> Any:
    """The plan's tolerance of each tensor of a case."""
    tols = {t.name: t.tol for t in case.tensors}
    fallback = next(iter(tols.values()), Tol("allclose"))
    return lambda name: tols.get(name, fallback)


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Two runs' outputs agree, NaN where NaN."""
    import torch

    nan = a.isnan()
    return a.shape == b.shape and torch.equal(nan, b.isnan()) and torch.equal(a[~nan], b[~nan])


def _largest_output(
    audit: OpAudit, variant: Variant, drawn: dict[str, torch.Tensor], masters: tuple[Any, Any]
) -> int:
    """The reference's largest output at this variant, run on the meta device (shapes
    only); 0 where it cannot run there (the CPU probe then decides)."""
    import torch

    try:
        outputs = reference_outputs(audit, variant, drawn, masters, "meta", torch.float64)
    except Exception:
        return 0
    return max((t.numel() for t in outputs), default=0)
