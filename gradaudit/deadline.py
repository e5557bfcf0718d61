"""The per-sample time limit (SIGALRM, in the process that runs plugin code). The supervisor
stops that process when plugin code ignores the alarm (gradaudit.run.supervisor)."""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from gradaudit.errors import CaseTimeout


@dataclass
class Deadline:
    """Set when the time limit fired, whatever the plugin did with the exception."""

    expired: bool = False


@contextmanager
def deadline(seconds: float | None, state: Deadline) -> Iterator[Deadline]:
    """SIGALRM-based limit (Unix, main thread); a no-op elsewhere or when unset.

    A plugin that catches BaseException swallows CaseTimeout, so the runner reads
    `state.expired` afterwards: a timed-out case is an error whatever happened next. The
    state is the caller's, so that a limit shorter than entering this block (1e-9 s) still
    sets it; the handler and timer are put back whatever fires when."""
    usable = (
        seconds
        and hasattr(signal, "setitimer")
        and threading.current_thread() is threading.main_thread()
    )
    if not usable:
        yield state
        return

    def expire(signum: int, frame: object) -> None:
        state.expired = True
        raise CaseTimeout()

    previous = signal.signal(signal.SIGALRM, expire)
    try:
        signal.setitimer(signal.ITIMER_REAL, float(seconds or 0))
        yield state
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
