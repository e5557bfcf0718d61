"""Exit codes, the errors that end a run with one line, and that line."""

from __future__ import annotations

import enum
import os
import traceback


class ExitCode(enum.IntEnum):
    """What every gradaudit command exits with (README's table)."""

    OK = 0
    FAILED = 1  # a check failed or errored, or a planned check did not run
    USAGE = 2  # bad spec or usage, one `file:line: message` line, before any work
    INTERNAL = 3  # gradaudit's own error
    NOTHING_COMPARED = 5  # every case skipped (pytest's "no tests ran")
    SIGINT = 130
    SIGTERM = 143


class GradauditError(Exception):
    """An error the user can act on; the CLI prints it on one line, no traceback."""

    exit_code = ExitCode.USAGE


class SpecError(GradauditError):
    """The spec file is missing, unreadable, not YAML, or does not validate."""


class PluginError(GradauditError):
    """A plugin cannot be found, loaded or set up."""


class DataError(GradauditError):
    """The data plugin could not provide the dataset (missing file, bad checksum, offline)."""


class OutputError(GradauditError):
    """A report path cannot be written."""


class UsageError(GradauditError):
    """Command-line arguments that cannot work (bad --shard, a required device is absent)."""


class DrawTimeout(GradauditError):
    """Drawing the next sample ran past --timeout: the data cannot go on (exit 1)."""

    exit_code = ExitCode.FAILED


class CaseTimeout(BaseException):  # not an Exception: plugin error handlers must not eat it
    """A case ran past --timeout."""


class Interrupted(BaseException):
    """Raised from the SIGTERM handler (a cancelled CI job), like KeyboardInterrupt for SIGINT."""


# gradaudit's own signals and time limits pass through plugin guards; everything else a
# plugin raises (SystemExit, pytest's Skipped, GeneratorExit ...) is an error of its case.
OURS = (CaseTimeout, Interrupted, KeyboardInterrupt)


def stop_on_sigterm() -> None:
    """SIGTERM raises Interrupted (like Ctrl-C's KeyboardInterrupt), so that a cancelled job
    ends through the code that writes its reports."""
    import signal

    def stop(signum: int, frame: object) -> None:
        raise Interrupted()

    signal.signal(signal.SIGTERM, stop)


def one_line(exc: BaseException, ours: tuple[str, ...] = ()) -> str:
    """An exception as one line: `Type: first line of its message`, and where it was raised
    in plugin code (the innermost frame under none of the folders `ours`). With
    GRADAUDIT_DEBUG=1 the whole traceback goes to stderr as well."""
    lines = str(exc).strip().splitlines()
    text = f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__
    if os.environ.get("GRADAUDIT_DEBUG"):
        traceback.print_exception(exc)
    if ours:
        frames = [
            f for f in traceback.extract_tb(exc.__traceback__) if not f.filename.startswith(ours)
        ]
        if frames:
            text += f" (at {frames[-1].filename}:{frames[-1].lineno} in {frames[-1].name})"
    return text


def why(exc: BaseException) -> str:
    """`one_line` naming the innermost frame of plugin code: outside gradaudit and torch."""
    return one_line(exc, own_dirs())


def own_dirs() -> tuple[str, ...]:
    import sys
    from pathlib import Path

    dirs = [str(Path(__file__).resolve().parent), "<"]
    torch = sys.modules.get("torch")
    where = getattr(torch, "__file__", None)
    if where:
        dirs.append(str(Path(where).resolve().parent))
    return tuple(dirs)


# The names older modules use; ExitCode is the one source.
EXIT_OK = ExitCode.OK
EXIT_CHECK_FAILED = ExitCode.FAILED
EXIT_USAGE = ExitCode.USAGE
EXIT_INTERNAL = ExitCode.INTERNAL


def error_lines(exc: BaseException) -> list[str]:
    """What the command line prints for a gradaudit error: `gradaudit: error: ...`, a line
    per line of its message."""
    return [f"gradaudit: error: {line}" for line in str(exc).splitlines() or [type(exc).__name__]]
