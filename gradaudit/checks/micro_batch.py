"""Micro-batch invariance: the manual gradients of a batch's micro-batches, combined as
the loss reduces over rows, must equal autograd's gradient of the whole batch.

Catches gradient-accumulation normalisation bugs that no whole batch shows: a manual
gradient that divides by a hard-coded batch size, or by a count of the batch it was
derived on, is right on full batches and wrong on every other size.

Per batch, the batch tensors whose dim 0 is the batch's rows are split into unequal
micro-batches (ops.invariance.split_sizes; other tensors pass through whole); each gets its
own forward, autograd gradient and manual gradient. Parameter gradients are summed,
weighted by rows_i/N under `mean` (by tokens_i/tokens with `weight`, for a mean over masked
tokens); a tensor whose shape follows the batch (logits, hidden states) is concatenated
along the dimension that grows with the rows, with the same weights.

The reference is autograd's full-batch gradient (with the pass's float64 truth, so the
spec's tolerances apply unchanged), not the manual full-batch gradient: the verdict then
stands on its own, whatever the gradients case says. Autograd's own micro-batch gradients,
combined the same way, must pass the same test first: where they do not, the model's loss
is not micro-batch invariant (BatchNorm on batch statistics, dropout, a loss normalised
over the whole batch) and the tensor is an error that says so, never a red blamed on the
manual code. BatchNorm or dropout modules in training mode are refused up front.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import torch

from gradaudit import postprocess
from gradaudit.compare import Comparison, check_all
from gradaudit.errors import OURS, why
from gradaudit.plan import PlannedCase, Skeleton
from gradaudit.tolerance import Tol
from gradaudit.types import Batch

if TYPE_CHECKING:
    from gradaudit.checks import Pass
    from gradaudit.spec.model import MicroBatch, Spec
    from gradaudit.targets.model.parts import Step

NAME = "micro_batch"
NOT_INVARIANT = (
    "the model's loss is not micro-batch invariant here: autograd's own micro-batch "
    "gradients, combined ({reduction}), differ from its batch gradient (batch statistics, "
    "dropout, or a loss normalised over the whole batch?); micro_batch does not apply{hint}"
)
TOKENS_HINT = (
    " (a mean over masked tokens or labels with an ignore index: give micro_batch `weight`, "
    "the batch tensor that counts them)"
)


def split_sizes(rows: int, splits: int) -> list[int]:
    """Unequal micro-batch sizes (a normalisation bug hides when all are equal)."""
    sizes = [rows // splits] * splits
    sizes[-1] += rows % splits
    if sizes[0] > 1:
        sizes[0] -= 1
        sizes[-1] += 1
    return sizes


class MicroBatchCheck:
    targets = ("model",)

    def plan(
        self,
        spec: Spec,
        device: str,
        dtype: str,
        dtypes: list[str],
        names: Sequence[str],
        samples: tuple[int, ...] | None,
    ) -> list[Skeleton]:
        if spec.checks.micro_batch is None:
            return []
        # The gradients case's tolerances: the combination is held to what the batch is.
        return [Skeleton(device, dtype, NAME, tuple(names), samples, None, dtype)]

    def start(self, case: PlannedCase, run: Pass) -> _MicroBatchRun:
        options = run.spec.checks.micro_batch
        assert options is not None
        return _MicroBatchRun(run, options, {t.name: t.tol for t in case.tensors})


def not_invariant(model: torch.nn.Module) -> str | None:
    """Why the model's loss cannot be micro-batch invariant, when a module says so cheaply."""
    from torch.nn.modules.batchnorm import _BatchNorm
    from torch.nn.modules.dropout import _DropoutNd

    for name, module in model.named_modules():
        what = f"`{name}`" if name else "the model"
        if module.training and isinstance(module, _BatchNorm):
            return (
                f"{what} is a {type(module).__name__} in training mode: its loss depends on "
                "the whole batch's statistics, so micro_batch does not apply"
            )
        if module.training and isinstance(module, _DropoutNd) and module.p > 0:
            return (
                f"{what} is a {type(module).__name__} in training mode: micro-batches draw "
                "other masks, so micro_batch does not apply"
            )
    return None


def split(batch: Batch, sizes: Sequence[int]) -> list[Batch]:
    """Micro-batches of `sizes` rows; tensors whose dim 0 is not the batch's pass whole."""
    rows, parts, start = batch.rows, [], 0
    for size in sizes:
        cut = {
            n: t.narrow(0, start, size) if t.dim() and t.shape[0] == rows else t
            for n, t in batch.tensors.items()
        }
        parts.append(Batch(cut, batch.index, batch.seed))
        start += size
    return parts


def token_weights(
    batch: Batch, parts: Sequence[Batch], name: str, ignore_index: int | None
) -> list[float] | str:
    """Each micro-batch's share of the batch's tokens, as batch tensor `name` counts them:
    its sum over the micro-batch's rows (a mask's tokens), or with `ignore_index` its
    entries not equal to it (labels); or why they cannot weigh the micro-batches."""
    if name not in batch.tensors:
        return f"weight '{name}' is not a batch tensor (the batch has {', '.join(batch.tensors)})"
    whole = batch[name]
    if not whole.dim() or whole.shape[0] != batch.rows:
        return (
            f"weight '{name}' has shape {tuple(whole.shape)}: its dim 0 must be the batch's "
            f"{batch.rows} rows"
        )
    if ignore_index is not None and (whole.is_floating_point() or whole.is_complex()):
        return f"ignore_index needs an integer weight tensor; '{name}' is {whole.dtype}"
    counts = [
        float(
            (p[name] != ignore_index).sum()
            if ignore_index is not None
            else p[name].sum(dtype=torch.float64)
        )
        for p in parts
    ]
    total = sum(counts)
    if not total > 0:
        return f"weight '{name}' counts {total:g} tokens in the batch: nothing to weigh"
    for k, (part, count) in enumerate(zip(parts, counts, strict=True)):
        if not count > 0:
            return (
                f"micro-batch {k + 1} ({part.rows} row(s)) counts {count:g} tokens by "
                f"'{name}': its loss is a mean over nothing"
            )
    return [count / total for count in counts]


def combine(
    parts: Sequence[torch.Tensor], full: torch.Size, sizes: Sequence[int], weights: Sequence[float]
) -> torch.Tensor | str:
    """The micro-batches' gradients of one tensor as the batch's, in float64; or why not."""
    shapes = {tuple(p.shape) for p in parts}
    if shapes == {tuple(full)}:
        total = parts[0].double() * weights[0]
        for part, weight in zip(parts[1:], weights[1:], strict=True):
            total += part.double() * weight
        return total
    rows = sum(sizes)
    for dim in range(len(full)):
        follows = all(
            p.dim() == len(full)
            and p.shape[dim] == size
            and all(p.shape[d] == full[d] for d in range(len(full)) if d != dim)
            for p, size in zip(parts, sizes, strict=True)
        )
        if follows and full[dim] == rows:
            return torch.cat([p.double() * w for p, w in zip(parts, weights, strict=True)], dim)
    got = ", ".join(str(tuple(p.shape)) for p in parts)
    return (
        f"its micro-batch shapes {got} neither equal the batch's {tuple(full)} nor grow "
        "with the rows along one dimension: cannot combine them"
    )


class _MicroBatchRun:
    def __init__(self, run: Pass, options: MicroBatch, tols: Mapping[str, Tol]) -> None:
        self.run, self.options, self.tols = run, options, tols
        self.refused = not_invariant(run.model)

    def batch(self, step: Step) -> None:
        run, batch, names = self.run, step.batch, step.names
        rows, splits = batch.rows, self.options.splits
        if self.refused is not None:
            return self._fail_all(step, self.refused)
        if rows < splits:
            return self._fail_all(step, f"{rows} row(s) cannot make {splits} micro-batches")
        sizes = split_sizes(rows, splits)
        parts = split(batch, sizes)
        if self.options.weight is not None:
            weights = token_weights(batch, parts, self.options.weight, self.options.ignore_index)
        else:
            weights = [s / rows if self.options.reduction == "mean" else 1.0 for s in sizes]
        if isinstance(weights, str):
            return self._fail_all(step, weights)
        kept = {n: b.detach().clone() for n, b in run.model.named_buffers()}
        autograd: list[list[torch.Tensor]] = []
        manual: list[Mapping[str, torch.Tensor]] = []
        try:
            for part in parts:
                forward, reference = run.reference(run.model, part, names)
                autograd.append(reference)
                manual.append(run.manual(run.model, part, forward))
        except OURS:
            raise
        except BaseException as exc:
            size = sizes[len(manual)]
            return self._fail_all(step, f"on a micro-batch of {size} row(s): {why(exc)}")
        finally:
            with torch.no_grad():  # leave the model as the batch left it (running stats)
                for n, b in run.model.named_buffers():
                    b.copy_(kept[n])
        self._compare(step, sizes, weights, autograd, manual)

    def _compare(
        self,
        step: Step,
        sizes: list[int],
        weights: list[float],
        autograd: list[list[torch.Tensor]],
        manual: list[Mapping[str, torch.Tensor]],
    ) -> None:
        run, batch = self.run, step.batch
        truth = step.truth
        scale = max((float(t.abs().max()) for t in truth or [] if t.numel()), default=0.0)
        wanted: list[tuple[str, object, torch.Tensor, torch.Tensor | None]] = []
        for i, name in enumerate(step.names):
            reference = step.reference[i]
            exact = truth[i] if truth is not None else None
            problem = _clipped(run.spec.postprocess, name)
            got = [m.get(name) for m in manual]
            if problem is None:
                problem = _unusable(got, [a[i] for a in autograd])
            if problem is None:
                theirs = combine([a[i] for a in autograd], reference.shape, sizes, weights)
                if isinstance(theirs, torch.Tensor):
                    theirs = postprocess.apply(name, theirs, run.spec.postprocess)
                    own = Comparison(theirs.to(reference.dtype), reference, self.tols[name], exact)
                    if not check_all([own], scale)[0].passed:
                        hint = TOKENS_HINT if self.options.weight is None else ""
                        problem = NOT_INVARIANT.format(reduction=self.options.reduction, hint=hint)
                else:
                    problem = theirs
            if problem is not None:
                run.error(name, batch, f"micro_batch: {problem}", NAME)
                continue
            ours = combine(
                [g for g in got if isinstance(g, torch.Tensor)], reference.shape, sizes, weights
            )
            assert isinstance(ours, torch.Tensor)  # the same shapes as autograd's
            wanted.append((name, ours.to(reference.dtype), reference, exact))
        if wanted:
            run.compare(NAME, batch, wanted)

    def _fail_all(self, step: Step, message: str) -> None:
        for name in step.names:
            self.run.error(name, step.batch, f"micro_batch: {message}", NAME)


def _clipped(rules: postprocess.Rules, name: str) -> str | None:
    """Clipping does not commute with combining micro-batches; a scale does."""
    for rule in rules:
        if rule.clip is not None and rule.matches(name):
            return f"postprocess clips it ({rule.describe()}), which combining cannot undo"
    return None


def _unusable(got: Sequence[object], autograd: Sequence[torch.Tensor]) -> str | None:
    for k, (g, a) in enumerate(zip(got, autograd, strict=True)):
        if not isinstance(g, torch.Tensor):
            return f"micro-batch {k + 1}: the manual gradient gave {type(g).__name__}, not a tensor"
        if g.shape != a.shape:
            return f"micro-batch {k + 1}: shape {tuple(g.shape)}, autograd's is {tuple(a.shape)}"
    return None
