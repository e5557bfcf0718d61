"""One rank of a sharded audit, started by torchrun (`-m gradaudit.targets.sharded.rank DIR`).

The rank reads its job from DIR/job.json (the spec and the plan its launcher made), builds the
same setup, and runs its own cases (rank<R>, rank<R>.replicas) through the engine's loop,
writing events to DIR (targets.sharded.events). A plugin that raises may leave the ranks'
collectives out of step, so the rank keeps what it ran, records the error and exits: torchrun
then stops the others, and the launcher says which rank failed first, and why.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from collections.abc import Iterator, Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from gradaudit.errors import why
from gradaudit.plan import Plan, PlannedCase
from gradaudit.run.executor import die_with_parent
from gradaudit.run.loop import run_plan
from gradaudit.spec import load_spec
from gradaudit.targets import Context, Linked, Pass
from gradaudit.targets.sharded.case import PluginRaised, RankPass
from gradaudit.targets.sharded.events import RankFiles, read_state
from gradaudit.targets.sharded.exchange import same_full_model
from gradaudit.targets.sharded.setup import DistSetup, build, load_slices
from gradaudit.types import Batch

# A collective fails within milliseconds of a peer's death; a genuine error waits this long.
PEER_WAIT = 1.0


class Stopped(Exception):
    """torchrun asked this rank to stop (SIGTERM): a peer failed, or the run was stopped."""


class RankTarget:
    """This rank's side of a sharded target: the data's batches, a pass per device and dtype."""

    kind = "sharded"

    def __init__(
        self,
        setup: DistSetup,
        shard: torch.nn.Module,
        rank: int,
        local: int,
        files: RankFiles,
        plan: Plan,
    ) -> None:
        self.setup, self.shard, self.rank, self.local, self.files = setup, shard, rank, local, files
        self.plan = plan

    def samples(self, wanted: tuple[int, ...] | None) -> Iterator[Batch]:
        b = self.setup.loaded.spec.batches
        for batch in self.setup.dataset.batches(b.split, b.count, b.size, b.seed):
            if wanted is None or batch.index in wanted:
                yield batch

    def open(self, device: str, dtype: str, cases: list[PlannedCase], context: Context) -> Pass:
        """This rank's cases, and the replica checks of every rank (a rank checks the
        replicas of the batches it is given, whoever they belong to)."""
        setup, files = self.setup, self.files
        replicas = [
            c
            for c in self.plan.cases
            if c.device == device and c.dtype == dtype and c.check.endswith(".replicas")
        ]
        return RankPass(
            setup, self.shard, self.rank, device, self.local, dtype, cases, replicas,
            files.at, files.emit,
        )  # fmt: skip

    def link(self, passes: Sequence[Pass]) -> Linked:
        return Linked(passes)


def _settle_before_stopping(files: RankFiles) -> None:
    """SIGTERM raises Stopped, so that the rank settles the batches it holds on its way out
    (a peer's failure is followed by torchrun's SIGTERM, often before this rank's collective
    fails); once the rank is on its way out, SIGTERM waits for it."""

    def stop(signum: int, frame: object) -> None:
        if not files.leaving:
            files.leaving = True
            raise Stopped("stopped by SIGTERM")

    signal.signal(signal.SIGTERM, stop)


def _peer_gone(folder: Path, rank: int, world: int, wait: float = PEER_WAIT) -> bool:
    """Whether another rank died before finishing: then this rank's error (a collective that
    failed, whatever its text) is a consequence, not the cause. A peer's sockets close as it
    exits, a moment before its process shows as dead, so the check waits a little."""
    deadline = time.monotonic() + wait
    while True:
        for peer in range(world):
            if peer != rank and _dead(folder / f"rank{peer}.state"):
                return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.02)


def _dead(state: Path) -> bool:
    """A rank that said it was ready and is gone (or a zombie) without a last word."""
    said = read_state(state)
    if not said or any(s["state"] in ("finished", "abort") for s in said):
        return False
    pid = int(said[0].get("pid", 0))
    if not sys.platform.startswith("linux"):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        except OSError:
            return False
        return False
    try:
        stat = Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[1][:1]
    except (OSError, IndexError):
        return True
    return stat in ("Z", "X")


def main() -> None:
    folder = Path(sys.argv[1])
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local = int(os.environ.get("LOCAL_RANK", rank))
    die_with_parent(os.getppid())  # torchrun: no rank outlives it
    files = RankFiles(folder, rank)
    _settle_before_stopping(files)
    files.state("ready", pid=os.getpid())
    try:
        job = json.loads((folder / "job.json").read_text(encoding="utf-8"))
        _run(job, rank, world, local, files)
    except BaseException as exc:
        # The last word is written whole: torchrun's SIGTERM, sent once a peer died, would
        # otherwise raise in the middle of it and leave this rank a silent death (exit 1).
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT})
        message = str(exc) if isinstance(exc, PluginRaised) else why(exc)
        cause = exc.__context__ if isinstance(exc, PluginRaised) else exc
        peer = isinstance(exc, Stopped) or isinstance(cause, Stopped)
        peer = peer or _peer_gone(folder, rank, world)
        files.state("abort", message=f"rank {rank}: {message}", peer=peer, batch=files.batch)
        os._exit(1)
    files.state("finished")
    files.handle.close()


def _run(job: dict[str, Any], rank: int, world: int, local: int, files: RankFiles) -> None:
    timeout = job.get("timeout")  # the launcher stops silent ranks; this is a backstop
    limit = timedelta(seconds=max(60.0, 2 * timeout)) if timeout else timedelta(minutes=30)
    dist.init_process_group(job["backend"], timeout=limit)
    loaded = load_spec(job["spec"], tuple(job["sets"]))
    if loaded.sha256 != job["sha256"]:
        raise RuntimeError(f"{loaded.path} changed on disk after the launch")
    setup = DistSetup.load(loaded, world)
    same_full_model(setup.full, world, f"cuda:{local}" if job["backend"] == "nccl" else "cpu")
    model_args = dict(getattr(setup.dataset, "model_args", {}))
    shard = build(loaded, setup.factory, rank, world, model_args)
    load_slices(shard, setup.full, setup.layout, rank, world)
    plan = Plan.from_dict(job["plan"])
    mine = {f"rank{rank}", f"rank{rank}.replicas"}
    wanted = {c.key for c in plan.cases if c.check in mine}
    if job.get("cases") is not None:
        wanted &= {tuple(k) for k in job["cases"]}
    target = RankTarget(setup, shard, rank, local, files, plan)
    run_plan(target, plan, files.emit, Context(), wanted)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
