"""The executor of a sharded target: torchrun and its ranks (gradaudit.targets.sharded.rank).

The launcher runs in the executor process: it writes the job (the spec and the plan) into a
folder of its own, starts `python -m torch.distributed.run`, relays every rank's events to
the supervisor as they are written, tells it which batch the ranks are on, and stops
torchrun (SIGTERM: torchrun stops its ranks; then SIGKILL) when a rank is silent past the
time limit. When the ranks do not all finish it says why, naming the rank that failed first
(`Stopped`): its own error, or its death by a signal; a peer that torchrun stopped afterwards
is a consequence. torchrun dies with the launcher, and the ranks with torchrun.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gradaudit.plan import Plan
from gradaudit.run.events import At, Event, Stopped, decode
from gradaudit.run.processes import POLL, environment, failures, stop, tail
from gradaudit.spec.common import LoadedSpec
from gradaudit.targets.sharded.events import read_progress, read_state

STARTUP_TIMEOUT = 120.0  # seconds from launch until every rank runs its first batch
# Seconds between reads of the ranks' events (exits are noticed every POLL): the launcher
# shares the machine with its ranks, and reading 20 times a second slowed them by 5%.
READ_EVERY = 1.0


@dataclass
class _Rank:
    pid: int | None = None
    batch: int | None = None
    seen: float = 0.0  # monotonic time of its last event or progress
    abort: tuple[float, str, bool] | None = None  # time, message, caused by a lost peer
    finished: bool = False
    offset: int = 0  # bytes of its event file relayed
    buffer: bytes = b""
    where: str = ""  # device/dtype in progress
    started: bool = field(default=False)


class Launcher:
    def __init__(
        self,
        loaded: LoadedSpec,
        plan: Plan,
        emit: Any,
        timeout: float | None,
        cases: list[tuple[str, str, str]] | None,
    ) -> None:
        cfg = loaded.spec.distributed
        assert cfg is not None
        self.loaded, self.plan, self.emit, self.cfg = loaded, plan, emit, cfg
        self.timeout, self.cases = timeout, cases
        self.ranks = {r: _Rank(seen=time.monotonic()) for r in range(cfg.world_size)}
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_tail = ""

    def run(self) -> None:
        folder = Path(tempfile.mkdtemp(prefix="gradaudit-ranks-"))
        previous = signal.signal(signal.SIGTERM, self._stop_on_signal)
        reason: str | None = None
        try:
            self._write_job(folder)
            with open(folder / "launcher.log", "wb") as log:
                self.proc = subprocess.Popen(
                    self._command(folder),
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    env=environment(),
                    start_new_session=True,  # stop() signals its group: torchrun and ranks
                    preexec_fn=_die_with_parent,
                )
                reason = self._watch(folder)
        finally:
            if self.proc is not None:
                stop(self.proc, [r.pid for r in self.ranks.values() if r.pid], folder)
            self._read(folder)
            # the batch each rank reached: a rank that moved on and died between two polls
            # (a busy machine) would otherwise be blamed for the batch before
            self._progress(folder, time.monotonic())
            self.log_tail = tail(folder / "launcher.log")
            signal.signal(signal.SIGTERM, previous)
            if not os.environ.get("GRADAUDIT_DEBUG"):
                shutil.rmtree(folder, ignore_errors=True)
        code = self.proc.returncode if self.proc is not None else None
        why = reason or self._why_stopped(code)
        if why is not None:
            self.emit([Stopped(why)])

    def _stop_on_signal(self, signum: int, frame: object) -> None:
        """The supervisor is gone (or stops this run): take torchrun and its ranks along."""
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()
        raise SystemExit(1)

    def _write_job(self, folder: Path) -> None:
        job = {
            "spec": str(self.loaded.path.resolve()),
            "sets": list(self.loaded.sets),
            "sha256": self.loaded.sha256,
            "plan": self.plan.to_dict(),
            "cases": self.cases,
            "backend": self.cfg.backend,
            "timeout": self.timeout,
        }
        (folder / "job.json").write_text(json.dumps(job), encoding="utf-8")

    def _command(self, folder: Path) -> list[str]:
        world = str(self.cfg.world_size)
        if self.cfg.port is None:
            rendezvous = ["--standalone"]
        else:
            endpoint = f"127.0.0.1:{self.cfg.port}"
            rendezvous = ["--rdzv-backend", "c10d", "--rdzv-endpoint", endpoint]
            rendezvous += ["--rdzv-id", folder.name]
        return [
            sys.executable, "-m", "torch.distributed.run", "--nnodes", "1",
            "--nproc-per-node", world, "--max-restarts", "0", "--monitor-interval", "0.1",
            *rendezvous, "-m", "gradaudit.targets.sharded.rank", str(folder),
        ]  # fmt: skip

    def _watch(self, folder: Path) -> str | None:
        """Until torchrun exits (None) or a rank is silent too long (the reason)."""
        assert self.proc is not None
        started = read_at = time.monotonic()
        while self.proc.poll() is None:
            now = time.monotonic()
            if now - read_at >= READ_EVERY:
                self._read(folder)
                read_at = now
            self._progress(folder, now)
            waiting = [r for r, s in self.ranks.items() if s.batch is None and not s.finished]
            if waiting and now - started > STARTUP_TIMEOUT:
                who = ", ".join(map(str, waiting))
                return f"rank(s) {who} did not start within {STARTUP_TIMEOUT:g}s"
            silent = [
                r
                for r, s in self.ranks.items()
                if self.timeout and s.batch is not None and not s.finished
                and now - s.seen > self.timeout
            ]  # fmt: skip
            if silent:
                first = self.ranks[silent[0]]
                return (
                    f"timed out: rank(s) {', '.join(map(str, silent))} reported nothing for "
                    f"{self.timeout:g}s (--timeout) during {first.where} batch {first.batch}"
                )
            time.sleep(POLL)
        return None

    def _progress(self, folder: Path, now: float) -> None:
        """Each rank's batch in progress: a rank that moves on is alive; rank 0's batch is the
        supervisor's too."""
        for rank, state in self.ranks.items():
            batch = read_progress(folder / f"rank{rank}.progress")
            if batch is None or batch < 0:
                continue
            if batch != state.batch:
                state.batch, state.seen = batch, now
                if rank == 0:
                    device = state.where.split("/")[0] if state.where else "cpu"
                    self.emit([At(device, batch)])

    def _read(self, folder: Path) -> None:
        """Relay the complete new lines of every rank's event file; read states."""
        for rank, state in self.ranks.items():
            for said in read_state(folder / f"rank{rank}.state"):
                if said["state"] == "ready":
                    state.pid = int(said["pid"])
                elif said["state"] == "finished":
                    state.finished = True
                elif said["state"] == "abort" and state.abort is None:
                    state.abort = (float(said["t"]), str(said["message"]), bool(said["peer"]))
            path = folder / f"rank{rank}.events"
            if not path.exists():
                continue
            with open(path, "rb") as handle:
                handle.seek(state.offset)
                data = handle.read()
            state.offset += len(data)
            state.buffer += data
            *lines, state.buffer = state.buffer.split(b"\n")
            events: list[Event] = []
            for line in lines:
                state.seen = time.monotonic()
                for event in decode(line):
                    if isinstance(event, At):
                        state.where = f"{event.device}/{event.dtype}"
                        continue  # the launcher says where the ranks are (`_progress`)
                    events.append(event)
            self.emit(events)

    def _why_stopped(self, code: int | None) -> str | None:
        """None when every rank finished; otherwise which rank failed first and how."""
        if all(s.finished for s in self.ranks.values()):
            return None
        aborts = sorted(s.abort for s in self.ranks.values() if s.abort)
        own = [message for _, message, peer in aborts if not peer]
        if own:  # a plugin raised on that rank; the others' collectives failed after it
            return own[0]
        # A rank that died without a word is the cause: a peer stopped by its death says so
        # (the rank checks that a peer is gone before it blames itself).
        failed = dict(failures(self.log_tail))
        for rank, state in sorted(self.ranks.items(), key=lambda r: _death_order(r, failed)):
            exit_code = failed.get(rank, 0)
            if state.abort is not None or state.finished or exit_code == -signal.SIGTERM:
                continue
            if state.pid is None and rank not in failed:
                continue  # never started: the launcher's message says why
            how = f"exit code {exit_code}"
            if exit_code < 0:
                how = f"killed by {signal.Signals(-exit_code).name}"
            elif exit_code == 0:
                how = "exit code 0 before it finished: plugin code ended the process"
            where = f" during {state.where} batch {state.batch}" if state.where else ""
            return f"rank {rank} died ({how}){where}"
        if aborts:
            return aborts[0][1]
        last = " ".join(self.log_tail.strip().splitlines()[-1:])[:300]
        return f"the launcher exited with code {code} before every rank finished: {last}"


def _death_order(item: tuple[int, _Rank], failed: dict[int, int]) -> tuple[int, int]:
    """Silent deaths, the likeliest cause first: killed by a signal other than torchrun's
    SIGTERM (from outside: nothing in the run kills a rank so), then the lowest rank. A
    peer's failed collective that exits 1 without a word is a consequence, not a cause."""
    rank, _ = item
    code = failed.get(rank, 0)
    return (0 if code < 0 and code != -signal.SIGTERM else 1, rank)


def _die_with_parent() -> None:
    """In torchrun, before it starts: SIGKILL it when the launcher dies (Linux)."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
