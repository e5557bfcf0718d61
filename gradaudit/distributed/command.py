"""`python -m gradaudit.distributed SPEC`: a distributed audit, the usual reports and exit codes.

This is what `gradaudit run` does for a spec with a `distributed:` section; it stands
alone until the core dispatches to `DistributedRun` itself (docs/distributed.md).
"""

from __future__ import annotations

import argparse
import os
import platform
import signal
import sys
import traceback
import warnings

from gradaudit.errors import EXIT_CHECK_FAILED, EXIT_INTERNAL, EXIT_OK, GradauditError, UsageError
from gradaudit.spec import LoadedSpec, load_spec
from gradaudit.write import check_writable, refuse_overwriting

EXIT_SIGINT, EXIT_SIGTERM = 130, 143


class _Terminated(BaseException):
    pass


def _terminated(signum: int, frame: object) -> None:
    raise _Terminated()


def run_spec(
    spec_path: str,
    junit_xml: str | None = None,
    json_path: str | None = None,
    timeout: float | None = None,
    devices: list[str] | None = None,
    dtypes: list[str] | None = None,
    verbosity: int = 0,
) -> int:
    """Check everything (exit 2) before any rank starts; reports are written in every case."""
    loaded = load_spec(spec_path)
    refuse_overwriting({"--junit-xml": junit_xml, "--json": json_path}, [spec_path])
    for path in (junit_xml, json_path):
        if path:
            check_writable(path)
    spec = loaded.spec
    for option, chosen, allowed in (
        ("--device", devices, spec.devices),
        ("--dtype", dtypes, spec.dtypes),
    ):
        unknown = [c for c in chosen or [] if c not in allowed]
        if unknown:
            raise UsageError(f"{option} {unknown[0]}: not in the spec's list {list(allowed)}")
    import torch

    import gradaudit
    from gradaudit.distributed.launch import DistributedRun
    from gradaudit.report.base import Reporter, RunInfo
    from gradaudit.report.console import ConsoleReporter
    from gradaudit.results import CaseResult, RunSummary

    reporters: list[Reporter] = [ConsoleReporter(verbosity, False, False)]
    if junit_xml:
        from gradaudit.report.junit import JUnitReporter

        reporters.append(JUnitReporter(junit_xml))
    if json_path:
        from gradaudit.report.jsonfile import JsonReporter

        reporters.append(JsonReporter(json_path))

    def on_case(result: CaseResult) -> None:
        for reporter in reporters:
            reporter.case(result)

    keep = [d for d in loaded.spec.devices if not devices or d in devices]
    wanted: list[str] = [d for d in loaded.spec.dtypes if not dtypes or d in dtypes]
    run = DistributedRun(loaded, keep, wanted, timeout, on_case)
    versions = {
        "gradaudit_version": gradaudit.__version__,
        "torch_version": torch.__version__,
        "python_version": platform.python_version(),
    }
    info = RunInfo(loaded, run.tensor_names, versions)
    for reporter in reporters:
        reporter.start(info)
    summary = RunSummary()
    code: int | None = None
    previous = signal.signal(signal.SIGTERM, _terminated)
    try:
        run.run()
    except (KeyboardInterrupt, _Terminated) as exc:
        sigterm = isinstance(exc, _Terminated)
        summary.stopped = f"interrupted by {'SIGTERM' if sigterm else 'SIGINT (Ctrl-C)'}"
        code = EXIT_SIGTERM if sigterm else EXIT_SIGINT
    finally:
        signal.signal(signal.SIGTERM, previous)
        for group in run.groups:
            summary.add(group)
            for reporter in reporters:
                reporter.group(group)
        for reporter in reporters:
            reporter.finish(summary)
    if code is not None:
        return code
    return EXIT_OK if summary.ok else EXIT_CHECK_FAILED


def main(argv: list[str] | None = None) -> None:
    warnings.filterwarnings("ignore", message="Failed to initialize NumPy")
    parser = argparse.ArgumentParser(prog="python -m gradaudit.distributed", description=__doc__)
    parser.add_argument("spec")
    parser.add_argument("--junit-xml", metavar="PATH")
    parser.add_argument("--json", dest="json_path", metavar="PATH")
    parser.add_argument("--timeout", type=float, metavar="SECONDS")
    parser.add_argument("--device", dest="devices", action="append")
    parser.add_argument("--dtype", dest="dtypes", action="append")
    parser.add_argument("-q", "--quiet", action="store_true")
    args = parser.parse_args(argv)
    try:
        code = run_spec(
            args.spec, args.junit_xml, args.json_path, args.timeout, args.devices, args.dtypes,
            -1 if args.quiet else 0,
        )  # fmt: skip
    except GradauditError as exc:
        for line in str(exc).splitlines() or [type(exc).__name__]:
            print(f"gradaudit: error: {line}", file=sys.stderr)
        code = exc.exit_code
    except Exception as exc:
        if os.environ.get("GRADAUDIT_DEBUG"):
            traceback.print_exc()
        detail = " ".join(str(exc).split())
        print(f"gradaudit: internal error: {type(exc).__name__}: {detail}", file=sys.stderr)
        code = EXIT_INTERNAL
    sys.exit(code)


def plan_spec(loaded: LoadedSpec, devices: list[str], dtypes: list[str], as_json: bool) -> int:
    """The per-rank cases of a distributed spec, checked as before a run; no rank starts."""
    import json

    import click

    from gradaudit.distributed import DistributedRun

    groups = DistributedRun(loaded, devices, dtypes, None).groups
    rows = [
        (g.device, g.dtype, g.check, s.tensor, s.skipped or s.tol.describe())
        for g in groups
        for s in g.tensors
    ]
    if as_json:
        keys = ("device", "dtype", "check", "tensor", "tolerance")
        click.echo(json.dumps([dict(zip(keys, r, strict=True)) for r in rows], indent=2))
        return 0
    click.echo(f"plan: {loaded.spec.name} ({loaded.path}): {len(groups)} cases, {len(rows)} checks")
    for device, dtype, check, tensor, tol in rows:
        click.echo(f"{device:<8} {dtype:<9} {check:<18} {tensor:<20} {tol}")
    return 0
