"""`gradaudit` commands forked from a command-line zygote (gradaudit.run.zygote started with
`preload=PRELOAD`; each request names ENTRY to call). The suite starts the console script
about 500 times, and each start spent half a second of CPU importing the CLI (pydantic and
the spec models, click, the engine's modules) on a machine where the suite is CPU-bound.
The forked child runs `gradaudit.cli.main` with the test's arguments, working directory,
environment and pipes, as the console script would; the tests of the console script itself
(signals, start-up imports) start it directly."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import struct
import subprocess
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

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
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    out_read, out_write = os.pipe()
    err_read, err_write = os.pipe()
    devnull = os.open(os.devnull, os.O_RDWR)
    header = {"cwd": str(cwd), "env": dict(env), "parent": os.getpid(), "argv": list(argv)}
    header["entry"] = ENTRY
    data = json.dumps(header).encode()
    try:
        conn.connect(path)
        fds = [devnull, out_write, err_write, devnull]
        socket.send_fds(conn, [struct.pack("!Q", len(data)) + data], fds)
    except OSError:
        conn.close()
        for fd in (out_read, err_read):
            os.close(fd)
        return None
    finally:
        for fd in (out_write, err_write, devnull):
            os.close(fd)
    chunks: dict[int, list[bytes]] = {out_read: [], err_read: []}

    def drain(fd: int) -> None:
        with os.fdopen(fd, "rb") as stream:
            chunks[fd].append(stream.read())

    readers = [threading.Thread(target=drain, args=(fd,), daemon=True) for fd in chunks]
    for reader in readers:
        reader.start()
    code, pid = _answer(conn, time.monotonic() + timeout)
    for reader in readers:
        reader.join(timeout=10)
    if code is None:
        if pid is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGKILL)
        raise subprocess.TimeoutExpired(list(argv), timeout)
    out, err = (b"".join(chunks[fd]).decode("utf-8", "replace") for fd in (out_read, err_read))
    return subprocess.CompletedProcess(list(argv), code, out, err)


def _answer(conn: socket.socket, deadline: float) -> tuple[int | None, int | None]:
    """(the exit code, the child's pid) from the zygote's `pid N` and `exit CODE` lines;
    the code is None when the deadline passed first."""
    buffer, pid = b"", None
    with conn:
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return None, pid
            conn.settimeout(left)
            try:
                chunk = conn.recv(64)
            except TimeoutError:
                return None, pid
            if not chunk:
                return -int(signal.SIGKILL), pid  # the zygote died, and its children with it
            buffer += chunk
            *lines, buffer = buffer.split(b"\n")
            for line in lines:
                if line.startswith(b"pid "):
                    pid = int(line[4:])
                elif line.startswith(b"exit "):
                    return int(line[5:]), pid
