"""`check_op`: an op audit from a test suite, no spec file.

    check_op(MyNorm.apply, reference_norm, inputs={"x": (8, 16), "w": (16,)})

raises AssertionError naming the worst element, both values, the variant and its seed.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from gradaudit.api import Result
from gradaudit.compare import TensorSummary
from gradaudit.results import GroupResult
from gradaudit.spec import DTYPES, Tolerance
from gradaudit.spec.op import InputDecl, OpChecks, OpSection, Variants
from gradaudit.targets.op.call import OpAudit
from gradaudit.targets.op.errors import OpSpecError
from gradaudit.targets.op.opinfo import derive_with_samples
from gradaudit.targets.op.resolve import resolve, varied_arguments
from gradaudit.targets.op.variants import derive, select

OpRef = str | Callable[..., Any] | tuple[Callable[..., Any], Callable[..., Any]]
InputArg = Sequence[int | str] | Mapping[str, Any] | InputDecl


@dataclass
class OpResult(Result):
    """A check_op call's plan and results (gradaudit.api.Result), with the seed that
    reproduces them; `ok` when each tensor of each case passed."""

    seed: int = 0
    opinfo: str | None = None  # the OpInfo entry whose samples ran (variants.opinfo)

    def report(self) -> str:
        """Why it failed, on a few lines; empty when it passed."""
        if self.ok:
            return ""
        if not self.failures:
            return "check_op compared nothing (every case was skipped)"
        checked = sum(len(g.tensors) for g in self.groups)
        group, worst = max(self.failures, key=lambda f: (f[1].status == "fail", f[1].budget))
        lines = [
            f"check_op: {len(self.failures)} of {checked} tensor checks failed; worst: "
            f"{_where(group, worst)}",
            *(f"  {line}" for line in _explain(worst)),
            f"  reproduce: check_op(..., devices=[{group.device!r}], dtypes=[{group.dtype!r}], "
            f"variants={self._selecting(_variant(group))}, seed={self.seed})",
        ]
        others = [_where(g, s) for g, s in self.failures if s is not worst][:8]
        if others:
            more = len(self.failures) - 1 - len(others)
            lines.append("  also: " + "; ".join(others) + (f"; +{more} more" if more else ""))
        return "\n".join(lines)

    def _selecting(self, name: str) -> str:
        """check_op's `variants=` that runs this variant alone: its name, or for an OpInfo
        sample the entry too (a list of names derives no OpInfo samples)."""
        if self.opinfo and name.startswith("opinfo"):
            return repr({"opinfo": self.opinfo, "only": [name]})
        return repr([name])

    def overview(self) -> str:
        """One screen, green or red: the counts, each dtype's worst budget (the largest share
        of its allowance any element used, and where), the variants that ran; then why it
        failed, if it did."""
        totals = self.summary.totals()
        head = self.plan.header if self.plan else "check_op"
        counts = ", ".join(f"{n} {k}" for k, n in totals.items())
        lines = [f"check_op: {head}: {'passed' if self.ok else 'FAILED'} ({counts})"]
        worst: dict[str, tuple[float, str]] = {}
        for group in self.groups:
            for t in group.tensors:
                budget = t.budget if t.batches else None
                if budget is not None and budget >= worst.get(group.dtype, (-1.0, ""))[0]:
                    worst[group.dtype] = (budget, f"{t.tensor}, {_variant(group)}")
        for dtype, (budget, where) in worst.items():
            lines.append(f"  {dtype:<9} worst budget {100 * budget:.3g}% ({where})")
        planned = {c.check.removeprefix("variant:") for c in self.plan.cases} if self.plan else ()
        names = [n for n in (self.plan.sample_names if self.plan else ()) if n in planned]
        if names:
            lines.append(f"  {len(names)} variants: {', '.join(names)}")
        if not self.ok:
            lines.append(self.report())
        return "\n".join(lines)


def _variant(group: GroupResult) -> str:
    return group.check.removeprefix("variant:")


def _where(group: GroupResult, s: TensorSummary) -> str:
    kind = group.check
    where = f"variant {kind[8:]}" if kind.startswith("variant:") else kind.replace("_", " ")
    seed = f", seed {s.worst_seed}" if s.worst_seed is not None else ""
    return f"{s.tensor} on {group.device} {group.dtype}, {where}{seed}"


def _explain(s: TensorSummary) -> list[str]:
    from gradaudit.report.describe import verdict_line

    lines = [verdict_line(s)]
    w = s.worst
    if s.status == "fail" and w is not None:
        against = "float64 truth" if s.tol.needs_truth else "reference"
        index = ", ".join(str(i) for i in w.worst_index)
        lines.append(
            f"worst element [{index}]: candidate {w.manual_value:.9g}, {against} "
            f"{w.reference_value:.9g} (allowed difference {w.allowed:.3g})"
        )
    return lines


def check_op(
    candidate: OpRef,
    reference: OpRef | None = None,
    *,
    inputs: Mapping[str, InputArg],
    dtypes: Sequence[str] = ("float64", "float32"),
    devices: Sequence[str] = ("cpu",),
    variants: bool | Sequence[str] | Mapping[str, Any] | Variants = True,
    tolerance: Tolerance | Mapping[str, Any] | str | None = None,
    seed: int = 0,
    args: Mapping[str, Any] | None = None,
    init: Mapping[str, Any] | None = None,
    dims: Mapping[str, int] | None = None,
    checks: OpChecks | Mapping[str, Any] | None = None,
    raise_on_failure: bool = True,
    isolate: bool = False,
    verbose: bool = False,
) -> OpResult:
    """Audit `candidate` against `reference` (None: float64 finite differences).

    inputs: name -> shape (a float input requiring grad), or the fields of a spec's input
    (`{"shape": [8], "dtype": "int64", "high": 10}`). variants: True (derived), False (the
    shapes as given), a list of variant names, or a spec's `variants` mapping. isolate: run
    the cases in forked children (cpu only), so that a kernel that kills its process
    (an out-of-bounds store) is an error of the case it ran in, and the rest still runs.
    verbose: print `OpResult.overview()` (one screen, on a pass too) before returning.
    """
    decls = {name: _input(name, value) for name, value in inputs.items()}
    options = _variant_options(variants)
    tol = _model(
        Tolerance, {"mode": tolerance} if isinstance(tolerance, str) else tolerance, "tolerance"
    )
    op_checks = _model(OpChecks, checks, "checks")
    bad = [d for d in dtypes if d not in DTYPES]
    if bad:
        raise OpSpecError(f"check_op: dtypes: {bad[0]!r} is not one of {', '.join(DTYPES)}")
    section = OpSection(candidate="check_op", inputs=decls, dims=dict(dims or {}))
    for loc, message in section.problems():
        raise OpSpecError(f"check_op: {'.'.join(str(p) for p in loc[1:])}: {message}")
    cand = resolve(candidate, "check_op", "candidate")
    ref = None if reference is None else resolve(reference, "check_op", "reference")
    varied = varied_arguments(cand, ref, dict(args or {}), decls)
    derived = derive_with_samples(decls, dict(dims or {}), options, seed, varied, cand)
    if isinstance(variants, Sequence) and not isinstance(variants, str):
        everything = Variants(extreme=True)
        derived = select(derive(decls, dict(dims or {}), everything, seed, varied), list(variants))
    audit = OpAudit(
        name=cand.label,
        candidate=cand,
        reference=ref,
        inputs=decls,
        variants=derived,
        args=dict(args or {}),
        init=dict(init or {}),
        tolerance=tol,
        checks=op_checks,
    )
    result = _run(audit, devices, dtypes, tol, seed, isolate)
    result.opinfo = options.opinfo if options is not None else None
    if verbose:
        print(result.overview())
    if raise_on_failure and not result.ok:
        raise AssertionError(result.report())
    return result


def _run(
    audit: OpAudit,
    devices: Sequence[str],
    dtypes: Sequence[str],
    tol: Tolerance,
    seed: int,
    isolate: bool = False,
) -> OpResult:
    """The audit through the engine's plan, loop and fold, in this process (or, isolated,
    in supervised forked children: gradaudit.run.isolate)."""
    from gradaudit.commands import verdict
    from gradaudit.plan import Selection, make_plan
    from gradaudit.run.events import Event
    from gradaudit.run.fold import Fold
    from gradaudit.run.loop import run_plan
    from gradaudit.run.supervisor import Outcome
    from gradaudit.targets import Context
    from gradaudit.targets.op.target import OpTarget

    target = OpTarget(audit, dtypes)
    head = target.head()
    selection = Selection(tuple(devices), tuple(dtypes))
    plan = make_plan(head, target.skeletons(devices, dtypes), tol, selection)
    if isolate:
        return _isolated(target, plan, audit, devices, seed)
    fold = Fold(plan)

    def emit(events: list[Event]) -> None:
        for event in events:
            fold.apply(event)

    run_plan(target, plan, emit, Context())
    fold.close("the run ended before it", finished=True)
    outcome = Outcome(plan=plan, fold=fold)
    return OpResult(plan, verdict(outcome), seed=seed)


def _isolated(
    target: Any, plan: Any, audit: OpAudit, devices: Sequence[str], seed: int
) -> OpResult:
    from gradaudit.commands import verdict
    from gradaudit.errors import GradauditError
    from gradaudit.run.isolate import run_isolated
    from gradaudit.targets import Context

    if set(devices) != {"cpu"}:
        raise OpSpecError(
            "check_op: isolate=True runs cpu devices only (a forked child "
            "cannot use CUDA): audit cuda with `gradaudit run SPEC`"
        )
    outcome = run_isolated(target, plan, Context(), f"check_op {audit.name}")
    if outcome.signal == "SIGINT":
        raise KeyboardInterrupt
    error = outcome.failure("check_op: ")
    if error is not None:
        raise error
    if outcome.fold is None:
        raise GradauditError(f"check_op: {outcome.stopped}")
    return OpResult(plan, verdict(outcome), seed=seed)


def _input(name: str, value: InputArg) -> InputDecl:
    if isinstance(value, InputDecl):
        return value
    data = dict(value) if isinstance(value, Mapping) else {"shape": value}
    data["shape"] = list(data.get("shape", []))
    decl: InputDecl = _model(InputDecl, data, f"inputs.{name}")
    return decl


def _variant_options(variants: Any) -> Variants | None:
    if variants is True:
        return Variants()
    if variants is False or (isinstance(variants, Sequence) and not isinstance(variants, str)):
        return None
    options: Variants = _model(Variants, variants, "variants")
    return options


def _model(cls: Any, value: Any, where: str) -> Any:
    if value is None:
        return cls()
    if isinstance(value, cls):
        return value
    try:
        return cls.model_validate(dict(value))
    except (ValidationError, TypeError, ValueError) as exc:
        if isinstance(exc, ValidationError):
            err = exc.errors()[0]
            loc = ".".join(str(p) for p in err["loc"])
            text = f"{loc}: {err['msg']}" if loc else err["msg"]
        else:
            text = str(exc)
        raise OpSpecError(f"check_op: {where}: {text.replace('Value error, ', '')}") from None
