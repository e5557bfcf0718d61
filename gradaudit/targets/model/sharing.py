"""How the passes of one device share work: a float32 case's float64 truth is the float64
case's autograd gradient, bit for bit, when the weights agree after the cast and the inputs
cast exactly (checked before each batch, never assumed), so it is computed once."""

from __future__ import annotations

import torch

from gradaudit.compare.syncs import same_bits_all
from gradaudit.targets import Linked
from gradaudit.targets.model.dtype_pass import DtypePass
from gradaudit.targets.model.parts import float64_device
from gradaudit.types import Batch

# Float dtypes whose values float32 holds exactly: inputs in these cast to float32 and then
# to float64 give what a direct cast to float64 gives.
_EXACT_IN_FLOAT32 = (torch.float32, torch.float16, torch.bfloat16)


class Sharing(Linked):
    """Which pass may take its float64 truth from which: a pass whose truth model is a
    float64 copy of weights that equal, bit for bit, the float64 pass's model computes
    the very reference that pass computes, given the same inputs, seed and device."""

    def __init__(self, passes: list[DtypePass], share: bool = True) -> None:
        super().__init__(passes)
        lender = next((p for p in passes if _can_lend(p)), None) if share else None
        self.borrowers: list[DtypePass] = [
            p
            for p in passes
            if lender is not None
            and p.truth_model is not None
            and p.setup_error is None
            and p.dtype in ("float32", "float64")
        ]
        if lender is not None and self.borrowers:
            lender.lends = True
            for p in self.borrowers:
                p.lender = lender
            self.order = [lender, *(p for p in passes if p is not lender)]

    def before(self, batch: Batch) -> None:
        """Decide, for this batch, which borrowers take the lender's reference: their truth
        model's weights and buffers must equal the lender model's now (one read for all),
        and the inputs must cast exactly."""
        if not self.borrowers:
            return
        exact32 = all(
            not t.is_floating_point() or t.dtype in _EXACT_IN_FLOAT32
            for t in batch.tensors.values()
        )
        pairs: list[tuple[torch.Tensor, torch.Tensor]] = []
        spans: list[tuple[int, int]] = []
        for p in self.borrowers:
            assert p.truth_model is not None and p.lender is not None
            mine, theirs = _state(p.truth_model), _state(p.lender.model)
            if mine.keys() != theirs.keys() or not (exact32 or p.dtype == "float64"):
                spans.append((len(pairs), -1))
                continue
            spans.append((len(pairs), len(mine)))
            pairs += [(mine[k], theirs[k]) for k in mine]
        same = same_bits_all(pairs) if pairs else []
        for p, (start, count) in zip(self.borrowers, spans, strict=True):
            p.borrow = count >= 0 and all(same[start : start + count])


def _can_lend(p: DtypePass) -> bool:
    """A float64 pass on a device that computes float64 itself, deterministically."""
    return (
        p.dtype == "float64"
        and p.setup_error is None
        and float64_device(p.device) == p.device
        and (p.device == "cpu" or torch.are_deterministic_algorithms_enabled())
    )


def _state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    state = {f"p {n}": t.detach() for n, t in model.named_parameters()}
    return state | {f"b {n}": t for n, t in model.named_buffers()}
