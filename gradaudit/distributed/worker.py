"""One rank of a distributed audit, started by torchrun (`-m gradaudit.distributed.worker DIR`).

The rank reads its job from DIR/job.json and streams events, one JSON line each, to
DIR/rank<R>.jsonl, which the launcher folds into the report. A plugin that raises may
leave the ranks' collectives out of step, so the rank records the error and exits:
torchrun then stops the others, and the launcher reports the run as stopped.
"""

from __future__ import annotations

import copy
import ctypes
import json
import math
import os
import signal
import sys
import time
from collections.abc import Mapping
from dataclasses import fields
from datetime import timedelta
from pathlib import Path
from typing import IO, Any

import torch
import torch.distributed as dist

from gradaudit.compare import Check, Comparison, Scratch, Tol, check_all, mismatch, tolerance_for
from gradaudit.distributed.layout import Replicated, piece
from gradaudit.distributed.setup import DistSetup, build, draw_inputs, load_slices, make_batch
from gradaudit.spec import load_spec
from gradaudit.types import Forward

CHECK_FIELDS = [f.name for f in fields(Check)]  # the order of a result's values in an event
# Replicated gradients are exchanged once for this many batches, or sooner when this many
# bytes are held (one broadcast a batch cost as much as the batch's audit on gloo).
REPLICA_BATCHES = 64
REPLICA_BYTES = 32 * 2**20


class Events:
    """Appends one JSON line per event and flushes it, so a killed rank loses nothing sent."""

    def __init__(self, path: Path) -> None:
        self.handle: IO[str] = open(path, "a", encoding="utf-8")  # noqa: SIM115
        self.where: dict[str, Any] = {}  # the case and batch in progress, for "abort"

    def emit(self, event: str, **fields: Any) -> None:
        # NaN and inf as Python's json writes them (the launcher's json reads them back)
        self.handle.write(json.dumps({"event": event, "t": time.time(), **fields}) + "\n")
        self.handle.flush()


def _why(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__


# A collective that fails because another rank is gone: a consequence, not the cause.
PEER_LOST = ("Connection reset by peer", "Connection closed by peer", "Broken pipe")


class PluginRaised(Exception):
    """A plugin raised on this rank; the message says which and where."""


def _die_with_launcher() -> None:
    """Linux: SIGKILL this rank when torchrun dies, so that no rank outlives a killed run."""
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        if os.getppid() == 1:
            os._exit(1)


def main() -> None:
    run_dir = Path(sys.argv[1])
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local = int(os.environ.get("LOCAL_RANK", rank))
    _die_with_launcher()
    events = Events(run_dir / f"rank{rank}.jsonl")
    events.emit("ready", pid=os.getpid())
    try:
        job = json.loads((run_dir / "job.json").read_text(encoding="utf-8"))
        _run(job, rank, world, local, events)
    except BaseException as exc:
        message = str(exc) if isinstance(exc, PluginRaised) else _why(exc)
        cause = exc.__context__ if isinstance(exc, PluginRaised) else exc
        peer = any(sign in str(cause) for sign in PEER_LOST) or isinstance(cause, dist.DistError)
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
    shard = build(loaded, setup.factory, rank, world)
    load_slices(shard, setup.full, setup.layout, rank, world)
    for device in job["devices"]:
        for dtype in job["dtypes"]:
            events.where = {"device": device, "dtype": dtype}
            _Case(setup, shard, rank, device, local, dtype, job["replicas"], events).run()
    dist.destroy_process_group()


class _Case:
    """One (device, dtype) on this rank: every batch, its checks, and the replica checks."""

    def __init__(
        self,
        setup: DistSetup,
        shard: torch.nn.Module,
        rank: int,
        device: str,
        local: int,
        dtype: str,
        replicas: str,
        events: Events,
    ) -> None:
        self.setup, self.rank, self.device, self.dtype = setup, rank, device, dtype
        self.events, self.world = events, setup.world_size
        self.spec = setup.loaded.spec
        self.on = torch.device(f"cuda:{local}" if device.startswith("cuda") else device)
        if self.on.type == "cuda":
            torch.cuda.set_device(self.on)
        self.kind = f"rank{rank}"
        cast = getattr(torch, dtype)
        self.full = copy.deepcopy(setup.full).to(self.on, cast)
        self.shard = copy.deepcopy(shard).to(self.on, cast)
        self.tols = {n: tolerance_for(self.spec.tolerance, n, device, dtype) for n in setup.audited}
        needs_truth = any(t.mode == "baseline" for t in self.tols.values())
        self.truth = copy.deepcopy(self.full).to(torch.float64) if needs_truth else None
        self.replicated = [n for n in setup.audited if isinstance(setup.layout[n], Replicated)]
        self.replica_tols = {
            n: Tol("exact") if replicas == "exact" else Tol("allclose", t.rtol, t.atol)
            for n, t in self.tols.items()
        }
        self.params = {p.untyped_storage().data_ptr(): n for n, p in self.shard.named_parameters()}
        self.scratch = Scratch()
        self.pending: list[list[Any]] = []
        # Replicated gradients held for the next exchange: (batch, seed, values and flags).
        self.held: list[tuple[int, int, torch.Tensor]] = []
        self.replica_shapes: list[torch.Size] = []
        # Each piece's worst budget on this rank so far: a passing batch under it need not
        # be described in full (gradaudit.screen). The parent's worst over the ranks is some
        # rank's worst, which that rank described.
        self.worst: dict[tuple[str, str], float] = {}

    def run(self) -> None:
        start = time.perf_counter()
        name = torch.cuda.get_device_name(self.on) if self.on.type == "cuda" else self.device
        self.events.emit("start", device=self.device, dtype=self.dtype, device_name=name)
        b = self.spec.batches
        for index in range(b.count or 1):
            self.events.where = {"device": self.device, "dtype": self.dtype, "batch": index}
            self.events.emit("batch", device=self.device, dtype=self.dtype, batch=index)
            self._batch(index)
        self._exchange_replicas()
        seconds = time.perf_counter() - start
        self.events.emit("done", device=self.device, dtype=self.dtype, seconds=seconds)

    def _reference(
        self,
        model: torch.nn.Module,
        inputs: Mapping[str, torch.Tensor],
        seed: int,
        wanted: torch.dtype,
    ) -> dict[str, torch.Tensor]:
        """Autograd's gradient of the full model's loss for every audited tensor."""
        torch.default_generator.manual_seed(seed)
        forward = model(**inputs)
        if not isinstance(forward, Forward):
            raise TypeError(f"forward returned {type(forward).__name__}, not gradaudit.Forward")
        odd = [
            n
            for n, t in {"loss": forward.loss, **forward.intermediates}.items()
            if t.dtype != wanted
        ]
        if odd:  # never a silent run in another dtype than the case's
            raise TypeError(
                f"the full model computed {', '.join(odd)} in another dtype than {wanted}"
            )
        available = {**forward.intermediates, **dict(model.named_parameters())}
        targets = [available[n] for n in self.setup.audited]
        grads = torch.autograd.grad(forward.loss, targets, allow_unused=True)
        return {
            n: torch.zeros_like(t) if g is None else g
            for n, t, g in zip(self.setup.audited, targets, grads, strict=True)
        }

    def _plugin(self, what: str, call: Any) -> Any:
        try:
            return call()
        except Exception as exc:
            where = f"{self.device}/{self.dtype} batch {self.events.where.get('batch')}"
            raise PluginRaised(f"{what} raised {_why(exc)[:300]} ({where})") from exc

    def _batch(self, index: int) -> None:
        tensors, seed = draw_inputs(self.setup.loaded, index)
        cast = getattr(torch, self.dtype)
        inputs = {n: t.to(self.on, cast) for n, t in tensors.items()}
        model_name = f"model '{self.spec.model.plugin}'"
        reference = self._plugin(model_name, lambda: self._reference(self.full, inputs, seed, cast))
        truth: dict[str, torch.Tensor] | None = None
        scale = 0.0
        if self.truth is not None:
            wide = {n: t.to(torch.float64) for n, t in inputs.items()}
            truth = self._plugin(
                model_name, lambda: self._reference(self.truth, wide, seed, torch.float64)
            )
            scale = max((float(t.abs().max()) for t in truth.values() if t.numel()), default=0.0)
        batch = make_batch({n: t.clone() for n, t in inputs.items()}, index, seed)
        torch.default_generator.manual_seed(seed)
        with torch.no_grad():
            forward = self._plugin(
                f"{model_name} (rank {self.rank}'s shard)", lambda: self.shard(**batch.tensors)
            )
            if not isinstance(forward, Forward):
                raise PluginRaised(f"the shard's forward returned {type(forward).__name__}")
            options = self.spec.gradients.options
            fn = self.setup.gradient_fn
            manual = self._plugin(
                f"gradients '{self.spec.gradients.plugin}'",
                lambda: fn(self.shard, batch, forward.detached(), **options),
            )
        if not isinstance(manual, Mapping):
            raise PluginRaised(f"gradients returned {type(manual).__name__}, not a mapping")
        usable = self._compare(index, seed, manual, reference, truth, scale)
        self._flush(index, seed)
        if self.world > 1 and self.replicated:
            self._queue_replicas(index, seed, usable, reference)

    def _compare(
        self,
        index: int,
        seed: int,
        manual: Mapping[str, Any],
        reference: dict[str, torch.Tensor],
        truth: dict[str, torch.Tensor] | None,
        scale: float,
    ) -> dict[str, torch.Tensor]:
        """This rank's piece of every audited tensor against the same piece of autograd's."""
        layout, rank, world = self.setup.layout, self.rank, self.world
        ready: dict[str, Comparison] = {}
        problems: dict[str, str] = {}
        for name in self.setup.audited:
            expected = piece(reference[name], layout[name], rank, world)
            problem = self._unusable(manual.get(name), expected)
            if problem:
                problems[name] = problem
                continue
            true = piece(truth[name], layout[name], rank, world) if truth else None
            ready[name] = Comparison(manual[name], expected, self.tols[name], true)
        checks = self._check(self.kind, ready, scale)
        results = dict(zip(ready, checks, strict=True))
        for name in self.setup.audited:
            self._record(self.kind, name, index, seed, results.get(name), problems.get(name))
        for name in manual:
            if name not in self.setup.names:
                message = f"gradients returned '{name}', which the model does not have"
                self._record(self.kind, str(name), index, seed, None, message)
        return {n: c.manual for n, c in ready.items()}

    def _queue_replicas(
        self, index: int, seed: int, usable: dict[str, torch.Tensor], ref: dict[str, torch.Tensor]
    ) -> None:
        """Keep this batch's replicated gradients (a copy: a plugin may reuse its buffers)
        until REPLICA_BATCHES batches or REPLICA_BYTES are held, then exchange them all."""
        if not self.replica_shapes:  # the same every batch
            self.replica_shapes = [ref[n].shape for n in self.replicated]
        sizes = [math.prod(shape) for shape in self.replica_shapes]
        row = torch.zeros(sum(sizes) + len(sizes), dtype=getattr(torch, self.dtype), device=self.on)
        values = row[: sum(sizes)].split_with_sizes(sizes)
        for i, name in enumerate(self.replicated):
            if name in usable:
                values[i].copy_(usable[name].reshape(-1))
                row[sum(sizes) + i] = 1  # a flag per tensor: this rank has a usable gradient
        self.held.append((index, seed, row))
        held_bytes = len(self.held) * row.numel() * row.element_size()  # rows alike
        if len(self.held) >= REPLICA_BATCHES or held_bytes >= REPLICA_BYTES:
            self._exchange_replicas()

    def _exchange_replicas(self) -> None:
        """Rank 0 broadcasts its held replicated gradients in one collective (one a batch
        cost as much as the batch's own forward and backward on gloo); every other rank
        compares its own with them, batch by batch, and sends each batch's results."""
        if not self.held:
            return
        held, self.held = self.held, []
        mine = torch.stack([row for _, _, row in held])  # (batches, values + flags)
        theirs = mine if self.rank == 0 else torch.empty_like(mine)
        dist.broadcast(theirs, src=0)
        if self.rank == 0:
            return
        shapes, count = self.replica_shapes, len(self.replicated)
        sizes = [math.prod(shape) for shape in shapes]
        flags = torch.stack([theirs[:, -count:], mine[:, -count:]]).tolist()  # one read
        kind = f"{self.kind}.replicas"
        for k, (index, seed, _) in enumerate(held):
            pieces = zip(
                theirs[k, :-count].split_with_sizes(sizes),
                mine[k, :-count].split_with_sizes(sizes),
                strict=True,
            )
            ready: dict[str, Comparison] = {}
            problems: dict[str, str] = {}
            for i, (name, (rank0, own)) in enumerate(zip(self.replicated, pieces, strict=True)):
                if not flags[0][k][i]:
                    problems[name] = "rank 0 has no usable gradient"
                elif not flags[1][k][i]:
                    problems[name] = "no usable gradient on this rank"
                else:
                    tol = self.replica_tols[name]
                    ready[name] = Comparison(own.view(shapes[i]), rank0.view(shapes[i]), tol)
            results = dict(zip(ready, self._check(kind, ready), strict=True))  # one call
            for name in self.replicated:
                self._record(kind, name, index, seed, results.get(name), problems.get(name))
            self._flush(index, seed)

    def _check(self, kind: str, ready: Mapping[str, Comparison], scale: float = 0.0) -> list[Check]:
        """check_all, describing in full only the pieces that beat their worst so far."""
        beat = [self.worst.get((kind, name)) for name in ready]
        checks = check_all(list(ready.values()), scale, self.scratch, beat)
        for name, found in zip(ready, checks, strict=True):
            if found.budget > self.worst.get((kind, name), -math.inf):
                self.worst[(kind, name)] = found.budget
        return checks

    def _unusable(self, got: object, expected: torch.Tensor) -> str | None:
        if got is None:
            return f"gradients '{self.spec.gradients.plugin}' gave no gradient"
        if not isinstance(got, torch.Tensor):
            return f"gradient is a {type(got).__name__}, not a tensor"
        if got.requires_grad:
            return "gradient requires grad: return plain tensors"
        alias = self.params.get(got.untyped_storage().data_ptr())
        if alias:
            return f"gradient shares memory with parameter {alias}: return a new tensor"
        problem = mismatch(got, expected)
        return f"gradient has {problem} (this rank's piece)" if problem else None

    def _record(
        self, kind: str, name: str, index: int, seed: int, check: Check | None, error: str | None
    ) -> None:
        """Queue one result; `_flush` writes a batch's results as one line (a line per tensor
        cost more than the comparisons: dataclasses.asdict and a flush each)."""
        if error is not None:
            where = f"rank {self.rank}, batch {index} (seed {seed})"
            self.pending.append([kind, name, f"{where}: {error}"])
        else:
            assert check is not None
            self.pending.append([kind, name, [getattr(check, f) for f in CHECK_FIELDS]])

    def _flush(self, index: int, seed: int) -> None:
        if self.pending:
            where = {"device": self.device, "dtype": self.dtype, "batch": index, "seed": seed}
            self.events.emit("cases", items=self.pending, **where)
            self.pending = []


if __name__ == "__main__":
    main()
