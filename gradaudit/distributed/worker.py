"""One rank of a distributed audit, started by torchrun (`-m gradaudit.distributed.worker DIR`).

The rank reads its job from DIR/job.json and streams events, one JSON line each, to
DIR/rank<R>.jsonl, which the launcher folds into the report. A plugin that raises may
leave the ranks' collectives out of step, so the rank records the error and exits:
torchrun then stops the others, and the launcher reports the run as stopped.
"""

from __future__ import annotations

import ctypes
import json
import os
import signal
import sys
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch.distributed as dist

from gradaudit.distributed.case import Case
from gradaudit.distributed.events import Events, PluginRaised, why
from gradaudit.distributed.exchange import same_full_model
from gradaudit.distributed.setup import DistSetup, build, load_slices
from gradaudit.spec import load_spec

# A collective fails within milliseconds of a peer's death; a genuine error waits this long.
PEER_WAIT = 1.0


class Stopped(Exception):
    """torchrun asked this rank to stop (SIGTERM): a peer failed, or the run was stopped."""


def _settle_before_stopping(events: Events) -> None:
    """SIGTERM raises Stopped, so that the rank settles the batches it holds on its way out
    (a peer's failure is followed by torchrun's SIGTERM, often before this rank's collective
    fails); once the rank is on its way out, SIGTERM waits for it. The handler runs between
    bytecodes: an event line is written whole or not."""

    def stop(signum: int, frame: object) -> None:
        if not events.leaving:
            events.leaving = True
            raise Stopped("stopped by SIGTERM")

    signal.signal(signal.SIGTERM, stop)


def _die_with_launcher() -> None:
    """Linux: SIGKILL this rank when torchrun dies, so that no rank outlives a killed run."""
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        if os.getppid() == 1:
            os._exit(1)


def _peer_gone(run_dir: Path, rank: int, world: int, wait: float = PEER_WAIT) -> bool:
    """Whether another rank died before finishing: then this rank's error (a collective
    that failed, whatever its text) is a consequence, not the cause. A peer's sockets close
    as it exits, a moment before its process shows as dead, so the check waits a little."""
    deadline = time.monotonic() + wait
    while True:
        for peer in range(world):
            if peer != rank and _dead(run_dir / f"rank{peer}.jsonl"):
                return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.02)


def _dead(events: Path) -> bool:
    """A rank that said it was ready and is gone (or a zombie) without having finished."""
    try:
        lines = events.read_text(encoding="utf-8").splitlines()
    except OSError:
        return False
    said = [json.loads(line) for line in lines if line.startswith("{") and line.endswith("}")]
    if any(e["event"] in ("finished", "abort") for e in said):
        return False
    pids = [int(e["pid"]) for e in said if e["event"] == "ready"]
    if not pids:
        return False
    if not sys.platform.startswith("linux"):
        try:
            os.kill(pids[0], 0)
        except ProcessLookupError:
            return True
        except OSError:
            return False
        return False
    try:
        state = Path(f"/proc/{pids[0]}/stat").read_text().rsplit(") ", 1)[1][:1]
    except (OSError, IndexError):
        return True
    return state in ("Z", "X")


def main() -> None:
    run_dir = Path(sys.argv[1])
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local = int(os.environ.get("LOCAL_RANK", rank))
    _die_with_launcher()
    events = Events(run_dir / f"rank{rank}.jsonl")
    _settle_before_stopping(events)
    events.emit("ready", pid=os.getpid())
    try:
        job = json.loads((run_dir / "job.json").read_text(encoding="utf-8"))
        _run(job, rank, world, local, events)
    except BaseException as exc:
        message = str(exc) if isinstance(exc, PluginRaised) else why(exc)
        cause = exc.__context__ if isinstance(exc, PluginRaised) else exc
        peer = isinstance(exc, Stopped) or isinstance(cause, Stopped)
        peer = peer or _peer_gone(run_dir, rank, world)
        events.emit("abort", message=f"rank {rank}: {message}", peer=peer, **events.where)
        events.handle.close()
        os._exit(1)
    events.emit("finished")
    events.handle.close()


def _run(job: dict[str, Any], rank: int, world: int, local: int, events: Events) -> None:
    timeout = job.get("timeout")  # the launcher stops silent ranks; this is a backstop
    limit = timedelta(seconds=max(60.0, 2 * timeout)) if timeout else timedelta(minutes=30)
    dist.init_process_group(job["backend"], timeout=limit)
    loaded = load_spec(job["spec"])
    if loaded.sha256 != job["sha256"]:
        raise RuntimeError(f"{loaded.path} changed on disk after the launch")
    setup = DistSetup.load(loaded, world)
    same_full_model(setup.full, world, f"cuda:{local}" if job["backend"] == "nccl" else "cpu")
    shard = build(loaded, setup.factory, rank, world)
    load_slices(shard, setup.full, setup.layout, rank, world)
    for device in job["devices"]:
        for dtype in job["dtypes"]:
            events.where = {"device": device, "dtype": dtype}
            Case(setup, shard, rank, device, local, dtype, job["replicas"], events).run()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
