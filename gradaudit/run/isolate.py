"""An in-memory target (check_op's op, built from the caller's own objects) run in forked
children of the caller, supervised as `gradaudit run` supervises its executors: a child
that dies (a kernel's out-of-bounds store: SIGSEGV, heap corruption, os._exit) makes the
case it was running an error naming the signal, and a new child goes on with the rest.

A child is a fork: it has the caller's objects without pickling or importing them again,
and shares nothing back but its events. POSIX only, and cpu only: a forked child cannot use
CUDA once the caller has (run the spec with `gradaudit run` there).
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from typing import IO

from gradaudit.errors import ExitCode, GradauditError, one_line
from gradaudit.plan import Plan
from gradaudit.run.events import Event, Failed, Finished, Planned, encode
from gradaudit.run.executor import Job, die_with_parent, set_threads
from gradaudit.run.loop import run_plan
from gradaudit.run.supervisor import Outcome, Supervisor
from gradaudit.targets import Context, Runnable


class Child:
    """A forked child, with the members of `subprocess.Popen` the supervisor uses."""

    def __init__(self, pid: int, stdin: IO[bytes]) -> None:
        self.pid = pid
        self.stdin: IO[bytes] | None = stdin
        self.returncode: int | None = None

    def poll(self) -> int | None:
        if self.returncode is None:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.poll() is None:
            if deadline is not None and time.monotonic() > deadline:
                raise subprocess.TimeoutExpired("check_op child", timeout or 0.0)
            time.sleep(0.01)
        assert self.returncode is not None
        return self.returncode


def run_isolated(target: Runnable, plan: Plan, context: Context, label: str) -> Outcome:
    """Run `plan` on `target` in supervised forked children; the outcome, as a run's."""
    if not hasattr(os, "fork"):
        raise OSError("isolate=True needs os.fork (Linux or macOS)")
    parent = os.getpid()

    def start(events: int) -> Child:
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(write)
            _child(target, plan, context, read, events, parent)
        os.close(read)
        return Child(pid, os.fdopen(write, "wb"))

    job = Job(label, dtypes=tuple(sorted({c.dtype for c in plan.cases})), timeout=context.timeout)
    return Supervisor(job, start=start).run()


def _child(
    target: Runnable, plan: Plan, context: Context, job_fd: int, events: int, parent: int
) -> None:
    out = None
    try:
        os.setsid()  # the supervisor kills the child's session
        die_with_parent(parent)
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, signal.SIG_DFL)
        set_threads(None)  # one torch thread, as an executor
        with os.fdopen(job_fd, "r", encoding="utf-8") as stdin:
            job = Job.from_json(stdin.readline())
        out = os.fdopen(events, "wb", buffering=0)
        sink = out

        def emit(batch: list[Event]) -> None:
            sink.write(encode(batch))

        emit([Planned(plan)])
        wanted = None if job.cases is None else set(job.cases)
        try:
            run_plan(target, plan, emit, context, wanted, job.resume)
        except GradauditError as exc:  # it cannot go on: the caller gets this error
            emit([Failed(str(exc), int(exc.exit_code))])
            os._exit(0)
        emit([Finished()])
        out.close()
        os._exit(0)
    except BaseException as exc:
        try:
            if out is not None:
                message = f"internal error: {one_line(exc)}"
                out.write(encode([Failed(message, int(ExitCode.INTERNAL))]))
        finally:
            os._exit(int(ExitCode.INTERNAL))
