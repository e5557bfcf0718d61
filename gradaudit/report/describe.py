"""Plain-text descriptions of a tensor's result, shared by every report format."""

from __future__ import annotations

from gradaudit.compare import TensorSummary


def fmt(value: float) -> str:
    return f"{value:.2e}" if value else "0"


def verdict_line(s: TensorSummary) -> str:
    """One line: what went wrong (or right) with this tensor."""
    if s.status == "error":
        more = f" (+{s.error_count - 1} more)" if s.error_count > 1 else ""
        return f"{s.errors[0]}{more}"
    w = s.worst
    if w is None:
        return "no batches compared"
    share = 100.0 * s.mismatched / max(s.numel, 1)
    tol = s.tol.describe()
    if s.status == "fail" and not s.failed_batches:  # the systematic-error check alone
        line = (
            f"systematic error: bias {s.bias:.3g} of the true gradient beyond its bound "
            f"{s.bias_bound:.2g} over {s.bias_batches} batches (every element within {tol})"
        )
        if s.error_count:
            plural = "s" if s.error_count > 1 else ""
            line += f"; and {s.error_count} error{plural}: {s.errors[0] if s.errors else '?'}"
        return line
    if s.status == "fail":
        line = (
            f"{s.mismatched}/{s.numel} elements ({share:.3g}%) beyond {tol} in "
            f"{s.failed_batches}/{s.batches} batches; max abs diff {fmt(s.max_abs)}"
        )
        if s.error_count:  # the error must not hide behind the failure, nor it behind the error
            plural = "s" if s.error_count > 1 else ""
            line += f"; and {s.error_count} error{plural}: {s.errors[0] if s.errors else '?'}"
        return line
    return f"all {s.numel} elements within {tol}; max abs diff {fmt(s.max_abs)}"


def reproduce(s: TensorSummary, rerun: str) -> str:
    """The command that reproduces this tensor's verdict: its worst batch alone where a
    batch failed, every batch of the case where only the systematic check (which needs
    several) failed."""
    if s.status == "fail" and not s.failed_batches:
        return f"{rerun}  (all {s.bias_batches} batches: the systematic check needs them)"
    return f"{rerun} --batch {s.worst_batch}"


def detail(s: TensorSummary, rerun: str = "") -> str:
    """The multi-line body: enough to reproduce and debug the worst case. `rerun`: the
    command that runs the tensor's case again (GroupResult.rerun)."""
    lines = [f"tensor: {s.tensor}", f"result: {s.status}", verdict_line(s)]
    if s.errors:
        lines += ["errors:", *(f"  {e}" for e in s.errors)]
        if s.error_count > len(s.errors):
            lines.append(f"  ... {s.error_count - len(s.errors)} more")
    w = s.worst
    if w is not None:
        index = ", ".join(str(i) for i in w.worst_index)
        lines += [
            f"batches compared: {s.batches}, failing: {s.failed_batches}",
            f"exact (bitwise) on every batch: {s.exact}",
            f"max abs diff: {s.max_abs:.6e}",
            f"max rel diff (worst batch): {s.max_rel:.6e}",
            f"tolerance: {s.tol.describe()}; {_allowed(s)}",
            f"budget used: {100 * s.budget:.3g}% (max over elements of |diff| / allowed)",
            f"mismatched elements: {s.mismatched} of {s.numel}",
            f"NaN/Inf disagreements: {s.nonfinite}",
            f"worst batch's symmetric relative error: {s.max_sym_rel:.3g}; "
            f"cosine: {s.min_cosine:.6f}",
            *_systematic(s),
            f"worst element: [{index}] in batch {s.worst_batch} (seed {s.worst_seed}): "
            f"manual {w.manual_value:.9g}, {_compared_with(s)} {w.reference_value:.9g}",
        ]
        if rerun:
            lines.append(f"reproduce: {reproduce(s, rerun)}")
    return "\n".join(lines)


def _compared_with(s: TensorSummary) -> str:
    return s.tol.compared_with


def _allowed(s: TensorSummary) -> str:
    """The numbers the worst batch was actually held to."""
    w = s.worst
    return "" if w is None else s.tol.explain(w.allowed, w.reference_error)


def _systematic(s: TensorSummary) -> list[str]:
    """The systematic-error check's lines: the bias along the true gradient and its bound."""
    facts = s.systematic
    if facts["verdict"] == "off":
        return []
    if facts["verdict"] == "inconclusive":
        return [f"systematic error: no verdict ({facts['batches']} usable batches, needs 2)"]
    return [
        f"systematic error ({facts['verdict']}): bias {facts['bias']:.3g} of the true gradient "
        f"(manual {facts['manual']:.3g}, autograd {facts['autograd']:.3g}), bound "
        f"{facts['bound']:.2g} over {facts['batches']} batches; mean of <g - t, t> / <t, t>"
    ]
