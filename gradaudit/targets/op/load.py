"""An op spec's audit, resolved: candidate and reference imported, variants derived."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from gradaudit.spec.common import LoadedSpec
from gradaudit.targets.op.call import OpAudit
from gradaudit.targets.op.errors import OpSpecError
from gradaudit.targets.op.opinfo import derive_with_samples
from gradaudit.targets.op.resolve import Callee, named_ops, resolve, varied_arguments
from gradaudit.targets.op.variants import Variant


def audit_of(loaded: LoadedSpec) -> OpAudit:
    """Resolve the spec's candidate and reference (OpError, naming their line, if they do
    not import) and derive its variants."""
    spec, op = loaded.spec, loaded.spec.op
    sys_path_added = _spec_dir_on_path(loaded.base_dir)
    try:
        pair = op.candidate
        own = [pair] if isinstance(pair, str) else [pair.forward, pair.backward]
        named = [r for r in (*own, op.reference) if r is not None and ":" not in r]
        where = loaded.where("op", "candidate" if set(own) & set(named) else "reference")
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
        variants=variants_of(
            loaded, varied_arguments(candidate, reference, op.args, op.inputs), candidate
        ),
        args=dict(op.args),
        init=dict(op.init),
        tolerance=spec.tolerance,
        checks=op.checks,
        where=lambda key: loaded.where("op", key),
    )


def variants_of(
    loaded: LoadedSpec, arguments: dict[str, Any] | None = None, candidate: Callee | None = None
) -> list[Variant]:
    """The spec's variants (with OpInfo's samples where asked, given the candidate); a bad
    `variants.exclude` or `variants.opinfo` names its line."""
    op, seed = loaded.spec.op, loaded.spec.seed
    try:
        return derive_with_samples(
            op.inputs, op.dims, op.variant_options, seed, arguments, candidate
        )
    except OpSpecError as exc:
        raise OpSpecError(f"{loaded.where('op', 'variants')}: op.{exc}") from None


def _spec_dir_on_path(base_dir: Path) -> str | None:
    """`candidate: mykernel:Fn` next to the spec imports like a plugin file would."""
    import sys

    folder = str(base_dir)
    if folder in sys.path:
        return None
    sys.path.append(folder)  # last: a file there never shadows an installed module
    return folder


def metadata(loaded: LoadedSpec, variants: list[Variant] | None = None) -> dict[str, str]:
    """The op's facts for report headers (JUnit properties, the JSON `run` object)."""
    spec = loaded.spec
    variants = variants or variants_of(loaded)
    return {
        "candidate": str(spec.op.candidate),
        "reference": spec.op.reference or "float64 finite differences",
        "seed": str(spec.seed),
        "variants": ", ".join(v.name for v in variants),
        "tolerance_mode": spec.tolerance.mode,
    }
