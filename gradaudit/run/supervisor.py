"""The supervisor: the torch-free process that plans and judges, while an executor process
runs the plugin code (gradaudit.run.executor).

It starts the executor, folds the events it sends into the plan's cases (run.fold), and ends
the run by the plan, not by the executor: whatever plugin code does (sys.exit, os._exit, a
segfault, the OOM killer, a hang, ignoring SIGALRM), a case it did not finish is an error
naming what did not run and why. It enforces the time limit (a sample that overruns it by
its grace, because plugin code ignored the alarm, gets the executor killed), stops the
executor on SIGTERM and Ctrl-C (SIGKILL: plugin code cannot delay it), and when an executor
dies mid-run it starts another for the cases left, after the sample that killed the last
one (as long as each one gets further). Executors run in their own session and die with the
supervisor, so none outlives it, even when it is SIGKILLed.

Cost: one more Python process per run (and per restart), which imports torch and loads the
target where the in-process run did the same; events are JSON lines, a sample's results one
line (docs/ci.md has the figures).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import selectors
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import IO, Protocol

from gradaudit.errors import ExitCode, GradauditError
from gradaudit.mutate import MutationReport
from gradaudit.plan import Plan
from gradaudit.results import CaseResult, GroupResult
from gradaudit.run import zygote
from gradaudit.run.events import (
    At,
    CaseDone,
    CaseStarted,
    Event,
    Failed,
    Finished,
    Planned,
    Stopped,
    decode,
)
from gradaudit.run.executor import Job
from gradaudit.run.fold import Fold
from gradaudit.run.watch import WatchState, overdue, where_in

# The executor's command: its sys.path as the `gradaudit` console script's (python -c, like
# -m, would put the working directory first, where a source tree could shadow what is
# installed).
EXECUTOR = "import sys; sys.path.pop(0); from gradaudit.run.executor import main; main()"
MAX_RESTARTS = 8  # executors started after the first, each only if the last got further
POLL = 0.05


class Executor(Protocol):
    """A started executor: what the supervisor uses of `subprocess.Popen`."""

    pid: int
    returncode: int | None

    @property
    def stdin(self) -> IO[bytes] | None: ...

    def poll(self) -> int | None: ...

    def wait(self, timeout: float | None = None) -> int: ...


# Starts an executor that writes its events to the descriptor given, in a session of its own.
Start = Callable[[int], Executor]


def start_executor(events: int) -> Executor:
    """`python -c EXECUTOR`, or forked by the test suite's zygote (gradaudit.run.zygote)."""
    forked = zygote.fork(events, os.getpid())
    if forked is not None:
        return forked
    return subprocess.Popen(
        [sys.executable, "-c", EXECUTOR, str(events), str(os.getpid())],
        stdin=subprocess.PIPE,
        pass_fds=(events,),
        start_new_session=True,
    )


class Observer(Protocol):
    """What a supervisor tells the command that runs it (reporters listen here)."""

    def planned(self, plan: Plan) -> None: ...

    def case(self, result: CaseResult) -> None: ...

    def group(self, group: GroupResult) -> None: ...

    def idle(self) -> None:
        """Called between the executor's events (every POLL seconds at most), for work put
        off until then (commands.Reports: a checkpoint not yet due)."""


@dataclass
class Outcome:
    """How a supervised run ended."""

    plan: Plan | None = None
    fold: Fold | None = None
    stopped: str | None = None  # the run ended early: an interrupt (then `signal` is set)
    failed: Failed | None = None  # it could not start
    signal: str | None = None  # "SIGTERM" | "SIGINT"
    mutations: list[MutationReport] = field(default_factory=list)

    def failure(self, prefix: str = "") -> GradauditError | None:
        """The executor's `Failed` as the error to raise (its line and exit code), or None."""
        if self.failed is None:
            return None
        error = GradauditError(prefix + self.failed.message)
        error.exit_code = ExitCode(self.failed.exit_code)
        return error

    @property
    def exit_code(self) -> int | None:
        """The code the run's end dictates, or None (the verdict decides)."""
        if self.signal == "SIGTERM":
            return int(ExitCode.SIGTERM)
        if self.signal == "SIGINT":
            return int(ExitCode.SIGINT)
        if self.failed is not None:
            return self.failed.exit_code
        return None


class _Stop(Exception):
    pass


class Supervisor:
    def __init__(
        self,
        job: Job,
        observer: Observer | None = None,
        restore: bool = True,
        start: Start = start_executor,
    ) -> None:
        """`restore`: put the signal handlers back afterwards (a command that ends with the
        run keeps them, so that a second signal cannot cut its reports short). `start`: how
        an executor starts (gradaudit.run.isolate forks one that runs an in-memory target)."""
        self.job = job
        self.start = start
        self.observer = observer
        self.restore = restore
        self.outcome = Outcome()
        self.signal: str | None = None
        self.proc: Executor | None = None

    # -- the run ----------------------------------------------------------------------------

    def run(self) -> Outcome:
        """Plan (in the first executor), then run every planned case; the outcome, whatever
        the executors did. SIGTERM and SIGINT end it early (`outcome.signal`)."""
        previous = {s: signal.signal(s, self._on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
        try:
            self._supervise()
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler if self.restore else signal.SIG_IGN)
        return self.outcome

    def _on_signal(self, signum: int, frame: object) -> None:
        self.signal = signal.Signals(signum).name
        self._kill()

    def _supervise(self) -> None:
        job, restarts, reason = self.job, 0, ""
        while True:
            state = WatchState()
            ended = self._one(job, state)
            fold = self.outcome.fold
            if state.stopped is not None:
                self._close(state.stopped, False)
                return
            if fold is None and self.outcome.failed is None:
                self.outcome.stopped = ended  # it never planned: why
                return
            failed = self.outcome.failed
            if fold is not None and failed is not None:  # it planned, then could not go on
                if not fold.received:  # before any result: as if it had not started
                    self.outcome.fold = None
                    return
                self.outcome.stopped = failed.message
                self._close(failed.message, False)
                return
            if ended == "finished" or fold is None:
                self._close(reason if ended != "finished" else "", ended == "finished")
                return
            reason = ended
            if self.signal is not None:
                self._close(self.outcome.stopped or ended, False)
                return
            if state.at is not None:  # the sample in progress is lost, with why
                fold.lost(state.at[0], state.at[1], ended)
            pending = [c.key for c in fold.pending()]
            if not pending or restarts >= MAX_RESTARTS or not state.progress or state.fatal:
                self._close(ended, False)
                return
            restarts += 1
            resume = dict(job.resume)
            if state.at is not None:
                resume[state.at[0]] = state.at[1]
            job = dataclasses.replace(job, cases=tuple(pending), resume=resume)

    def _close(self, reason: str, finished: bool) -> None:
        fold = self.outcome.fold
        if fold is None:
            return
        if self.signal is not None:
            how = "SIGTERM" if self.signal == "SIGTERM" else "SIGINT (Ctrl-C)"
            self.outcome.stopped = f"interrupted by {how}"
            self.outcome.signal = self.signal
            reason = self.outcome.stopped
        for group in fold.close(reason or "the run ended before it", finished):
            if self.observer is not None:
                self.observer.group(group)

    def _one(self, job: Job, state: WatchState) -> str:
        """One executor, from its start to its end: "finished", or why it ended."""
        read, write = os.pipe()
        try:
            self.proc = self.start(write)
        finally:
            os.close(write)
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write(job.to_json().encode() + b"\n")
            self.proc.stdin.close()
        except OSError:
            pass  # it died at once: its exit says why
        state.started = time.monotonic()
        try:
            return self._watch(read, state)
        except _Stop as exc:
            state.fatal = True
            return str(exc)
        finally:
            os.close(read)
            self._kill()
            self.proc.wait()

    def _watch(self, read: int, state: WatchState) -> str:
        selector = selectors.DefaultSelector()
        selector.register(read, selectors.EVENT_READ)
        buffer = b""
        open_ = True
        try:
            while True:
                if self.signal is not None:
                    return f"interrupted by {self.signal}"
                if open_:
                    for _ in selector.select(POLL):
                        chunk = os.read(read, 1 << 16)
                        if not chunk:
                            open_ = False
                            selector.unregister(read)
                            break
                        buffer += chunk
                        *lines, buffer = buffer.split(b"\n")
                        for line in lines:
                            for event in decode(line):
                                self._event(event, state)
                else:
                    time.sleep(POLL)
                if self.observer is not None:
                    self.observer.idle()
                if state.finished:
                    return "finished"
                if not open_ and self.proc is not None and self.proc.poll() is not None:
                    return self._death(state)
                late = overdue(state, self.job.timeout, self.outcome.plan)
                if late:
                    self._kill()
                    return late
        finally:
            selector.close()

    # -- events ---------------------------------------------------------------------------

    def _event(self, event: Event, state: WatchState) -> None:
        state.last = time.monotonic()
        fold = self.outcome.fold
        if isinstance(event, Planned):
            self._planned(event.plan)
        elif isinstance(event, Failed):
            self.outcome.failed = event
            state.finished = True
        elif isinstance(event, Finished):
            state.finished = True
        elif isinstance(event, Stopped):
            state.stopped = event.reason
        elif fold is None:
            raise _Stop(f"the executor sent {type(event).__name__} before its plan")
        elif isinstance(event, At):  # a sample not lost before (those are skipped): further
            state.at, state.at_time = (event.device, event.sample), state.last
            state.dtype = event.dtype
            state.progress = True
        elif isinstance(event, CaseStarted):
            fold.start(event.key)
        elif isinstance(event, CaseResult):
            fold.result(event)
            state.progress = True
            if self.observer is not None:
                self.observer.case(event)
        elif isinstance(event, CaseDone):
            group = fold.finish_case(event)
            state.progress = True
            if group.done and self.observer is not None:
                self.observer.group(group)
        elif isinstance(event, MutationReport):
            self.outcome.mutations.append(event)

    def _planned(self, plan: Plan) -> None:
        if self.outcome.plan is None:
            self.outcome.plan = plan
            self.outcome.fold = Fold(plan)
            if self.observer is not None:
                self.observer.planned(plan)
        elif _shape(plan) != _shape(self.outcome.plan):
            raise _Stop("a restarted executor planned other cases than the first")

    # -- how an executor ended ------------------------------------------------------------

    def _death(self, state: WatchState) -> str:
        assert self.proc is not None
        code = self.proc.returncode
        assert code is not None
        if code < 0:
            how = f"was killed by {signal.Signals(-code).name}"
        elif code == 0:
            how = "exited (code 0) before it finished: plugin code ended it"
        else:
            how = f"exited with code {code}"
        return f"the process running plugin code {how}{where_in(state, self.outcome.plan)}"

    def _kill(self) -> None:
        """SIGKILL the executor's whole session (torchrun and its ranks too)."""
        proc = self.proc
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)


def _shape(plan: Plan) -> list[tuple[tuple[str, str, str], tuple[str, ...]]]:
    return [(c.key, tuple(t.name for t in c.tensors)) for c in plan.cases]


Callback = Callable[[Plan], None]
