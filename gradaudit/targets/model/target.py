"""A model audit as a target: a model plugin's module, its manual gradient and a data plugin's
batches (samples), every (device, dtype) a pass, the check kinds' cases beside it."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from gradaudit.checks import CheckKind
from gradaudit.errors import SpecError
from gradaudit.plan import Plan, PlannedCase, Skeleton
from gradaudit.spec.common import LoadedSpec
from gradaudit.spec.model import Spec
from gradaudit.targets import Context, Linked, Pass
from gradaudit.targets.devices import device_unavailable
from gradaudit.targets.model.dtype_pass import DtypePass
from gradaudit.targets.model.load import Audit
from gradaudit.targets.model.sharing import Sharing
from gradaudit.types import Batch


class ModelTarget:
    kind = "model"

    def __init__(self, loaded: LoadedSpec, share: bool = True) -> None:
        self.audit = Audit(loaded)
        from gradaudit.targets.model.functions import vouch

        spec: Spec = loaded.spec
        named = {k: _op_spec(loaded.base_dir / p) for k, p in spec.functions.items()}
        left, self.warnings = vouch(self.audit.functions, named, loaded.alongside)
        if left and spec.checks.finite_difference is None:
            loaded = _with_finite_differences(loaded)  # a custom backward cannot fool them
            self.audit.loaded = loaded
        self.spec: Spec = loaded.spec
        self.share = share  # False: every float64 truth afresh (tests compare the two)
        kinds = self.audit.registry.objects("check")
        self.checks: dict[str, CheckKind] = {
            name: kind() for name, kind in kinds.items() if "model" in _targets(kind)
        }
        for name in self.spec.checks.plugin_checks:  # a plugin check kind's own options
            if name not in self.checks:
                import difflib

                close = difflib.get_close_matches(name, list(self.checks), n=1)
                hint = f" (did you mean '{close[0]}'?)" if close else ""
                known = ", ".join(sorted(self.checks))
                raise SpecError(
                    f"{loaded.where('checks', name)}: checks.{name}: no check kind of that "
                    f"name is registered{hint}; available: {known}"
                )

    def head(self) -> Plan:
        loaded, spec = self.audit.loaded, self.spec
        b = spec.batches
        from gradaudit.targets.model.load import plugin_options_error

        problem = plugin_options_error(self.audit.gradient_fn, spec.gradients.options)
        found = [f"gradients '{spec.gradients.plugin}' {problem}"] if problem else []
        count = b.count if b.count is not None else "all"
        shape = ", ".join(self.audit.inputs)
        header = (
            f"model {spec.model.plugin}, gradients {spec.gradients.plugin}, "
            f"{len(self.audit.tensor_names)} tensors, {count} batches of {shape} "
            f"({b.split}, seed {b.seed})"
        )
        return Plan(
            kind=self.kind,
            spec_name=spec.name,
            spec_path=str(loaded.path),
            spec_sha256=loaded.sha256,
            cases=(),
            tensors=tuple(self.audit.tensor_names),
            warnings=tuple([*self.warnings, *found]),
            inputs=tuple(self.audit.inputs),
            facts={
                "seed": str(b.seed),
                "batches": f"{b.split}: count={b.count} size={b.size}",
                "tolerance_mode": spec.tolerance.mode,
            },
            header=header,
            samples=None if b.count is None else tuple(range(b.count)),
        )

    def skeletons(self, devices: Sequence[str], dtypes: Sequence[str]) -> list[Skeleton]:
        self.audit.check_memory(list(dtypes))
        names = tuple(self.audit.tensor_names)
        count = self.spec.batches.count
        samples = None if count is None else tuple(range(count))
        found = []
        for device in devices:
            absent = device_unavailable(device)
            for dtype in dtypes:
                found.append(Skeleton(device, dtype, "gradients", names, samples, absent, dtype))
                for kind in self.checks.values():
                    for s in kind.plan(self.spec, device, dtype, list(dtypes), names, samples):
                        found.append(s if s.skip or not absent else _skip(s, absent))
        return found

    def samples(self, wanted: tuple[int, ...] | None) -> Iterator[Batch]:
        left = None if wanted is None else set(wanted)
        for batch in self.audit.batches():
            if left is None or batch.index in left:
                yield batch
                if left is not None:
                    left.discard(batch.index)
                    if not left:
                        return

    def open(self, device: str, dtype: str, cases: list[PlannedCase], context: Context) -> Pass:
        return DtypePass(self.audit, device, dtype, cases, self.checks, context.mutants)

    def link(self, passes: Sequence[Pass]) -> Linked:
        return Sharing([p for p in passes if isinstance(p, DtypePass)], self.share)


def _op_spec(path: Path) -> tuple[Path, str]:
    """An op spec's resolved path and its candidate, as written (load_spec checked both)."""
    from gradaudit.spec import load_spec

    return path.resolve(), str(load_spec(path).spec.op.candidate)


def _with_finite_differences(loaded: LoadedSpec) -> LoadedSpec:
    """The spec with `checks.finite_difference` at its defaults."""
    import dataclasses

    from gradaudit.spec.model import FiniteDifference

    checks = loaded.spec.checks.model_copy(update={"finite_difference": FiniteDifference()})
    return dataclasses.replace(loaded, spec=loaded.spec.model_copy(update={"checks": checks}))


def _skip(s: Skeleton, reason: str) -> Skeleton:
    import dataclasses

    return dataclasses.replace(s, skip=reason)


def _targets(kind: Any) -> tuple[str, ...]:
    """The target kinds a check kind applies to (model audits, when it does not say)."""
    return tuple(getattr(kind, "targets", ("model",)))
