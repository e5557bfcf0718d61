"""One (device, dtype) of a sharded audit on one rank, as a pass of the engine's loop: the
shard's forward and manual backward per batch (with the plugin's collectives), then, a chunk
at a time, autograd's references, the comparisons and the replica checks."""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Container, Iterator, Mapping, Sequence
from contextlib import suppress
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist

from gradaudit.compare import Check, Comparison, Scratch, Tol
from gradaudit.compare.rows import check_rows
from gradaudit.errors import why
from gradaudit.plan import PlannedCase
from gradaudit.results import CaseResult
from gradaudit.run.events import CaseDone, Event
from gradaudit.targets.model.parts import unusable
from gradaudit.targets.sharded.exchange import columns, share_rows
from gradaudit.targets.sharded.layout import Replicated, piece, piece_rows
from gradaudit.targets.sharded.setup import DistSetup, full_gradients
from gradaudit.types import Batch, Forward


class PluginRaised(Exception):
    """A plugin raised on this rank; the message says which and where."""


# A rank runs the shard's batches back to back, holding their gradients, and settles them
# (autograd's references, the comparisons, the results) once per chunk: CHUNK_BATCHES
# batches, fewer where their tensors would pass CHUNK_BYTES. Work between the plugin's
# collectives made them wait longer; settling shares the references between the ranks
# (gradaudit.targets.sharded.exchange) and exchanges replicated gradients, one collective each
# per chunk (one a batch cost as much as the batch's own forward and backward on gloo).
CHUNK_BATCHES = 64
CHUNK_BYTES = 32 * 2**20


@dataclass
class _Held:
    """A batch whose shard gradients are in, waiting for autograd's and the comparisons."""

    index: int
    seed: int
    inputs: dict[str, torch.Tensor]  # as drawn: the shard got a copy it may change
    input_dtypes: dict[str, torch.dtype] = field(default_factory=dict)
    problems: dict[str, str] = field(default_factory=dict)  # why a gradient cannot be compared
    unknown: list[str] = field(default_factory=list)  # names returned that the model lacks


class RankPass:
    """One (device, dtype) on this rank: every batch, its checks, and the replica checks.
    `progress(batch)` tells the launcher where the rank is; `emit` writes events at once
    (the results this rank holds when an error stops it)."""

    def __init__(
        self,
        setup: DistSetup,
        shard: torch.nn.Module,
        rank: int,
        device: str,
        local: int,
        dtype: str,
        cases: list[PlannedCase],
        replicas: list[PlannedCase],
        progress: Callable[[int], None],
        emit: Callable[[list[Event]], None],
    ) -> None:
        self.setup, self.rank, self.device, self.dtype = setup, rank, device, dtype
        self.progress, self.emit, self.world = progress, emit, setup.world_size
        self.spec = setup.loaded.spec
        self.on = torch.device(f"cuda:{local}" if device.startswith("cuda") else device)
        if self.on.type == "cuda":
            torch.cuda.set_device(self.on)
        self.kind = f"rank{rank}"
        self.cases = cases
        self.cast = cast = getattr(torch, dtype)
        self.full = copy.deepcopy(setup.full).to(self.on, cast)
        self.shard = copy.deepcopy(shard).to(self.on, cast)
        planned = {c.check: {t.name: t.tol for t in c.tensors} for c in cases}
        self.tols = planned[self.kind]
        needs_truth = any(t.needs_truth for t in self.tols.values())
        self.truth = copy.deepcopy(self.full).to(torch.float64) if needs_truth else None
        self.replicated = [n for n in setup.audited if isinstance(setup.layout[n], Replicated)]
        held = {t.name: t.tol for c in replicas for t in c.tensors}  # the same for every rank
        self.replica_tols = {n: held.get(n, Tol("exact")) for n in self.replicated}
        self.events: list[Event] = []
        self.started = time.perf_counter()
        self.where = -1  # the batch in progress, for error messages
        self.params = {
            p.untyped_storage().data_ptr(): f"parameter {n}"
            for n, p in self.shard.named_parameters()
        }
        self.scratch = Scratch()
        self.pending: list[list[Any]] = []
        self.held: list[_Held] = []  # batches run, not yet settled
        self.chunk = self._chunk_batches(torch.empty((), dtype=cast).element_size())
        self.shapes = [setup.shapes[n] for n in setup.audited]
        # This rank's piece of each audited tensor, as an empty tensor to check gradients
        # against, and a row per batch of the chunk to copy them into (a plugin may reuse
        # its buffers; check_rows compares a chunk's rows at once).
        self.expected = {
            n: torch.empty(
                piece(
                    torch.empty(setup.shapes[n], device="meta"), setup.layout[n], rank, self.world
                ).shape,
                dtype=cast,
                device=self.on,
            )
            for n in setup.audited
        }
        self.manual = {
            n: torch.empty((self.chunk, *t.shape), dtype=cast, device=self.on)
            for n, t in self.expected.items()
        }
        # The chunk's replicated gradients and a flag each (usable), for the exchange.
        self.replica_rows: tuple[list[_Held], torch.Tensor] | None = None
        # Each piece's worst budget on this rank so far: a passing batch under it need not
        # be described in full (gradaudit.compare.screen). The parent's worst over the ranks is some
        # rank's worst, which that rank described.
        self.worst: dict[tuple[str, str], float] = {}

    def _chunk_batches(self, itemsize: int) -> int:
        """Batches per chunk: the same on every rank (settling takes collectives), so
        bounded by the full model's sizes, which bound any rank's piece: a batch holds its
        gradients, references, [truths,] replicated gradients and inputs."""
        shapes = self.setup.shapes
        audited = sum(math.prod(shapes[n]) for n in self.setup.audited)
        replicated = sum(math.prod(shapes[n]) for n in self.replicated)
        inputs = self.setup.input_numel
        size = (2 * audited + replicated + inputs) * itemsize
        size += 8 * audited if self.truth is not None else 0
        return max(1, min(CHUNK_BATCHES, CHUNK_BYTES // max(1, size)))

    def step(self, batch: Batch) -> None:
        """The shard's forward and manual backward of one batch, held until its chunk
        settles (the same batch count on every rank: settling takes collectives). On an
        error the rank settles what it holds alone, writes it, and stops."""
        self.progress(batch.index)
        self.where = batch.index
        try:
            self._run_shard(batch)
        except Exception:
            with suppress(Exception):  # keep what was run; the first error is the one
                self._settle(alone=True)
                self.emit(self.events)
                self.events = []
            self.progress(batch.index)
            raise
        if len(self.held) >= self.chunk:
            self._settle()
            self._exchange_replicas()

    def timed_out(self, batch: Batch, message: str) -> None:
        """Ranks run without the alarm (a signal inside a collective would desynchronise the
        ranks); the launcher stops a rank that is silent past the time limit."""

    def drain(self) -> Iterator[Event]:
        events, self.events = self.events, []
        yield from events

    def finish(self) -> Iterator[Event]:
        self._settle()
        self._exchange_replicas()
        yield from self.drain()
        seconds = time.perf_counter() - self.started
        name = torch.cuda.get_device_name(self.on) if self.on.type == "cuda" else self.device
        for case in self.cases:
            yield CaseDone(case.key, seconds, name)

    def _plugin(self, what: str, call: Any) -> Any:
        try:
            return call()
        except Exception as exc:
            where = f"{self.device}/{self.dtype} batch {self.where}"
            raise PluginRaised(f"{what} raised {why(exc)[:300]} ({where})") from exc

    def _run_shard(self, drawn: Batch) -> None:
        """The shard's forward and manual backward, with their collectives, and nothing else:
        the batch is held until the chunk settles."""
        index, seed = drawn.index, drawn.seed
        inputs = dict(drawn.to(self.on, self.cast).tensors)
        batch = Batch({n: t.clone() for n, t in inputs.items()}, index, seed)
        torch.default_generator.manual_seed(seed)
        model_name = f"model '{self.spec.model.plugin}'"
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
            held, slot = _Held(index, seed, inputs), len(self.held)
            for name in self.setup.audited:
                got = manual.get(name)
                problem = self._unusable(got, self.expected[name])
                if problem:
                    held.problems[name] = problem
                else:
                    assert isinstance(got, torch.Tensor)  # what _unusable lets through
                    self.manual[name][slot].copy_(got)
        held.unknown = [str(n) for n in manual if n not in self.setup.names]
        self.held.append(held)

    def _settle(self, alone: bool = False) -> None:
        """Autograd's references and the comparisons for every held batch, in order. `alone`:
        this rank computes every reference itself (after an error, when the other ranks may
        not reach a collective)."""
        held, self.held = self.held, []
        if not held:
            return
        references = self._references(held, self.full, self.cast, alone)
        truths = self._references(held, self.truth, torch.float64, alone) if self.truth else None
        scales = [0.0] * len(held)
        if truths is not None:
            scales = truths.abs().amax(dim=1).tolist()
        items = self._items(held, references, truths)
        checks = self._check_rows(self.kind, items, scales, [h.problems for h in held])
        for b, batch in enumerate(held):
            for name in self.setup.audited:
                problem = batch.problems.get(name)
                check = None if problem else checks[name][b]
                self._record(self.kind, name, batch.index, batch.seed, check, problem)
            for name in batch.unknown:
                message = f"gradients returned '{name}', which the model does not have"
                self._record(self.kind, name, batch.index, batch.seed, None, message)
            self._flush(batch.index, batch.seed)
        if self.world > 1 and self.replicated and not alone:
            self._hold_replicas(held)

    def _references(
        self, held: list[_Held], model: torch.nn.Module, dtype: torch.dtype, alone: bool
    ) -> torch.Tensor:
        """(batches, every audited tensor end to end): autograd's gradients; each rank
        computes its share of the batches (gradaudit.targets.sharded.exchange)."""
        model_name = f"model '{self.spec.model.plugin}'"

        def compute(k: int, row: torch.Tensor) -> None:
            batch = held[k]
            self.progress(batch.index)
            inputs = {
                n: t.to(dtype) if t.is_floating_point() else t for n, t in batch.inputs.items()
            }
            grads = self._plugin(
                model_name,
                lambda: full_gradients(
                    model, inputs, batch.seed, dtype, self.setup.audited, self.shapes
                ),
            )
            torch.cat([grads[n].reshape(-1) for n in self.setup.audited], out=row)

        width = sum(math.prod(shape) for shape in self.shapes)
        like = torch.empty(0, dtype=dtype, device=self.on)
        rank, world = (0, 1) if alone else (self.rank, self.world)
        return share_rows(len(held), width, compute, rank, world, like)

    def _items(
        self, held: list[_Held], references: torch.Tensor, truths: torch.Tensor | None
    ) -> dict[str, Comparison]:
        """Per audited tensor, the chunk's manual pieces against autograd's, a row a batch.
        A batch whose gradient cannot be compared gets autograd's in its row (its row's
        verdict is replaced by the problem)."""
        layout, rank, world = self.setup.layout, self.rank, self.world
        full = columns(references, self.shapes)
        true = columns(truths, self.shapes) if truths is not None else [None] * len(full)
        items = {}
        for name, reference, truth in zip(self.setup.audited, full, true, strict=True):
            expected = piece_rows(reference, layout[name], rank, world)
            manual = self.manual[name][: len(held)]
            for b, batch in enumerate(held):
                if name in batch.problems:
                    manual[b].copy_(expected[b])
            wide = None if truth is None else piece_rows(truth, layout[name], rank, world)
            items[name] = Comparison(manual, expected, self.tols[name], wide)
        return items

    def _hold_replicas(self, held: list[_Held]) -> None:
        """The chunk's replicated gradients end to end, a row a batch, and a flag per tensor
        (1: this rank's is usable), for the exchange."""
        rows = len(held)
        values = [self.manual[n][:rows].reshape(rows, -1) for n in self.replicated]
        flags = [[0.0 if n in h.problems else 1.0 for n in self.replicated] for h in held]
        values.append(torch.tensor(flags, dtype=self.cast, device=self.on))
        self.replica_rows = (held, torch.cat(values, dim=1))

    def _exchange_replicas(self) -> None:
        """Every rank's replicated gradients for the chunk, in one all-gather (one collective
        a batch cost as much as the batch's own forward and backward on gloo). The checks of
        each rank r >= 1 against rank 0 are shared out like the references: batch k of the
        chunk on rank k mod world (one rank doing them all kept the others waiting)."""
        if self.replica_rows is None:
            return
        held, mine = self.replica_rows
        self.replica_rows = None
        every = [torch.empty_like(mine) for _ in range(self.world)]
        dist.all_gather(every, mine)
        ours = held[self.rank :: self.world]
        if not ours:
            return
        count = len(self.replicated)
        flags = torch.stack([rows[self.rank :: self.world, -count:] for rows in every]).tolist()
        shapes = [tuple(self.expected[n].shape) for n in self.replicated]
        scales = [0.0] * len(ours)
        found: list[tuple[int, str, list[dict[str, str]], dict[str, list[Check]]]] = []
        first = columns(every[0][self.rank :: self.world, :-count], shapes)
        for r in range(1, self.world):
            own = columns(every[r][self.rank :: self.world, :-count], shapes)
            items = {
                name: Comparison(mine_r, rank0, self.replica_tols[name])
                for name, mine_r, rank0 in zip(self.replicated, own, first, strict=True)
            }
            problems = [
                self._replica_problems(flags[0][k], flags[r][k], r) for k in range(len(ours))
            ]
            kind = f"rank{r}.replicas"
            found.append((r, kind, problems, self._check_rows(kind, items, scales, problems)))
        for k, batch in enumerate(ours):
            for r, kind, problems, checks in found:
                for name in self.replicated:
                    problem = problems[k].get(name)
                    check = None if problem else checks[name][k]
                    self._record(kind, name, batch.index, batch.seed, check, problem, r)
            self._flush(batch.index, batch.seed)

    def _replica_problems(self, first: list[float], own: list[float], r: int) -> dict[str, str]:
        """Replicated tensors that rank 0 or rank r has no usable gradient for."""
        problems = {}
        for name, ok0, ok in zip(self.replicated, first, own, strict=True):
            if not ok0:
                problems[name] = "rank 0 has no usable gradient"
            elif not ok:
                problems[name] = f"rank {r} has no usable gradient"
        return problems

    def _check_rows(
        self,
        kind: str,
        items: dict[str, Comparison],
        scales: list[float],
        problems: Sequence[Container[str]],
    ) -> dict[str, list[Check]]:
        """check_rows, describing in full only the rows that beat their worst so far; a row
        whose name is in `problems[row]` has no verdict of its own (the problem is reported)."""
        beat = [self.worst.get((kind, name)) for name in items]
        skip = [{b for b, gone in enumerate(problems) if name in gone} for name in items]
        found = check_rows(list(items.values()), scales, self.scratch, beat, skip)
        checks = dict(zip(items, found, strict=True))
        for name, rows in checks.items():
            budgets = [c.budget for c, gone in zip(rows, problems, strict=True) if name not in gone]
            if budgets and max(budgets) > self.worst.get((kind, name), -math.inf):
                self.worst[(kind, name)] = max(budgets)
        return checks

    def _unusable(self, got: object, expected: torch.Tensor) -> str | None:
        """Why a returned gradient cannot be compared with this rank's piece of autograd's."""
        problem = unusable(got, expected, self.spec.gradients.plugin, self.params)
        if problem and problem.startswith("gradient has "):
            problem += " (this rank's piece)"
        return problem

    def _record(
        self,
        kind: str,
        name: str,
        index: int,
        seed: int,
        check: Check | None,
        error: str | None,
        rank: int | None = None,
    ) -> None:
        """Queue one result (of `rank`'s piece, this rank's by default)."""
        if error is not None:
            where = f"rank {self.rank if rank is None else rank}, batch {index} (seed {seed})"
            error = f"{where}: {error}"
        self.events.append(
            CaseResult(self.device, self.dtype, name, index, seed, check, error, None, kind)
        )

    def _flush(self, index: int, seed: int) -> None:
        """A batch's results are queued (the loop writes a sample's events at once)."""
