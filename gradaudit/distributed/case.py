"""One (device, dtype) of a distributed audit on one rank: the shard's batches, autograd's
references, the comparisons, the replica checks, and the events that carry the results."""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Mapping
from contextlib import suppress
from dataclasses import dataclass, field, fields
from typing import Any

import torch
import torch.distributed as dist

from gradaudit.compare import Check, Comparison, Scratch, Tol, check_all, mismatch, tolerance_for
from gradaudit.distributed.events import Events, PluginRaised, why
from gradaudit.distributed.exchange import share_rows, unflatten
from gradaudit.distributed.layout import Replicated, piece
from gradaudit.distributed.setup import DistSetup, draw_inputs, input_shapes, make_batch
from gradaudit.types import Forward

CHECK_FIELDS = [f.name for f in fields(Check)]  # the order of a result's values in an event
# A rank runs the shard's batches back to back, holding their gradients, and settles them
# (autograd's references, the comparisons, the results) once per chunk: CHUNK_BATCHES
# batches, fewer where their tensors would pass CHUNK_BYTES. Work between the plugin's
# collectives made them wait longer; settling shares the references between the ranks
# (gradaudit.distributed.exchange) and exchanges replicated gradients, one collective each
# per chunk (one a batch cost as much as the batch's own forward and backward on gloo).
CHUNK_BATCHES = 64
CHUNK_BYTES = 32 * 2**20


@dataclass
class _Held:
    """A batch whose shard gradients are in, waiting for autograd's and the comparisons."""

    index: int
    seed: int
    inputs: dict[str, torch.Tensor]  # as drawn: the shard got a copy it may change
    manual: dict[str, torch.Tensor] = field(default_factory=dict)  # copies: buffers get reused
    problems: dict[str, str] = field(default_factory=dict)  # why a gradient cannot be compared
    unknown: list[str] = field(default_factory=list)  # names returned that the model lacks


class Case:
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
        self.held: list[_Held] = []  # batches run, not yet settled
        # Replicated gradients held for the chunk's exchange: (batch, seed, values and flags).
        self.rows: list[tuple[int, int, torch.Tensor]] = []
        self.replica_shapes: list[torch.Size] = []
        self.chunk = self._chunk_batches(torch.empty((), dtype=cast).element_size())
        self.shapes = [setup.shapes[n] for n in setup.audited]
        # Each piece's worst budget on this rank so far: a passing batch under it need not
        # be described in full (gradaudit.screen). The parent's worst over the ranks is some
        # rank's worst, which that rank described.
        self.worst: dict[tuple[str, str], float] = {}

    def _chunk_batches(self, itemsize: int) -> int:
        """Batches per chunk: the same on every rank (settling takes collectives), so
        bounded by the full model's sizes, which bound any rank's piece: a batch holds its
        gradients, references, [truths,] replicated gradients and inputs."""
        shapes, rows = self.setup.shapes, self.spec.batches.size or 1
        audited = sum(math.prod(shapes[n]) for n in self.setup.audited)
        replicated = sum(math.prod(shapes[n]) for n in self.replicated)
        inputs = sum(rows * math.prod(s) for s in input_shapes(self.setup.loaded).values())
        size = (2 * audited + replicated + inputs) * itemsize
        size += 8 * audited if self.truth is not None else 0
        return max(1, min(CHUNK_BATCHES, CHUNK_BYTES // max(1, size)))

    def run(self) -> None:
        start = time.perf_counter()
        name = torch.cuda.get_device_name(self.on) if self.on.type == "cuda" else self.device
        self.events.start_case()
        self.events.emit("start", device=self.device, dtype=self.dtype, device_name=name)
        count = self.spec.batches.count or 1
        for index in range(count):
            self._at(index)
            try:
                self._run_shard(index)
            except Exception:
                with suppress(Exception):  # keep what was run; the first error is the one
                    self._settle(alone=True)
                self._at(index)
                raise
            if (index + 1) % self.chunk == 0 or index + 1 == count:  # on every rank alike
                self._settle()
                self._exchange_replicas()
                self.events.flush()  # the chunk's results, in one write
        seconds = time.perf_counter() - start
        self.events.emit("done", device=self.device, dtype=self.dtype, seconds=seconds)

    def _at(self, index: int) -> None:
        """Say which batch this rank is on (in an abort, and to the launcher)."""
        self.events.where = {"device": self.device, "dtype": self.dtype, "batch": index}
        self.events.at(index)

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
        for name, target, shape in zip(self.setup.audited, targets, self.shapes, strict=True):
            if tuple(target.shape) != shape:
                raise ValueError(
                    f"the full model's '{name}' has shape {tuple(target.shape)}, {shape} on "
                    "batch 0: a distributed audit needs the same shapes on every batch"
                )
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
            raise PluginRaised(f"{what} raised {why(exc)[:300]} ({where})") from exc

    def _run_shard(self, index: int) -> None:
        """The shard's forward and manual backward, with their collectives, and nothing else:
        the batch is held until the chunk settles."""
        tensors, seed = draw_inputs(self.setup.loaded, index)
        cast = getattr(torch, self.dtype)
        inputs = {n: t.to(self.on, cast) for n, t in tensors.items()}
        batch = make_batch({n: t.clone() for n, t in inputs.items()}, index, seed)
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
            held = _Held(index, seed, inputs)
            for name in self.setup.audited:
                problem = self._unusable(manual.get(name))
                if problem:
                    held.problems[name] = problem
                else:
                    held.manual[name] = manual[name].clone()
        held.unknown = [str(n) for n in manual if n not in self.setup.names]
        self.held.append(held)

    def _settle(self, alone: bool = False) -> None:
        """Autograd's references and the comparisons for every held batch, in order. `alone`:
        this rank computes every reference itself (after an error, when the other ranks may
        not reach a collective)."""
        held, self.held = self.held, []
        if not held:
            return
        cast = getattr(torch, self.dtype)
        references = self._references(held, self.full, cast, alone)
        truths = self._references(held, self.truth, torch.float64, alone) if self.truth else []
        for k, batch in enumerate(held):
            self._at(batch.index)
            truth, scale = None, 0.0
            if truths:
                truth, scale = truths[k][1], float(truths[k][0].abs().max())
            usable = self._compare(batch, references[k][1], truth, scale)
            self._flush(batch.index, batch.seed)
            if self.world > 1 and self.replicated and not alone:
                self._hold_replicas(batch.index, batch.seed, usable, references[k][1])

    def _references(
        self, held: list[_Held], model: torch.nn.Module, dtype: torch.dtype, alone: bool
    ) -> list[tuple[torch.Tensor, dict[str, torch.Tensor]]]:
        """Per held batch, autograd's gradients end to end in one row, and as tensors; each
        rank computes its share of the batches (gradaudit.distributed.exchange)."""
        model_name = f"model '{self.spec.model.plugin}'"

        def compute(k: int, row: torch.Tensor) -> None:
            batch = held[k]
            self._at(batch.index)
            inputs = {n: t.to(dtype) for n, t in batch.inputs.items()}
            grads = self._plugin(
                model_name, lambda: self._reference(model, inputs, batch.seed, dtype)
            )
            torch.cat([grads[n].reshape(-1) for n in self.setup.audited], out=row)

        width = sum(math.prod(shape) for shape in self.shapes)
        like = torch.empty(0, dtype=dtype, device=self.on)
        rank, world = (0, 1) if alone else (self.rank, self.world)
        rows = share_rows(len(held), width, compute, rank, world, like)
        return [(row, unflatten(row, self.setup.audited, self.shapes)) for row in rows]

    def _compare(
        self,
        held: _Held,
        reference: dict[str, torch.Tensor],
        truth: dict[str, torch.Tensor] | None,
        scale: float,
    ) -> dict[str, torch.Tensor]:
        """This rank's piece of every audited tensor against the same piece of autograd's."""
        layout, rank, world = self.setup.layout, self.rank, self.world
        ready: dict[str, Comparison] = {}
        problems: dict[str, str] = {}
        index, seed = held.index, held.seed
        for name in self.setup.audited:
            expected = piece(reference[name], layout[name], rank, world)
            problem = held.problems.get(name)
            if problem is None:
                mismatched = mismatch(held.manual[name], expected)
                problem = f"gradient has {mismatched} (this rank's piece)" if mismatched else None
            if problem:
                problems[name] = problem
                continue
            true = piece(truth[name], layout[name], rank, world) if truth else None
            ready[name] = Comparison(held.manual[name], expected, self.tols[name], true)
        checks = self._check(self.kind, ready, scale)
        results = dict(zip(ready, checks, strict=True))
        for name in self.setup.audited:
            self._record(self.kind, name, index, seed, results.get(name), problems.get(name))
        for name in held.unknown:
            message = f"gradients returned '{name}', which the model does not have"
            self._record(self.kind, name, index, seed, None, message)
        return {n: c.manual for n, c in ready.items()}

    def _hold_replicas(
        self, index: int, seed: int, usable: dict[str, torch.Tensor], ref: dict[str, torch.Tensor]
    ) -> None:
        """Keep this batch's replicated gradients, with a flag per tensor, for the exchange."""
        if not self.replica_shapes:  # the same every batch
            self.replica_shapes = [ref[n].shape for n in self.replicated]
        sizes = [math.prod(shape) for shape in self.replica_shapes]
        row = torch.zeros(sum(sizes) + len(sizes), dtype=getattr(torch, self.dtype), device=self.on)
        values = row[: sum(sizes)].split_with_sizes(sizes)
        for i, name in enumerate(self.replicated):
            if name in usable:
                values[i].copy_(usable[name].reshape(-1))
                row[sum(sizes) + i] = 1  # a flag per tensor: this rank has a usable gradient
        self.rows.append((index, seed, row))

    def _exchange_replicas(self) -> None:
        """Every rank's held replicated gradients, in one all-gather (one collective a batch
        cost as much as the batch's own forward and backward on gloo). The checks of each
        rank r >= 1 against rank 0 are shared out like the references: batch k of the chunk
        on rank k mod world (one rank doing them all kept the others waiting)."""
        if not self.rows:
            return
        held, self.rows = self.rows, []
        mine = torch.stack([row for _, _, row in held])  # (batches, values + flags)
        every = [torch.empty_like(mine) for _ in range(self.world)]
        dist.all_gather(every, mine)
        shapes, count = self.replica_shapes, len(self.replicated)
        sizes = [math.prod(shape) for shape in shapes]
        flags = torch.stack([rows[:, -count:] for rows in every]).tolist()  # one read
        for k, (index, seed, _) in enumerate(held):
            if k % self.world != self.rank:
                continue
            rank0 = every[0][k, :-count].split_with_sizes(sizes)
            for r in range(1, self.world):
                own = every[r][k, :-count].split_with_sizes(sizes)
                ready: dict[str, Comparison] = {}
                problems: dict[str, str] = {}
                for i, name in enumerate(self.replicated):
                    if not flags[0][k][i]:
                        problems[name] = "rank 0 has no usable gradient"
                    elif not flags[r][k][i]:
                        problems[name] = f"rank {r} has no usable gradient"
                    else:
                        shape, tol = shapes[i], self.replica_tols[name]
                        ready[name] = Comparison(own[i].view(shape), rank0[i].view(shape), tol)
                kind = f"rank{r}.replicas"
                results = dict(zip(ready, self._check(kind, ready), strict=True))  # one call
                for name in self.replicated:
                    check, problem = results.get(name), problems.get(name)
                    self._record(kind, name, index, seed, check, problem, r)
            self._flush(index, seed)

    def _check(self, kind: str, ready: Mapping[str, Comparison], scale: float = 0.0) -> list[Check]:
        """check_all, describing in full only the pieces that beat their worst so far."""
        beat = [self.worst.get((kind, name)) for name in ready]
        checks = check_all(list(ready.values()), scale, self.scratch, beat)
        for name, found in zip(ready, checks, strict=True):
            if found.budget > self.worst.get((kind, name), -math.inf):
                self.worst[(kind, name)] = found.budget
        return checks

    def _unusable(self, got: object) -> str | None:
        """Why a returned gradient cannot be compared, as far as the shard alone tells."""
        if got is None:
            return f"gradients '{self.spec.gradients.plugin}' gave no gradient"
        if not isinstance(got, torch.Tensor):
            return f"gradient is a {type(got).__name__}, not a tensor"
        if got.requires_grad:
            return "gradient requires grad: return plain tensors"
        alias = self.params.get(got.untyped_storage().data_ptr())
        if alias:
            return f"gradient shares memory with parameter {alias}: return a new tensor"
        return None

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
        """Queue one result (of `rank`'s piece, this rank's by default); `_flush` writes a
        batch's results as one line (a line per tensor cost more than the comparisons)."""
        if error is not None:
            where = f"rank {self.rank if rank is None else rank}, batch {index} (seed {seed})"
            self.pending.append([kind, name, f"{where}: {error}"])
        else:
            assert check is not None
            self.pending.append([kind, name, [getattr(check, f) for f in CHECK_FIELDS]])

    def _flush(self, index: int, seed: int) -> None:
        if self.pending:
            where = {"device": self.device, "dtype": self.dtype, "batch": index, "seed": seed}
            self.events.emit("cases", flush=False, items=self.pending, **where)
            self.pending = []
