"""Softmax cross-entropy over a vocabulary, fused: the probabilities are never kept.

loss = sum over rows of (logsumexp(logits) - logits[target]) / n, rows whose target is
`ignore_index` left out; n is the number of counted rows, or `n_items` when given (for
gradient accumulation: the token count of the whole batch, as Hugging Face passes
`num_items_in_batch`). logits [..., V], targets [...].
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


class SoftmaxCrossEntropy(torch.autograd.Function):
    """Hand-written backward: dlogits = (softmax(logits) - onehot(target)) * g / n."""

    @staticmethod
    def forward(
        ctx: Any,
        logits: torch.Tensor,
        targets: torch.Tensor,
        ignore_index: int = -100,
        n_items: int | None = None,
    ) -> torch.Tensor:
        z = logits.reshape(-1, logits.shape[-1]).to(compute_dtype(logits.dtype))
        t = targets.reshape(-1)
        valid = t != ignore_index
        safe = t.masked_fill(~valid, 0)
        top = z.amax(-1, keepdim=True)  # shifted by the row's max: exact for large logits
        shifted = z - top
        lse = torch.log(torch.exp(shifted).sum(-1, keepdim=True))
        picked = shifted.gather(-1, safe[:, None])
        n = valid.sum() if n_items is None else torch.tensor(n_items)
        ctx.save_for_backward(logits, safe, valid, top, lse, n)
        return (((lse - picked).squeeze(-1) * valid).sum() / n).to(logits.dtype)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None, None, None]:
        logits, safe, valid, top, lse, n = ctx.saved_tensors
        z = logits.reshape(-1, logits.shape[-1]).to(lse.dtype)
        p = torch.exp((z - top) - lse)
        p[torch.arange(p.shape[0]), safe] -= 1.0
        p *= valid[:, None] * (grad.to(p.dtype) / n)
        return p.view(logits.shape).to(logits.dtype), None, None, None


def softmax_xent(
    logits: torch.Tensor,
    targets: torch.Tensor,
    ignore_index: int = -100,
    n_items: int | None = None,
) -> torch.Tensor:
    return SoftmaxCrossEntropy.apply(logits, targets, ignore_index, n_items)  # type: ignore[no-untyped-call,no-any-return]


def softmax_xent_reference(
    logits: torch.Tensor,
    targets: torch.Tensor,
    ignore_index: int = -100,
    n_items: int | None = None,
) -> torch.Tensor:
    """torch's cross-entropy in the logits' dtype."""
    flat, t = logits.reshape(-1, logits.shape[-1]), targets.reshape(-1)
    if n_items is None:
        return F.cross_entropy(flat, t, ignore_index=ignore_index)
    return F.cross_entropy(flat, t, ignore_index=ignore_index, reduction="sum") / n_items
