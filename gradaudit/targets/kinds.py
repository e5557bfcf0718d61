"""The target of a loaded spec, by its kind: the built-in kinds, or one a plugin registers
through the `register_targets` hook (a spec with `target: {kind: NAME, ...}`)."""

from __future__ import annotations

from gradaudit.spec.common import LoadedSpec
from gradaudit.targets import Target


def build_target(loaded: LoadedSpec) -> Target:
    """Load what the spec names (plugins, data, model, op) and return its target."""
    if loaded.kind == "model":
        from gradaudit.targets.model.target import ModelTarget

        return ModelTarget(loaded)
    if loaded.kind == "op":
        from gradaudit.targets.op.target import OpTarget

        return OpTarget.from_spec(loaded)
    if loaded.kind == "sharded":
        from gradaudit.targets.sharded.target import ShardedTarget

        return ShardedTarget(loaded)
    from gradaudit.plugins import plugin_manager

    registry = plugin_manager(loaded.spec.plugins, loaded.base_dir, loaded)
    factory = registry.get("target", loaded.kind, loaded.where("target", "kind"))
    target: Target = factory(loaded)
    return target
