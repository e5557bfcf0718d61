"""Op specs from the command line: load, resolve, run; groups for the existing reporters."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from gradaudit.errors import UsageError
from gradaudit.ops.call import OpAudit
from gradaudit.ops.resolve import named_ops, resolve
from gradaudit.ops.spec import LoadedOpSpec, load_op_spec
from gradaudit.ops.variants import derive
from gradaudit.results import CaseListener, GroupResult, Shard

if TYPE_CHECKING:
    from gradaudit.ops.engine import Compared


def audit_of(loaded: LoadedOpSpec) -> OpAudit:
    """Resolve the spec's candidate and reference (OpError, naming their line, if they do
    not import) and derive its variants."""
    spec, op = loaded.spec, loaded.spec.op
    sys_path_added = _spec_dir_on_path(loaded.base_dir)
    try:
        named = [r for r in (op.candidate, op.reference) if r is not None and ":" not in r]
        where = loaded.where("op", "candidate" if op.candidate in named else "reference")
        known = named_ops(spec.plugins, loaded.base_dir, where) if named else None
        candidate = resolve(
            op.candidate,
            loaded.where("op", "candidate"),
            "op.candidate",
            spec.plugins,
            loaded.base_dir,
            known,
        )
        reference = None
        if op.reference is not None:
            reference = resolve(
                op.reference,
                loaded.where("op", "reference"),
                "op.reference",
                spec.plugins,
                loaded.base_dir,
                known,
            )
    finally:
        if sys_path_added:
            import sys

            sys.path.remove(sys_path_added)
    return OpAudit(
        name=spec.name,
        candidate=candidate,
        reference=reference,
        inputs=dict(op.inputs),
        variants=derive(op.inputs, op.dims, op.variant_options, spec.seed),
        args=dict(op.args),
        init=dict(op.init),
        tolerance=spec.tolerance,
        checks=op.checks,
        where=lambda key: loaded.where("op", key),
    )


def _spec_dir_on_path(base_dir: Path) -> str | None:
    """`candidate: mykernel:Fn` next to the spec imports like a plugin file would."""
    import sys

    folder = str(base_dir)
    if folder in sys.path:
        return None
    sys.path.append(folder)  # last: a file there never shadows an installed module
    return folder


def subset(option: str, chosen: Sequence[str], allowed: Sequence[str]) -> list[str]:
    """The spec's entries that an option picks (all when not given), in the spec's order."""
    unknown = [c for c in chosen if c not in allowed]
    if unknown:
        raise UsageError(f"{option} {unknown[0]}: not in the spec's list {list(allowed)}")
    return [a for a in allowed if a in chosen] if chosen else list(allowed)


def groups(
    loaded: LoadedOpSpec,
    devices: Sequence[str] = (),
    dtypes: Sequence[str] = (),
    on_case: CaseListener | None = None,
    shard: Shard | None = None,
    on_compared: Compared | None = None,
) -> Iterator[GroupResult]:
    """The run's groups as they finish (stream them to reporters); under `shard`, the
    other shards' cases as skipped groups."""
    from gradaudit.ops.engine import run

    spec = loaded.spec
    chosen_devices = subset("--device", devices, spec.devices)
    chosen_dtypes = subset("--dtype", dtypes, spec.dtypes)
    audit = audit_of(loaded)
    yield from run(audit, chosen_devices, chosen_dtypes, on_case, shard, on_compared)


def run_op_spec(
    path: str | Path,
    devices: Sequence[str] = (),
    dtypes: Sequence[str] = (),
    on_case: CaseListener | None = None,
    on_group: Callable[[GroupResult], None] | None = None,
) -> list[GroupResult]:
    """Audit one op spec: every group, in order; `on_group` sees each as it finishes."""
    out = []
    for group in groups(load_op_spec(path), devices, dtypes, on_case):
        if on_group:
            on_group(group)
        out.append(group)
    return out


def metadata(loaded: LoadedOpSpec, shard: Shard | None = None) -> dict[str, str]:
    """Flat facts for report headers (JUnit properties, the JSON `run` object); `shard`
    ("K/N") is what `gradaudit merge` checks the set of reports by."""
    spec = loaded.spec
    variants = derive(spec.op.inputs, spec.op.dims, spec.op.variant_options, spec.seed)
    return {
        "spec": str(loaded.path),
        "spec_name": spec.name,
        "spec_sha256": loaded.sha256,
        "kind": "op",
        "candidate": spec.op.candidate,
        "reference": spec.op.reference or "float64 finite differences",
        "seed": str(spec.seed),
        "variants": ", ".join(v.name for v in variants),
        "tolerance_mode": spec.tolerance.mode,
        **({"shard": str(shard)} if shard else {}),
    }
