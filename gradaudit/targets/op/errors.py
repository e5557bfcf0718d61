"""The one-line errors of op audits; like every GradauditError they exit with code 2."""

from __future__ import annotations

from gradaudit.errors import GradauditError, SpecError


class OpSpecError(SpecError):
    """An op spec (or check_op's arguments) that cannot describe an audit."""


class OpError(GradauditError):
    """The candidate or reference cannot be audited as declared: it does not import, its
    outputs differ from the other side's in number, shape or dtype, or an output is
    detached from the inputs (its gradient would be silently zero)."""
