"""What a run produces: a tensor's comparison on one sample (`Check`), its fold over samples
(`TensorSummary`), one tensor's result as it streams (`CaseResult`), a case's results
(`GroupResult`) and the run's totals (`RunSummary`).

Torch-free, so that reports, `gradaudit merge` and the supervisor start fast.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from gradaudit import systematic
from gradaudit.text import clean
from gradaudit.tolerance import Tol

if TYPE_CHECKING:
    from gradaudit.plan import PlannedCase

MAX_ERRORS_KEPT = 5
MAX_ERROR_CHARS = 2000  # a plugin's error text can be megabytes; reports need the start


@dataclass(slots=True)
class Check:
    """One tensor on one batch. In baseline mode differences are taken to the float64 truth.

    A value: nothing changes one after it is made (dataclasses.replace makes another). Not
    declared frozen because a frozen dataclass's __init__ sets each of the 19 fields through
    object.__setattr__: 4.4 us against 0.7 us, paid for every tensor of every batch."""

    exact: bool
    passed: bool
    max_abs: float
    max_rel: float
    budget: float  # max over elements of |diff| / allowed; above 1 fails
    worst_index: tuple[int, ...]
    manual_value: float
    reference_value: float  # autograd's value (allclose, exact) or the truth's (baseline)
    mismatched: int
    nonfinite: int  # elements where the two disagree on NaN/Inf
    numel: int
    allowed: float = 0.0  # the allowed difference at the worst element
    reference_error: float = 0.0  # baseline: max|autograd in dtype - truth|
    sym_rel: float = 0.0  # max of 2|a - b| / (|a| + |b|)
    cosine: float = 1.0  # cosine similarity of the flattened tensors
    # The error's component along the truth t, <g - t, t> / <t, t>, for the manual gradient
    # and for autograd in the dtype (gradaudit.systematic); None where it carries no
    # direction (t is rounding noise) or the tolerance does not ask for it.
    bias: float | None = None
    reference_bias: float | None = None
    # False where the screen settled a passing batch that is not its tensor's worst so far
    # (gradaudit.compare.screen): worst_index is () and the values (and allclose's allowed) are NaN.
    located: bool = True
    # The largest |entry| of what the manual gradient was measured against (autograd's, or
    # the truth's), where the screen measured it: whether a gradient is ever nonzero.
    largest: float | None = None


@dataclass
class TensorSummary:
    """One tensor on one (device, dtype), accumulated batch by batch (results stream)."""

    tensor: str
    tol: Tol
    batches: int = 0
    failed_batches: int = 0
    exact: bool = True
    max_abs: float = 0.0
    # At the worst batch (see _take_worst); max_abs is over every batch.
    max_rel: float = 0.0
    max_sym_rel: float = 0.0
    min_cosine: float = 1.0
    mismatched: int = 0
    nonfinite: int = 0
    numel: int = 0
    worst: Check | None = None
    worst_batch: int | None = None
    worst_seed: int | None = None
    errors: list[str] = field(default_factory=list)
    error_count: int = 0
    seconds: float = 0.0
    skipped: str | None = None  # why this tensor was not checked (device absent, empty shard)
    # The systematic-error statistic as running sums over the batches that carry a direction:
    # d = bias - reference_bias (count, sum, sum of squares), and each side's own sum, in
    # integer quanta of the dtype's epsilon (systematic.quantum): exact whatever the order.
    bias_batches: int = 0
    bias_sum: int = 0
    bias_squares: int = 0
    bias_manual_sum: int = 0
    bias_reference_sum: int = 0

    def add(self, result: Check, batch_index: int, seed: int) -> None:
        self.batches += 1
        self.failed_batches += not result.passed
        self.exact &= result.exact
        self.max_abs = max(self.max_abs, result.max_abs)
        self.mismatched += result.mismatched
        self.nonfinite += result.nonfinite
        self.numel += result.numel
        if self.worst is None or result.budget > self.worst.budget:
            self._take_worst(result, batch_index, seed)
        if self.tol.systematic:
            self.add_bias(result)

    def _take_worst(self, result: Check, batch_index: int | None, seed: int | None) -> None:
        """The worst batch so far; its relative errors and cosine are the tensor's. They are
        measured where a batch is described in full (gradaudit.compare.screen), which every new
        worst batch is, so they are the same however the batches are ordered or sharded."""
        self.worst, self.worst_batch, self.worst_seed = result, batch_index, seed
        self.max_rel, self.max_sym_rel = result.max_rel, result.sym_rel
        self.min_cosine = result.cosine

    def add_bias(self, result: Check) -> None:
        """Fold one batch into the systematic-error sums (batches without a direction skip)."""
        if result.bias is None or result.reference_bias is None:
            return
        if not math.isfinite(result.bias + result.reference_bias):
            return
        eps = self.tol.eps
        manual = systematic.quantize(result.bias, eps)
        reference = systematic.quantize(result.reference_bias, eps)
        d = manual - reference
        self.bias_batches += 1
        self.bias_sum += d
        self.bias_squares += d * d
        self.bias_manual_sum += manual
        self.bias_reference_sum += reference

    def merge(self, other: TensorSummary) -> None:
        """Fold in the same tensor's summary from another shard of the batches."""
        self.batches += other.batches
        self.failed_batches += other.failed_batches
        self.exact &= other.exact
        self.max_abs = max(self.max_abs, other.max_abs)
        self.mismatched += other.mismatched
        self.nonfinite += other.nonfinite
        self.numel += other.numel
        self.seconds += other.seconds
        self.bias_batches += other.bias_batches
        self.bias_sum += other.bias_sum
        self.bias_squares += other.bias_squares
        self.bias_manual_sum += other.bias_manual_sum
        self.bias_reference_sum += other.bias_reference_sum
        if other.worst is not None and (
            self.worst is None
            or other.worst.budget > self.worst.budget
            or (
                other.worst.budget == self.worst.budget
                and (other.worst_batch or 0) < (self.worst_batch or 0)
            )
        ):
            self._take_worst(other.worst, other.worst_batch, other.worst_seed)
        if self.skipped and not other.skipped:
            self.skipped = None
        self.errors = (self.errors + other.errors)[:MAX_ERRORS_KEPT]
        self.error_count += other.error_count

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["status"] = self.status
        data["systematic"] = self.systematic
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TensorSummary:
        fields = {k: v for k, v in data.items() if k not in ("status", "systematic")}
        fields["tol"] = Tol(**fields["tol"])
        if fields.get("worst") is not None:
            worst = dict(fields["worst"])
            worst["worst_index"] = tuple(worst["worst_index"])
            fields["worst"] = Check(**worst)
        return cls(**fields)

    def add_error(self, message: str) -> None:
        self.error_count += 1
        if len(self.errors) < MAX_ERRORS_KEPT:
            self.errors.append(clean(message, MAX_ERROR_CHARS))

    @property
    def budget(self) -> float:
        return self.worst.budget if self.worst else 0.0

    # -- the systematic-error check ----------------------------------------------------------

    @property
    def bias(self) -> float:
        """Estimated relative bias of the manual gradient beyond autograd's (mean d)."""
        unit = systematic.quantum(self.tol.eps)
        return self.bias_sum * unit / self.bias_batches if self.bias_batches else 0.0

    @property
    def bias_bound(self) -> float:
        """The largest |bias| rounding noise may produce over these batches."""
        return systematic.bound(*self._moments(), self.tol.eps)

    @property
    def bias_verdict(self) -> str:
        """off (not asked for) | pass | fail | inconclusive (under 2 usable batches)."""
        if not self.tol.systematic:
            return "off"
        return systematic.verdict(*self._moments(), self.tol.eps)

    def _moments(self) -> tuple[int, float, float]:
        """(n, sum, sum of squares) of d as floats, the spread taken exactly from the ints."""
        n, eps = self.bias_batches, self.tol.eps
        unit = systematic.quantum(eps)
        sd = systematic.spread(n, self.bias_sum, self.bias_squares) * unit
        total = self.bias_sum * unit
        mean = total / n if n else 0.0
        return n, total, n * mean * mean + (n - 1) * sd * sd

    @property
    def systematic(self) -> dict[str, Any]:
        """The systematic-error check as reports show it (relative to the true gradient)."""
        n = self.bias_batches
        unit = systematic.quantum(self.tol.eps)
        return {
            "verdict": self.bias_verdict,
            "bias": self.bias,
            "bound": self.bias_bound if n >= 2 else None,
            "manual": self.bias_manual_sum * unit / n if n else None,
            "autograd": self.bias_reference_sum * unit / n if n else None,
            "batches": n,
        }

    @property
    def status(self) -> str:
        """The headline verdict. A mismatch wins over an error: it proves the gradient wrong,
        where an error only says that some batches could not be compared. A systematic error
        is a mismatch spread over batches."""
        if self.failed_batches or self.bias_verdict == "fail":
            return "fail"
        if self.error_count:
            return "error"
        if self.skipped or not self.batches:
            return "skipped"
        return "pass"


ZERO_REFERENCE = "zero reference on every batch: this check proves nothing"


@dataclass
class GroupResult:
    """Every audited tensor on one (device, dtype), over all batches (of this shard)."""

    device: str
    dtype: str
    tensors: list[TensorSummary]
    skipped: str | None = None
    seconds: float = 0.0
    device_name: str = ""
    done: bool = False  # False while running, and for a group cut short by an interrupt
    check: str = "gradients"  # gradients | repeat | finite_difference
    # Tensors whose autograd gradient was zero on every batch: their check proves nothing.
    zero_reference: list[str] = field(default_factory=list)
    rerun: str = ""  # the command that runs this case again (PlannedCase.rerun)

    @property
    def warnings(self) -> list[str]:
        return [f"{name}: {ZERO_REFERENCE}" for name in self.zero_reference]

    @classmethod
    def planned(cls, case: PlannedCase) -> GroupResult:
        """The empty result of a planned case; a skipped case is complete as it is."""
        tensors = [TensorSummary(t.name, t.tol, skipped=case.skip) for t in case.tensors]
        return cls(case.device, case.dtype, tensors, case.skip, check=case.check, rerun=case.rerun)


@dataclass(slots=True)
class CaseResult:
    """One tensor on one batch: a comparison, or the error that prevented it.

    A value, like its Check: nothing changes one after it is made. Not declared frozen:
    a frozen dataclass's __init__ sets each field through object.__setattr__ (3.7 us
    against 0.9 us), paid for every tensor of every batch."""

    device: str
    dtype: str
    tensor: str
    batch: int
    seed: int
    check: Check | None = None
    error: str | None = None
    tol: Tol | None = None
    kind: str = "gradients"  # which check: gradients | repeat | finite_difference


CaseListener = Callable[[CaseResult], None]


@dataclass(frozen=True)
class Shard:
    """Shard `index` of `total` (1-based) takes every batch k with (k + offset) % total ==
    index - 1. `offset` is 0 for one spec; a run of several specs numbers their samples
    one after the other (spec i starts at the sum of the sample counts before it), so the
    whole set spreads evenly; its reports write such a shard `K/N@OFFSET`."""

    index: int
    total: int
    offset: int = 0

    def __str__(self) -> str:
        at = f"@{self.offset}" if self.offset else ""
        return f"{self.index}/{self.total}{at}"

    @classmethod
    def parse(cls, text: str) -> Shard:
        """K/N (or K/N@OFFSET) with 1 <= K <= N; UsageError (exit 2) otherwise."""
        import re

        from gradaudit.errors import UsageError

        match = re.fullmatch(r"(\d+)/(\d+)(?:@(\d+))?", text.strip())
        if not match or not 1 <= int(match[1]) <= int(match[2]):
            raise UsageError(f"--shard {text!r}: expected K/N with 1 <= K <= N, e.g. 2/4")
        return cls(int(match[1]), int(match[2]), int(match[3] or 0))

    def takes(self, batch_index: int) -> bool:
        return self.owner(batch_index) == self.index

    def owner(self, batch_index: int) -> int:
        """The shard (1-based) that runs sample `batch_index`."""
        return (batch_index + self.offset) % self.total + 1

    def shifted(self, offset: int) -> Shard:
        return Shard(self.index, self.total, offset % self.total)


@dataclass
class RunSummary:
    """Counts over a whole run; decides the exit code."""

    passed: int = 0
    failed: int = 0
    errors: int = 0
    skipped: int = 0
    groups: list[GroupResult] = field(default_factory=list)
    stopped: str | None = None  # why the run ended early: interrupted, internal error

    def add(self, group: GroupResult) -> None:
        """Count each tensor once, by its status: one that failed on some batches and errored
        on others is a failure whose message names the errors too (one JUnit element per
        testcase, as Jenkins' schema requires)."""
        self.groups.append(group)
        for tensor in group.tensors:
            if tensor.status == "pass":
                self.passed += 1
            elif tensor.status == "fail":
                self.failed += 1
            elif tensor.status == "error":
                self.errors += 1
            else:
                self.skipped += 1

    def add_error(self, tensor: TensorSummary, message: str) -> None:
        """An error found once the run is over (every reference was zero): the tensor's
        status changes, and so do the counts."""
        before = tensor.status
        tensor.add_error(message)
        for status, delta in ((before, -1), (tensor.status, 1)):
            name = {"pass": "passed", "fail": "failed", "error": "errors"}.get(status, "skipped")
            setattr(self, name, getattr(self, name) + delta)

    def totals(self) -> dict[str, int]:
        """What every report prints: a run that stopped early has one more error, the
        report's error case that says so (JUnit's `<suite>[run]`)."""
        return {
            "passed": self.passed,
            "failed": self.failed,
            "errors": self.errors + (1 if self.stopped else 0),
            "skipped": self.skipped,
        }

    @property
    def ok(self) -> bool:
        return not (self.failed or self.errors or self.stopped)
