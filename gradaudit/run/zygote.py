"""A zygote: one process that has imported torch and the executor once, and forks an
executor for each run that asks (the test suite's speed-up; set-up is not free: a run
spends most of a second importing torch before its first sample).

Used only when `GRADAUDIT_ZYGOTE` names the socket of a running zygote (`start` starts
one); otherwise, or when it cannot be reached, the supervisor starts a fresh Python as
usual. A forked executor is what a started one is: its own session, the supervisor's
working directory, environment, `sys.path` (PYTHONPATH) and standard streams, the same
events pipe; it dies when its supervisor's connection closes (the supervisor ended, even by
SIGKILL) and when the zygote dies. Its exit status travels back on the connection, a
signal as a negative code, as `subprocess.Popen` gives it.

Protocol, one connection per executor: the supervisor sends an 8-byte length and a JSON
header (cwd, env, supervisor pid) with four file descriptors (stdin, stdout, stderr,
events); the zygote answers `pid N` when it has forked, then `exit CODE` when it ended.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import IO

from gradaudit.errors import ExitCode

VARIABLE = "GRADAUDIT_ZYGOTE"
# What every executor imports; torch._dynamo: torch imports it on the first call of some ops
# (1.4 s here). Plugins are never preloaded: a run imports them as they are on disk.
PRELOAD = (
    "torch",
    "torch._dynamo",
    "gradaudit.run.executor",
    "gradaudit.run.loop",
    "gradaudit.plugins",
    "gradaudit.targets.model.target",
    "gradaudit.targets.op.target",
    "gradaudit.targets.sharded.target",
)


class Forked:
    """An executor forked by the zygote, with the members of `subprocess.Popen` the
    supervisor uses."""

    def __init__(self, conn: socket.socket, pid: int, stdin: IO[bytes] | None) -> None:
        self.conn = conn
        self.pid = pid
        self.stdin: IO[bytes] | None = stdin
        self.returncode: int | None = None
        self._buffer = b""

    def poll(self) -> int | None:
        if self.returncode is None and select.select([self.conn], [], [], 0)[0]:
            self._read()
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.returncode is None:
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                raise subprocess.TimeoutExpired("executor", timeout or 0.0)
            if select.select([self.conn], [], [], left)[0]:
                self._read()
        return self.returncode

    def _read(self) -> None:
        chunk = self.conn.recv(4096)
        self._buffer += chunk
        for line in self._buffer.split(b"\n"):
            if line.startswith(b"exit "):
                self.returncode = int(line[5:])
        if not chunk and self.returncode is None:  # the zygote died: so did its children
            self.returncode = -int(signal.SIGKILL)
        if self.returncode is not None:
            self.conn.close()


def fork(events: int, parent: int) -> Forked | None:
    """An executor forked by the zygote `GRADAUDIT_ZYGOTE` names, writing its events to the
    descriptor `events`; None when there is none to reach (the caller starts a process)."""
    path = os.environ.get(VARIABLE)
    if not path:
        return None
    read, write = os.pipe()
    try:
        header = {"cwd": os.getcwd(), "env": dict(os.environ), "parent": parent}
        asked = request(path, header, [read, 1, 2, events])
    finally:
        os.close(read)
    if asked is None:
        os.close(write)
        return None
    return Forked(*asked, os.fdopen(write, "wb"))


def request(
    path: str, header: dict[str, object], fds: list[int]
) -> tuple[socket.socket, int] | None:
    """Ask the zygote listening on `path` for a child with these four descriptors (its
    stdin, stdout, stderr and events) and `header` (cwd, env, parent; `entry` and `argv`
    for a call instead of a job): its connection and pid, or None when there is no zygote
    to reach."""
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        conn.connect(path)
        data = json.dumps(header).encode()
        socket.send_fds(conn, [struct.pack("!Q", len(data)) + data], fds)
        answer = b""
        while not answer.endswith(b"\n"):
            chunk = conn.recv(64)
            if not chunk:
                raise OSError("the zygote closed the connection")
            answer += chunk
        return conn, int(answer.split()[1])
    except (OSError, ValueError, IndexError):
        conn.close()
        return None


# -- the zygote's side -------------------------------------------------------------------


def start(path: Path, preload: Sequence[str] = ()) -> subprocess.Popen[bytes]:
    """Start a zygote listening on `path` (it dies with this process); it accepts runs once
    its imports are done, and until then `fork` finds none. `preload`: the modules to import
    instead of an executor's (PRELOAD), for a zygote whose requests name an `entry` to call
    (a test suite's `gradaudit` commands: tests/cli_zygote.py)."""
    code = f"import sys; sys.path.pop(0); from {__name__} import serve; serve()"
    modules = [",".join(preload)] if preload else []
    return subprocess.Popen(
        [sys.executable, "-c", code, *modules, str(path), str(os.getpid())],
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )


def serve() -> None:
    import importlib

    from gradaudit.run.executor import die_with_parent

    path, parent = sys.argv[-2], int(sys.argv[-1])
    die_with_parent(parent)
    if len(sys.argv) > 3:
        for name in sys.argv[-3].split(","):
            importlib.import_module(name)
    else:
        _preload()
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    partial = f"{path}.{os.getpid()}"
    listener.bind(partial)
    listener.listen(64)
    os.rename(partial, path)  # reachable only now, ready
    children: dict[int, socket.socket] = {}  # pid -> its supervisor's connection
    conns: dict[socket.socket, int] = {}
    while True:
        ready = select.select([listener, *conns], [], [], 0.05)[0]
        for sock in ready:
            if sock is listener:
                conn = listener.accept()[0]
                pid = _fork(conn, listener, list(conns))
                if pid is not None:
                    children[pid], conns[conn] = conn, pid
            elif not sock.recv(64):  # the supervisor is gone: so is its executor
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(conns[sock], signal.SIGKILL)
        while children:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
            conn = children.pop(pid)
            del conns[conn]
            with contextlib.suppress(OSError):
                conn.sendall(f"exit {os.waitstatus_to_exitcode(status)}\n".encode())
            conn.close()


def _preload() -> None:
    """PRELOAD, without importing triton: torch._dynamo imports it when it is installed,
    and triton fixes at import whether kernels are interpreted, which only the executor
    decides, per job (TRITON_INTERPRET for cpu-only runs). torch is then told to look for
    triton again; what torch._dynamo left out for triton concerns torch.compile only."""
    import importlib

    blocked = "triton" not in sys.modules
    if blocked:
        sys.modules["triton"] = None  # type: ignore[assignment]
    try:
        for name in PRELOAD:
            importlib.import_module(name)
    finally:
        if blocked:
            del sys.modules["triton"]
    from torch.utils import _triton

    for cached in vars(_triton).values():
        if callable(getattr(cached, "cache_clear", None)):
            cached.cache_clear()


def _fork(conn: socket.socket, listener: socket.socket, others: list[socket.socket]) -> int | None:
    try:
        message, fds, _, _ = socket.recv_fds(conn, 1 << 16, 4)
        if len(fds) != 4 or len(message) < 8:
            raise OSError("a request without its descriptors")
        size = struct.unpack("!Q", message[:8])[0]
        data = message[8:]
        while len(data) < size:
            chunk = conn.recv(size - len(data))
            if not chunk:
                raise OSError("the request ended early")
            data += chunk
        header = json.loads(data)
    except (OSError, ValueError):
        conn.close()
        return None
    ready, set_up = os.pipe()
    pid = os.fork()
    if pid == 0:
        listener.close()
        for other in (conn, *others):
            other.close()
        os.close(ready)
        _child(fds, header, set_up)
    os.close(set_up)
    os.read(ready, 1)  # its own session first: a killpg of its pid must reach it
    os.close(ready)
    for fd in fds:
        os.close(fd)
    conn.sendall(f"pid {pid}\n".encode())
    return pid


def _child(fds: list[int], header: dict[str, object], set_up: int) -> None:
    """In the forked executor: become what `python -c EXECUTOR` would be, then run."""
    import importlib
    import tempfile

    from gradaudit.run import executor

    try:
        os.setsid()
        os.close(set_up)
        executor.die_with_parent(os.getppid())  # the zygote
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGCHLD, signal.SIGPIPE):
            signal.signal(sig, signal.SIG_DFL)
        stdin, stdout, stderr, events = fds
        for fd, target in ((stdin, 0), (stdout, 1), (stderr, 2)):
            os.dup2(fd, target)
            os.close(fd)
        sys.stdin = open(0, encoding="utf-8", closefd=False)  # noqa: SIM115
        env = header["env"]
        assert isinstance(env, dict)
        mine = os.environ.get("PYTHONPATH", "")
        theirs = str(env.get("PYTHONPATH", ""))
        base = [p for p in sys.path if p not in mine.split(os.pathsep)]
        sys.path[:] = [p for p in theirs.split(os.pathsep) if p] + base
        os.environ.clear()
        os.environ.update({str(k): str(v) for k, v in env.items()})
        os.chdir(str(header["cwd"]))
        tempfile.tempdir = None
        importlib.invalidate_caches()
        entry, argv = header.get("entry"), header.get("argv")
        if isinstance(entry, str) and isinstance(argv, list):
            os.close(events)
            _call(entry, [str(a) for a in argv])
        executor.serve_job(events)
    finally:
        os._exit(int(ExitCode.INTERNAL))


def _call(entry: str, argv: list[str]) -> None:
    """In the child of a request that names an `entry` ("module:function"): call it with
    `sys.argv` set to `argv`, as a console script would, then exit with its code."""
    import importlib
    import traceback

    code = 0
    try:
        module, _, name = entry.partition(":")
        sys.argv = list(argv)
        getattr(importlib.import_module(module), name)()
    except SystemExit as exc:
        if isinstance(exc.code, int) or exc.code is None:
            code = exc.code or 0
        else:
            print(exc.code, file=sys.stderr)
            code = 1
    except BaseException:
        traceback.print_exc()
        code = 1
    finally:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
    os._exit(code)
