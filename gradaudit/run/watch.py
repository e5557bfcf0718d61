"""What the supervisor knows of the executor it watches, and the time limits it enforces
on it (--timeout): a sample may overrun by its grace, loading and the stretches between
samples may take ten times the limit."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from gradaudit.plan import Plan

LOADING_LIMIT = 10.0  # with --timeout: loading may take 10 times it, and at least this


@dataclass
class WatchState:
    """What the supervisor knows of the executor it watches."""

    started: float = 0.0
    last: float = 0.0
    at: tuple[str, int] | None = None  # (device, sample) in progress
    dtype: str = ""  # of the pass in progress
    at_time: float = 0.0
    fatal: bool = False  # no restart: the executor broke the protocol
    progress: bool = False  # it reached a sample, sent a result or ended a case
    finished: bool = False
    stopped: str | None = None  # the executor could go no further (Stopped), and why


def where_in(state: WatchState, plan: Plan | None) -> str:
    if state.at is None:
        return " while loading the spec's plugins, data or target" if plan is None else ""
    device, sample = state.at
    where = f"{device}/{state.dtype}" if state.dtype else device
    if plan is not None and plan.sample_names and sample < len(plan.sample_names):
        return f" during {where} variant {plan.sample_names[sample]}"
    return f" during {where} batch {sample}"


def overdue(state: WatchState, timeout: float | None, plan: Plan | None) -> str | None:
    """Why the executor must be stopped now (plugin code ignored the time limit), or
    None. Only with --timeout: a sample may overrun it by its grace; loading (imports,
    data, model) may take ten times it, and at least LOADING_LIMIT seconds."""
    if timeout is None:
        return None
    now = time.monotonic()
    silence = max(LOADING_LIMIT, 10 * timeout)  # loading, or between samples
    if plan is None or state.at is None:
        if now - state.started > silence:
            return f"loading the target took over {silence:g}s (10 x --timeout)"
        return None
    if now - state.last > silence:  # outside a sample: drawing data, building a pass
        state.fatal = True  # it would hang there again: no restart
        return (
            f"no word from the process running plugin code for {silence:g}s (10 x "
            f"--timeout) while it was between samples: plugin code hung there and "
            f"ignored the time limit, so the process was stopped"
            f"{where_in(state, plan)}"
        )
    grace = max(1.0, timeout / 2)
    if now - state.at_time > timeout + grace and state.at_time >= state.last - 1e-9:
        return (
            f"timed out after {timeout:g}s (--timeout) and did not stop within "
            f"{grace:g}s more: plugin code ignored the time limit, so the process "
            f"running it was stopped{where_in(state, plan)}"
        )
    return None
