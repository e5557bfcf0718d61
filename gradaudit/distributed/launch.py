"""Launching a distributed audit with torchrun, watching its ranks, folding their events.

Everything that can be checked before a rank starts is checked in `DistributedRun(...)`
(exit 2 on a bad spec, backend, device count, port or layout). `run()` starts
`python -m torch.distributed.run` in its own session, reads each rank's event file as it
grows, and stops the launcher (SIGTERM: torchrun stops its ranks; then SIGKILL) when a rank
is silent past the timeout. Every planned (device, dtype, rank) group comes back, finished
or carrying an error that says why it did not: a report never looks complete when it isn't.
"""

from __future__ import annotations

import dataclasses
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

from gradaudit.compare import Check, TensorSummary, Tol, tolerance_for
from gradaudit.distributed.events import read_progress
from gradaudit.distributed.layout import Replicated
from gradaudit.distributed.processes import POLL, check_machine, environment, failures, stop, tail
from gradaudit.distributed.setup import DistSetup
from gradaudit.errors import SpecError
from gradaudit.results import CaseListener, CaseResult, GroupResult
from gradaudit.spec import LoadedSpec

CHECK_FIELDS = [f.name for f in dataclasses.fields(Check)]  # as the ranks send them
STARTUP_TIMEOUT = 120.0  # seconds from launch until every rank runs its first case
# Seconds between reads of the ranks' events (exits are noticed every POLL): the launcher
# shares the machine with its ranks, and reading 20 times a second slowed them by 5%.
READ_EVERY = 1.0


def _one_line(text: str) -> str:
    return " ".join(text.split())


@dataclass
class _Rank:
    pid: int | None = None
    where: tuple[str, str] | None = None  # the (device, dtype) in progress
    batch: int | None = None
    started: int = 0  # cases started, as its events say
    progress: tuple[int, int] | None = None  # as its progress file last said
    seen: float = 0.0  # monotonic time of its last event or progress
    done: set[tuple[str, str]] = field(default_factory=set)
    abort: tuple[float, str, bool] | None = None  # time, message, caused by a lost peer
    finished: bool = False


class DistributedRun:
    """A checked distributed audit, ready to launch; `groups` holds every planned group."""

    def __init__(
        self,
        loaded: LoadedSpec,
        devices: list[str] | None = None,
        dtypes: list[str] | None = None,
        timeout: float | None = None,
        on_case: CaseListener | None = None,
        workdir: str | Path | None = None,
    ) -> None:
        spec = loaded.spec
        if spec.distributed is None:
            raise SpecError(f"{loaded.path}: not a distributed spec (no `distributed:` section)")
        self.loaded, self.cfg = loaded, spec.distributed
        self.devices = list(devices or spec.devices)
        self.dtypes = list(dtypes or spec.dtypes)
        self.timeout, self.on_case, self.workdir = timeout, on_case, workdir
        self.startup_timeout = STARTUP_TIMEOUT
        self.skipped = check_machine(loaded, self.devices)
        self.setup = DistSetup.load(loaded, self.cfg.world_size)
        self.tensor_names = self.setup.audited
        self.groups = self._plan()
        self.log_tail = ""

    def _plan(self) -> list[GroupResult]:
        setup, world = self.setup, self.cfg.world_size
        replicated = [n for n in setup.audited if isinstance(setup.layout[n], Replicated)]
        groups = []
        for device in self.devices:
            for dtype in self.dtypes:
                tols = {
                    n: tolerance_for(self.loaded.spec.tolerance, n, device, dtype)
                    for n in setup.audited
                }
                for rank in range(world):
                    summaries = [TensorSummary(n, tols[n]) for n in setup.audited]
                    groups.append(GroupResult(device, dtype, summaries, check=f"rank{rank}"))
                for rank in range(1, world) if replicated else ():
                    summaries = [TensorSummary(n, self._replica_tol(tols[n])) for n in replicated]
                    groups.append(
                        GroupResult(device, dtype, summaries, check=f"rank{rank}.replicas")
                    )
        for group in groups:
            reason = self.skipped.get(group.device)
            if reason:
                group.skipped, group.done = reason, True
                for summary in group.tensors:
                    summary.skipped = reason
        return groups

    def _replica_tol(self, tol: Tol) -> Tol:
        return Tol("exact") if self.cfg.replicas == "exact" else Tol("allclose", tol.rtol, tol.atol)

    def run(self) -> list[GroupResult]:
        """Launch, watch, fold. On KeyboardInterrupt the ranks are stopped, `groups` says so,
        and the interrupt propagates."""
        devices = [d for d in self.devices if d not in self.skipped]
        if not devices:
            return self.groups
        run_dir = Path(tempfile.mkdtemp(prefix="gradaudit-dist-", dir=self.workdir))
        self.ranks = {r: _Rank(seen=time.monotonic()) for r in range(self.cfg.world_size)}
        self.offsets = dict.fromkeys(self.ranks, 0)
        self.by_key = {(g.device, g.dtype, g.check): g for g in self.groups}
        job = {
            "spec": str(self.loaded.path.resolve()),
            "sha256": self.loaded.sha256,
            "devices": devices,
            "dtypes": self.dtypes,
            "backend": self.cfg.backend,
            "timeout": self.timeout,
            "replicas": self.cfg.replicas,
        }
        (run_dir / "job.json").write_text(json.dumps(job), encoding="utf-8")
        reason: str | None = None
        proc: subprocess.Popen[bytes] | None = None
        try:
            with open(run_dir / "launcher.log", "wb") as log:
                proc = subprocess.Popen(
                    self._command(run_dir),
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    env=environment(),
                    start_new_session=True,
                )
                reason = self._watch(proc, run_dir)
        except BaseException:
            reason = "interrupted"
            raise
        finally:
            if proc is not None:
                stop(proc, [r.pid for r in self.ranks.values() if r.pid], run_dir)
            self._read(run_dir)
            self._progress(run_dir, time.monotonic())
            self.log_tail = tail(run_dir / "launcher.log")
            code = proc.returncode if proc is not None else None
            self._finish(reason or self._why_stopped(code))
            if not os.environ.get("GRADAUDIT_DEBUG"):
                shutil.rmtree(run_dir, ignore_errors=True)
        return self.groups

    def _command(self, run_dir: Path) -> list[str]:
        world = str(self.cfg.world_size)
        if self.cfg.port is None:
            rendezvous = ["--standalone"]
        else:
            endpoint = f"127.0.0.1:{self.cfg.port}"
            rendezvous = ["--rdzv-backend", "c10d", "--rdzv-endpoint", endpoint]
            rendezvous += ["--rdzv-id", run_dir.name]
        return [
            sys.executable, "-m", "torch.distributed.run", "--nnodes", "1",
            "--nproc-per-node", world, "--max-restarts", "0", "--monitor-interval", "0.1",
            *rendezvous, "-m", "gradaudit.distributed.worker", str(run_dir),
        ]  # fmt: skip

    def _watch(self, proc: subprocess.Popen[bytes], run_dir: Path) -> str | None:
        """Until torchrun exits (None) or a rank is silent too long (the reason)."""
        started = read_at = time.monotonic()
        while proc.poll() is None:
            now = time.monotonic()
            if now - read_at >= READ_EVERY:
                self._read(run_dir)
                read_at = now
            self._progress(run_dir, now)
            waiting = [r for r, s in self.ranks.items() if s.where is None and not s.finished]
            if waiting and now - started > self.startup_timeout:
                who = ", ".join(map(str, waiting))
                return f"rank(s) {who} did not start within {self.startup_timeout:g}s"
            silent = [
                r
                for r, s in self.ranks.items()
                if self.timeout and s.where and not s.finished and now - s.seen > self.timeout
            ]
            if silent:
                first = self.ranks[silent[0]]
                assert first.where is not None
                where = f"{'/'.join(first.where)} batch {first.batch}"
                return (
                    f"timed out: rank(s) {', '.join(map(str, silent))} reported nothing for "
                    f"{self.timeout:g}s (--timeout) during {where}"
                )
            time.sleep(POLL)
        return None

    def _progress(self, run_dir: Path, now: float) -> None:
        """Each rank's batch in progress: a rank that moves on is alive."""
        for rank, state in self.ranks.items():
            progress = read_progress(run_dir / f"rank{rank}.progress")
            if progress is None:
                continue
            if progress != state.progress:
                state.progress, state.seen = progress, now
            cases, batch = progress
            if cases == state.started and batch >= 0:  # else a case whose start is unread
                state.batch = batch

    def _read(self, run_dir: Path) -> None:
        """Fold the complete new lines of every rank's event file."""
        for rank, state in self.ranks.items():
            path = run_dir / f"rank{rank}.jsonl"
            if not path.exists():
                continue
            with open(path, "rb") as handle:
                handle.seek(self.offsets[rank])
                data = handle.read()
            end = data.rfind(b"\n") + 1
            self.offsets[rank] += end
            for line in data[:end].splitlines():
                state.seen = time.monotonic()
                self._event(rank, state, json.loads(line))

    def _event(self, rank: int, state: _Rank, event: dict[str, Any]) -> None:
        kind = event["event"]
        if kind == "ready":
            state.pid = int(event["pid"])
        elif kind == "start":
            state.where, state.batch = (event["device"], event["dtype"]), None
            state.started += 1
            for suffix in ("", ".replicas"):
                group = self.by_key.get((event["device"], event["dtype"], f"rank{rank}{suffix}"))
                if group is not None:
                    group.device_name = str(event.get("device_name", event["device"]))
        elif kind == "cases":
            for group_kind, tensor, outcome in event["items"]:
                self._case(event, group_kind, tensor, outcome)
        elif kind == "done":
            where = (event["device"], event["dtype"])
            state.done.add(where)
            for suffix in ("", ".replicas"):
                group = self.by_key.get((*where, f"rank{rank}{suffix}"))
                if group is not None:
                    group.seconds, group.done = float(event["seconds"]), True
                    for summary in group.tensors:
                        summary.seconds = group.seconds / max(len(group.tensors), 1)
        elif kind == "abort":
            state.abort = (float(event["t"]), str(event["message"]), bool(event.get("peer")))
        elif kind == "finished":
            state.finished = True

    def _case(self, event: dict[str, Any], kind: str, name: str, outcome: Any) -> None:
        """One tensor's result on one batch: a Check's values, or an error message."""
        group = self.by_key[(event["device"], event["dtype"], kind)]
        summary = next((s for s in group.tensors if s.tensor == name), None)
        if summary is None:  # a gradient for a tensor the model lacks: an error case of its own
            summary = TensorSummary(name, Tol("allclose"))
            group.tensors.append(summary)
        batch, seed = int(event["batch"]), int(event["seed"])
        check, error = None, None
        if isinstance(outcome, str):
            error = outcome
            summary.add_error(error)
        else:
            values = dict(zip(CHECK_FIELDS, outcome, strict=True))
            values["worst_index"] = tuple(values["worst_index"])
            check = Check(**values)
            summary.add(check, batch, seed)
        if self.on_case is not None:
            self.on_case(
                CaseResult(
                    group.device, group.dtype, name, batch, seed,
                    check=check, error=error, tol=summary.tol, kind=group.check,
                )
            )  # fmt: skip

    def _why_stopped(self, code: int | None) -> str | None:
        """None when every rank finished; otherwise which rank failed and how."""
        if all(s.finished for s in self.ranks.values()):
            return None
        aborts = sorted(s.abort for s in self.ranks.values() if s.abort)
        own = [message for _, message, peer in aborts if not peer]
        if own:  # a plugin raised on that rank; the others' collectives failed after it
            return own[0]
        # A rank that died without a word is the cause: a peer stopped by its death says so
        # (the rank checks that a peer is gone before it blames itself).
        failed = dict(failures(self.log_tail))
        for rank, state in sorted(self.ranks.items()):
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
            where = f" during {'/'.join(state.where)} batch {state.batch}" if state.where else ""
            return f"rank {rank} died ({how}){where}"
        if aborts:
            return aborts[0][1]
        last = _one_line(self.log_tail.strip().splitlines()[-1]) if self.log_tail.strip() else ""
        return f"the launcher exited with code {code} before every rank finished: {last[:300]}"

    def _finish(self, reason: str | None) -> None:
        """Give every group that did not finish an error saying why (the report stays complete)."""
        for group in self.groups:
            if group.done:
                continue
            rank = int(group.check.removeprefix("rank").split(".")[0])
            state = self.ranks[rank]
            where = (group.device, group.dtype)
            if where in state.done:
                continue
            why = reason or f"rank {rank} never ran {'/'.join(where)}"
            if state.where == where:
                at = f"batch {state.batch}" if state.batch is not None else "its set-up"
                message = f"stopped during {at}: {why}"
            else:
                message = f"not run: {why}"
            for summary in group.tensors:
                summary.add_error(message)


def run_distributed(
    loaded: LoadedSpec,
    devices: list[str] | None = None,
    dtypes: list[str] | None = None,
    timeout: float | None = None,
    on_case: CaseListener | None = None,
) -> list[GroupResult]:
    """Check (exit-2 errors before any rank starts), launch, and return every planned group."""
    return DistributedRun(loaded, devices, dtypes, timeout, on_case).run()
