"""A sharded audit as a target: planned in the executor (the full model, the layout, a case
per rank and device and dtype, and the replica checks), run by torchrun's ranks
(gradaudit.run.torchrun launches them; targets.sharded.rank is each rank's side)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from gradaudit.plan import Plan, PlannedCase, Skeleton
from gradaudit.run.processes import check_machine
from gradaudit.spec.common import LoadedSpec
from gradaudit.targets import Context, Linked, Pass
from gradaudit.targets.sharded.layout import Replicated
from gradaudit.targets.sharded.setup import DistSetup, first_batch
from gradaudit.tolerance import Tol, tolerance_for


class ShardedTarget:
    kind = "sharded"

    def __init__(self, loaded: LoadedSpec) -> None:
        self.loaded, self.spec = loaded, loaded.spec
        self.cfg = loaded.spec.distributed
        assert self.cfg is not None
        # The machine first: a world it cannot hold is refused before any model is built.
        self.absent = check_machine(loaded, list(loaded.spec.devices))
        self.setup = DistSetup.load(loaded, self.cfg.world_size)

    def head(self) -> Plan:
        spec, cfg, setup = self.spec, self.cfg, self.setup
        b = spec.batches
        first = first_batch(self.loaded, setup.dataset)
        size = "all" if b.size is None else str(b.size)
        inputs = tuple(
            f"{n} {'x'.join([size, *map(str, t.shape[1:])]) if t.dim() else 'scalar'}"
            for n, t in first.tensors.items()
        )
        count = b.count if b.count is not None else "all"
        header = (
            f"model {spec.model.plugin} on {cfg.world_size} ranks ({cfg.backend}), gradients "
            f"{spec.gradients.plugin}, {len(setup.audited)} tensors, {count} batches of "
            f"{', '.join(inputs)} ({b.split}, seed {b.seed})"
        )
        return Plan(
            kind=self.kind,
            spec_name=spec.name,
            spec_path=str(self.loaded.path),
            spec_sha256=self.loaded.sha256,
            cases=(),
            tensors=tuple(setup.audited),
            inputs=inputs,
            facts={
                "seed": str(b.seed),
                "batches": f"{b.split}: count={b.count} size={b.size}",
                "tolerance_mode": spec.tolerance.mode,
                "world_size": str(cfg.world_size),
                "backend": cfg.backend,
            },
            header=header,
            samples=None if b.count is None else tuple(range(b.count)),
        )

    def skeletons(self, devices: Sequence[str], dtypes: Sequence[str]) -> list[Skeleton]:
        absent = self.absent
        setup, world = self.setup, self.cfg.world_size
        audited = tuple(setup.audited)
        replicated = tuple(n for n in audited if isinstance(setup.layout[n], Replicated))
        count = self.spec.batches.count
        samples = None if count is None else tuple(range(count))
        found = []
        for device in devices:
            skip = absent.get(device)
            for dtype in dtypes:
                for rank in range(world):
                    found.append(
                        Skeleton(device, dtype, f"rank{rank}", audited, samples, skip, dtype)
                    )
                for rank in range(1, world) if replicated else ():
                    tols = {n: self._replica_tol(n, device, dtype) for n in replicated}
                    check = f"rank{rank}.replicas"
                    found.append(
                        Skeleton(device, dtype, check, replicated, samples, skip, dtype, tols)
                    )
        return found

    def _replica_tol(self, name: str, device: str, dtype: str) -> Tol:
        """How a replicated gradient must agree across ranks: bitwise (what an all-reduce
        gives), or within the tensor's allclose rtol/atol."""
        if self.cfg.replicas == "exact":
            return Tol("exact")
        tol = tolerance_for(self.spec.tolerance, name, device, dtype)
        return Tol("allclose", tol.rtol, tol.atol)

    def samples(self, wanted: tuple[int, ...] | None) -> Iterable[Any]:
        return ()  # the ranks draw them

    def open(self, device: str, dtype: str, cases: list[PlannedCase], context: Context) -> Pass:
        raise NotImplementedError("a sharded target's passes run on its ranks")

    def link(self, passes: Sequence[Pass]) -> Linked:
        return Linked(passes)

    def run_plan(
        self,
        plan: Plan,
        emit: Any,
        context: Context,
        wanted: set[tuple[str, str, str]] | None,
        resume: dict[str, int] | None = None,
    ) -> None:
        """torchrun's ranks run the plan; their events reach `emit` as they come."""
        from gradaudit.run.torchrun import Launcher

        if not any(c.skip is None for c in plan.cases):
            return
        cases = None if wanted is None else sorted(wanted)
        Launcher(self.loaded, plan, emit, context.timeout, cases).run()
