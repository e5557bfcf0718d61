"""Python calls for scripts, benchmarks and test suites: plan and run without the CLI."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from gradaudit.audit import Audit
    from gradaudit.plan import Plan
    from gradaudit.results import GroupResult, Shard


def plan_for(
    audit: Audit,
    devices: Sequence[str] | None = None,
    dtypes: Sequence[str] | None = None,
    shard: Shard | None = None,
) -> Plan:
    """The plan of a loaded audit, with the registered check kinds (spec order by default)."""
    from gradaudit.plan import make_plan

    spec = audit.loaded.spec
    checks = {name: kind() for name, kind in audit.registry.objects("check").items()}
    return make_plan(audit, devices or spec.devices, dtypes or spec.dtypes, shard, checks)


def run_groups(
    audit: Audit,
    devices: Sequence[str] | None = None,
    dtypes: Sequence[str] | None = None,
    shard: Shard | None = None,
    timeout: float | None = None,
) -> list[GroupResult]:
    """Plan and run; every planned case's result, in plan order."""
    from gradaudit.results import GroupResult
    from gradaudit.runner import run

    made = plan_for(audit, devices, dtypes, shard)
    checks = {name: kind() for name, kind in audit.registry.objects("check").items()}
    return [e for e in run(audit, made, checks, timeout) if isinstance(e, GroupResult)]
