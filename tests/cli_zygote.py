"""`gradaudit` commands forked from a command-line zygote (gradaudit.run.zygote started with
`preload=PRELOAD`; each request names ENTRY to call). The suite starts the console script
about 500 times, and each start spent half a second of CPU importing the CLI (pydantic and
the spec models, click, the engine's modules) on a machine where the suite is CPU-bound.
The forked child runs `gradaudit.cli.main` with the test's arguments, working directory,
environment and pipes, as the console script would; the tests of the console script itself
(signals, start-up imports) start it directly."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path

from gradaudit.run import zygote

VARIABLE = "GRADAUDIT_TEST_CLI_ZYGOTE"  # the socket of this test process's CLI zygote
# What the command-line zygote imports before it forks (no torch), and what a child calls.
PRELOAD = (
    "gradaudit.cli",
    "gradaudit.spec_set",
    "gradaudit.commands",
    "gradaudit.plugins",
    "gradaudit.report.console",
    "gradaudit.report.junit",
    "gradaudit.report.jsonfile",
)
ENTRY = "gradaudit.cli:main"  # the console script's


def run(
    argv: Sequence[str], cwd: Path, env: Mapping[str, str], timeout: float
) -> subprocess.CompletedProcess[str] | None:
    """`argv` (the console script's path first) run by a forked child; None when there is
    no zygote to reach (the caller starts the console script)."""
    path = os.environ.get(VARIABLE)
    if not path or not os.path.exists(path):
        return None
    out_read, out_write = os.pipe()
    err_read, err_write = os.pipe()
    devnull = os.open(os.devnull, os.O_RDWR)
    header = {"cwd": str(cwd), "env": dict(env), "parent": os.getpid()}
    try:
        asked = zygote.request(
            path,
            header | {"entry": ENTRY, "argv": list(argv)},
            [devnull, out_write, err_write, devnull],
        )
    finally:
        for fd in (out_write, err_write, devnull):
            os.close(fd)
    if asked is None:
        for fd in (out_read, err_read):
            os.close(fd)
        return None
    child = zygote.Forked(*asked, None)
    chunks: dict[int, list[bytes]] = {out_read: [], err_read: []}

    def drain(fd: int) -> None:
        with os.fdopen(fd, "rb") as stream:
            chunks[fd].append(stream.read())

    readers = [threading.Thread(target=drain, args=(fd,), daemon=True) for fd in chunks]
    for reader in readers:
        reader.start()
    try:
        code = child.wait(timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(child.pid, signal.SIGKILL)
        raise subprocess.TimeoutExpired(list(argv), timeout) from None
    for reader in readers:
        reader.join(timeout=10)
    out, err = (b"".join(chunks[fd]).decode("utf-8", "replace") for fd in (out_read, err_read))
    return subprocess.CompletedProcess(list(argv), code, out, err)
