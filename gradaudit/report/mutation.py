"""Reports for `gradaudit mutate`: the console summary and JUnit (a testcase per mutant)."""

from __future__ import annotations

import click

from gradaudit.mutate import MutantResult, MutationReport
from gradaudit.report.junit import document, testcase, testsuite
from gradaudit.spec import LoadedSpec
from gradaudit.write import write_atomic


def survivor_line(report: MutationReport, result: MutantResult) -> str:
    """Why a mutant survived, and whether a tighter tolerance could catch it at all."""
    tensor = result.mutant.tensor.split(",")[0]
    tol = report.tolerances[tensor]
    found = report.sensitivity.get(tensor, float("nan"))
    delta = result.mutant.delta
    # A relative error within a few rounding steps of the dtype cannot be told from noise.
    if delta is not None and tol.eps and delta <= 4 * tol.eps:
        advice = f"below the dtype's resolution (eps {tol.eps:.2g}): nothing to tighten"
    else:
        advice = f"the tolerance is looser than it needs to be: tighten it for {tensor}"
    return (
        f"{report.device}/{report.dtype} {result.mutant.name} survived "
        f"(largest budget used {100 * result.budget:.3g}%): {tol.describe()} catches only "
        f"relative errors above {found:.2g} on {tensor}; {advice}"
    )


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
        lines.append(
            f"{report.device}/{report.dtype}: mutation score {100 * report.score():.1f}% "
            f"({killed}/{len(counted)} killed; {other['equivalent']} equivalent, "
            f"{other['not-applicable']} not applicable)"
        )
    survivors = [(r, s) for r in reports for s in r.survivors]
    if survivors:
        lines.append(f"{len(survivors)} surviving mutants:")
        warning = click.style("WARNING", fg="yellow") if color else "WARNING"
        lines += [f"  {warning} {survivor_line(r, s)}" for r, s in survivors]
    columns = [f"{r.device}/{r.dtype}" for r in reports]
    width = max(len(t) for t in tensors) + 2
    lines.append("sensitivity: the smallest relative error (1+d)*g each tolerance catches")
    lines.append("tensor".ljust(width) + "".join(c.ljust(16) for c in columns))
    for tensor in tensors:
        cells = [f"{r.sensitivity.get(tensor, float('nan')):.2g}".ljust(16) for r in reports]
        lines.append(tensor.ljust(width) + "".join(cells))
    return lines


def write_junit(
    path: str, loaded: LoadedSpec, reports: list[MutationReport], fail_on_survivor: bool
) -> None:
    """A suite per (device, dtype), a testcase per mutant: killed passes, a survivor fails
    (--fail-on-survivor) or is skipped with a warning, the rest are skipped with the reason."""
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
                if fail_on_survivor:
                    failure = (line, line)
                else:
                    skipped = (f"warning: {line}", line)
            elif result.status != "killed":
                skipped = (result.status, result.status)
            else:
                stdout = f"killed by {result.killed_by}"
            cases.append(
                testcase(
                    result.mutant.name, cls, 0.0, failure=failure, skipped=skipped, stdout=stdout
                )
            )
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


def write_not_green(path: str, loaded: LoadedSpec, reason: str) -> None:
    """The report of a `mutate` that could not score mutants (the audit itself is red): one
    error case saying why, so that CI neither reads an old report nor finds none."""
    name = loaded.spec.name
    case = testcase("audit", f"gradaudit.{name}.mutants", 0.0, error=(reason, reason))
    suite = testsuite(f"{name}[mutants]", [case], _spec_facts(loaded))
    write_atomic(path, document([suite]))


def _spec_facts(loaded: LoadedSpec) -> dict[str, str]:
    return {"spec": str(loaded.path), "spec_name": loaded.spec.name, "spec_sha256": loaded.sha256}
