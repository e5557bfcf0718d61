"""Errors that end a run with a one-line message and a documented exit code."""

from __future__ import annotations

EXIT_OK = 0
EXIT_CHECK_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERNAL = 3


class GradauditError(Exception):
    """An error the user can act on; the CLI prints it on one line, no traceback."""

    exit_code = EXIT_USAGE


class SpecError(GradauditError):
    """The spec file is missing, unreadable, not YAML, or does not validate."""


class PluginError(GradauditError):
    """A plugin cannot be found, loaded or set up."""


class DataError(GradauditError):
    """The data plugin could not provide the dataset (missing file, bad checksum, offline)."""


class OutputError(GradauditError):
    """A report path cannot be written."""


class CaseTimeout(BaseException):  # not an Exception: plugin error handlers must not eat it
    """A case ran past --timeout."""


class Interrupted(BaseException):
    """Raised from the SIGTERM handler (a cancelled CI job), like KeyboardInterrupt for SIGINT."""


class UsageError(GradauditError):
    """Command-line arguments that cannot work (bad --shard, a required device is absent)."""
