"""Reports for `gradaudit mutate`: the console summary and JUnit (a testcase per mutant)."""

from __future__ import annotations

import click

from gradaudit.mutate import Gate, MutantResult, MutationReport
from gradaudit.report.elements import document, testcase, testsuite
from gradaudit.results import RunSummary
from gradaudit.spec import LoadedSpec
from gradaudit.tolerance import Tol
from gradaudit.write import write_atomic

RESOLUTION_ULPS = 4.0  # a relative change within this many roundings is the dtype's noise


def resolution(tol: Tol) -> float:
    """The smallest relative change this dtype can tell from its own rounding under this
    rule: a few ULPs, and never below the floor the rule needs for summation-order noise."""
    return max(RESOLUTION_ULPS, tol.resolution_ulps) * tol.eps


def survivor_line(report: MutationReport, result: MutantResult) -> str:
    """Why a mutant survived, and whether a tighter tolerance could catch it at all: a change
    within the dtype's resolution cannot be told from rounding ("nothing to tighten"); one
    above it got through a tolerance looser than the dtype needs."""
    tensor = result.mutant.tensor.split(",")[0]
    tol = report.tolerances[tensor]
    found = report.sensitivity.get(tensor, float("nan"))
    change = result.mutant.relative
    floor = resolution(tol)
    below = change <= floor if change is not None else found <= 2 * floor
    if below and tol.eps:
        size = f"a {change:.2g} relative change" if change is not None else "its change"
        advice = (
            f"{size} is below the dtype's resolution ({floor:.2g}, eps {tol.eps:.2g}): "
            "nothing to tighten"
        )
    else:
        advice = (
            f"the tolerance is looser than it needs to be (the dtype resolves {floor:.2g}): "
            f"tighten it for {tensor}"
        )
    bias = report.bias_sensitivity.get(tensor)
    systematic = f"; its systematic-error check catches biases above {bias:.2g}" if bias else ""
    return (
        f"{report.device}/{report.dtype} {result.mutant.name} survived "
        f"(largest budget used {100 * result.budget:.3g}%): {tol.describe()} catches only "
        f"relative errors above {found:.2g} on {tensor}{systematic}; {advice}"
    )


def _cell(report: MutationReport, tensor: str) -> str:
    if tensor in report.zero:
        return "zero"
    cell = f"{report.sensitivity.get(tensor, float('nan')):.2g}"
    bias = report.bias_sensitivity.get(tensor)
    return f"{cell} / {bias:.2g}" if bias is not None else cell


def console_lines(
    reports: list[MutationReport], tensors: list[str], color: bool = False
) -> list[str]:
    lines = []
    for report in reports:
        counted = report.counted()
        killed = sum(r.killed for r in counted)
        other = {
            status: sum(r.status == status for r in report.results)
            for status in ("equivalent", "not-applicable")
        }
        zero = sum(r.zero for r in report.results)
        because = f", {zero} of a gradient zero by construction" if zero else ""
        lines.append(
            f"{report.device}/{report.dtype}: mutation score {100 * report.score():.1f}% "
            f"({killed}/{len(counted)} killed; {other['equivalent']} equivalent, "
            f"{other['not-applicable']} not applicable{because})"
        )
    survivors = [(r, s) for r in reports for s in r.survivors]
    if survivors:
        lines.append(f"{len(survivors)} surviving mutants:")
        warning = click.style("WARNING", fg="yellow") if color else "WARNING"
        lines += [f"  {warning} {survivor_line(r, s)}" for r, s in survivors]
    columns = [f"{r.device}/{r.dtype}" for r in reports]
    width = max(len(t) for t in tensors) + 2
    lines.append(
        "sensitivity: the smallest relative error (1+d)*g each tolerance catches "
        "(elementwise / systematic, over the batches run; zero: zero by construction)"
    )
    lines.append("tensor".ljust(width) + "".join(c.ljust(20) for c in columns))
    for tensor in tensors:
        lines.append(tensor.ljust(width) + "".join(_cell(r, tensor).ljust(20) for r in reports))
    return lines


def write_junit(path: str, loaded: LoadedSpec, reports: list[MutationReport], gate: Gate) -> None:
    """A suite per (device, dtype), a testcase per mutant: killed passes, a survivor fails
    (--fail-on-survivor) or is skipped with a warning, the rest are skipped with the reason;
    under --min-score, one more testcase, the score, fails below it."""
    name = loaded.spec.name
    suites = []
    for report in reports:
        cases = []
        cls = f"gradaudit.{name}.{report.device}.{report.dtype}.mutants"
        for result in report.results:
            failure = skipped = None
            stdout = None
            if result.status == "survived":
                line = survivor_line(report, result)
                if gate.fail_on_survivor:
                    failure = (line, line)
                else:
                    skipped = (f"warning: {line}", line)
            elif result.status != "killed":
                why = "not-applicable: zero by construction" if result.zero else result.status
                skipped = (why, why)
            else:
                stdout = f"killed by {result.killed_by}"
            cases.append(
                testcase(
                    result.mutant.name, cls, 0.0, failure=failure, skipped=skipped, stdout=stdout
                )
            )
        if gate.min_score is not None:
            short = gate.short(report)
            score = f"mutation score >= {gate.min_score:g}%"
            cases.append(testcase(score, cls, 0.0, failure=(short, short) if short else None))
        properties = {
            "mutation_score": f"{report.score():.4f}",
            **_spec_facts(loaded),
            "device": report.device,
            "dtype": report.dtype,
        }
        suites.append(
            testsuite(f"{name}[{report.device},{report.dtype},mutants]", cases, properties)
        )
    write_atomic(path, document(suites))


def finish(
    reports: list[MutationReport],
    tensors: list[str],
    loaded: LoadedSpec,
    junit_xml: str | None,
    gate: Gate,
    color: bool,
    seconds: float,
) -> list[str]:
    """The scored mutants' console lines, with a line per device/dtype under --min-score
    and the survivors' count last; the JUnit report written (model and op mutate end
    alike)."""
    lines = console_lines(reports, tensors, color)
    for report in reports:
        short = gate.short(report)
        if short is not None:
            lines.append(f"{report.device}/{report.dtype}: {short}")
    if junit_xml:
        write_junit(junit_xml, loaded, reports, gate)
    survivors = sum(len(r.survivors) for r in reports)
    return [*lines, f"{survivors} survivors in {seconds:.1f}s"]


def not_green(summary: RunSummary) -> str | None:
    """Why mutation testing cannot score this audit (it must be green and compare something
    first), or None."""
    if not summary.ok:
        return f"the audit itself is not green ({summary.failed} failed, {summary.errors} errors)"
    if summary.passed == 0:
        return "no tensor was compared (every case skipped)"
    return None


def write_not_green(path: str, loaded: LoadedSpec, reason: str) -> None:
    """The report of a `mutate` that could not score mutants (the audit itself is red): one
    error case saying why, so that CI neither reads an old report nor finds none."""
    name = loaded.spec.name
    case = testcase("audit", f"gradaudit.{name}.mutants", 0.0, error=(reason, reason))
    suite = testsuite(f"{name}[mutants]", [case], _spec_facts(loaded))
    write_atomic(path, document([suite]))


def _spec_facts(loaded: LoadedSpec) -> dict[str, str]:
    return {"spec": str(loaded.path), "spec_name": loaded.spec.name, "spec_sha256": loaded.sha256}
