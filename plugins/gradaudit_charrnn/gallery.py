"""A gallery of realistic BPTT bugs: wrong manual gradients for `CharRNN`, one slip each.

Each entry is the derivation in `gradaudit_charrnn.bptt` reimplemented with exactly one thing
done the way a person deriving BPTT by hand plausibly gets it wrong. They are registered as
`charrnn-bptt-bug-<slug>` gradient plugins, so that an audit can be shown to catch them
(`gradients: {plugin: charrnn-bptt-bug-W-not-transposed}`). Written against gradaudit's public
API and torch only, as a third-party plugin would be.

Reminder of the forward (nn.Linear stores weights as (out, in), so W(h) = h @ W^T):
  a_t = U x_t + b + W h_{t-1},  h_t = tanh(a_t),  logits_t = V h_t + c,  N = B*T positions.

Tensors: logits, h.1..h.T, C.weight, U.weight, U.bias, W.weight, V.weight, V.bias.
"Below the last step" = h.1..h.{T-1}, W.weight, U.weight, U.bias, C.weight.

  slug                     the slip                                  tensors it affects, why
  ----------------------   ---------------------------------------   ---------------------------
  no-recurrence            dh_t = dlogits_t V only; the carry        below the last step: h.T has
                           da_{t+1} W is dropped                     no later step, so it and
                                                                     dlogits/V/c are unchanged;
                                                                     every earlier dh_t, hence
                                                                     every da_t < T, and so dW,
                                                                     dU, db, dC, are wrong
  over-T                   dlogits = (p - y) / T, not / (B*T)        every tensor (all are linear
                                                                     in dlogits: each is B times
                                                                     too large); none when B = 1
  dW-uses-h-t              dW = sum da_t^T h_t (h_t where            W.weight only (nothing else
                           h_{t-1} belongs)                          reads dW)
  W-not-transposed         carry = da_t @ W^T; right is da_t @ W     below the last step (as
                           (a_t has W h_{t-1} = h_{t-1} @ W^T, so    no-recurrence: only the
                           dh_{t-1} = da_t @ W); W is square, so     carry into steps < T is
                           the shapes do not catch it                wrong)
  tanh-from-preactivation  tanh' as (1 - a_t^2) with a_t the         below the last step: every
                           pre-activation (recomputed from U, b,     da_t is wrong (so dW, dU,
                           W), not (1 - h_t^2)                       db, dC); dh_t for t < T via
                                                                     the carry; dh_T and
                                                                     dlogits/V/c do not use tanh'
  embedding-overwrite      dC[x] = rows (assignment), not +=:        C.weight only, and only when
                           a token that occurs several times in      some token repeats within a
                           the batch keeps one occurrence's row      batch (the rows of tokens
                           (deterministically the last, in           seen once are right; with
                           row-major (b, t) order)                   no repeat it is exact)
  dW-misses-h0             dW = sum_{t>=2} da_t^T h_{t-1}: the       W.weight only; the missing
                           t = 1 term da_1^T h_0 is dropped, as      term is da_1^T h_0, with
                           h_0 is not among the stored h.1..h.T      h_0 = 0.1 (small but never 0)
  skips-last-step          the backward loop runs t = T-1 .. 1       every h.t (h.T's gradient
                           (0-based: range(T-2, -1, -1), "T-1 is     stays 0; h.{T-1} and below
                           the last index" minus one once more):     miss the carry from step T),
                           dh_T, da_T stay at their zero init and    W, U, b, C (da_T = 0 and the
                           step T's carry never reaches step T-1     other da_t are wrong);
                                                                     logits, V, c come from
                                                                     dlogits and stay right

skips-last-step initialises dh and da with zeros so that its result is deterministic; with
`torch.empty` buffers (as bptt.py uses, where every entry is written) the skipped step would
leave uninitialised memory. embedding-overwrite is written vectorised, as `dC[ids] = rows`
would be, but writes each id once from its last occurrence, because an indexed assignment
with duplicate indices leaves unspecified which duplicate wins.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from functools import partial
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from gradaudit import Batch, Forward, hookimpl

BUGS = (
    "no-recurrence",
    "over-T",
    "dW-uses-h-t",
    "W-not-transposed",
    "tanh-from-preactivation",
    "embedding-overwrite",
    "dW-misses-h0",
    "skips-last-step",
)
PREFIX = "charrnn-bptt-bug-"


def bptt(
    model: nn.Module, batch: Batch, forward: Forward, *, bug: str | None = None
) -> Mapping[str, torch.Tensor]:
    """The CharRNN's manual BPTT with at most one bug from `BUGS` switched on (None: correct)."""
    if bug is not None and bug not in BUGS:
        raise ValueError(f"unknown bug {bug!r}; known: {', '.join(BUGS)}")
    rnn: Any = model  # a CharRNN: C, U (bias b), W, V (bias c) and the constant buffer h0
    x, y = batch.inputs, batch.targets
    B, T = x.shape
    logits = forward.intermediates["logits"]
    hs = torch.stack([forward.intermediates[f"h.{t}"] for t in range(1, T + 1)], dim=1)
    h_prev = torch.cat([rnn.h0.expand(B, 1, -1), hs[:, :-1]], dim=1)  # h_0 .. h_{T-1}
    U, W, V = rnn.U.weight, rnn.W.weight, rnn.V.weight
    emb = rnn.C.weight[x]  # (B, T, d_model)

    one_hot = F.one_hot(y, num_classes=logits.shape[-1]).to(logits.dtype)
    dlogits = (torch.softmax(logits, dim=-1) - one_hot) / (T if bug == "over-T" else B * T)
    dh_local = dlogits @ V  # (B, T, H): each step's own path to the loss

    if bug == "tanh-from-preactivation":
        pre = emb @ U.T + rnn.U.bias + h_prev @ W.T  # a_t, recomputed from the weights
        tanh_grad = 1 - pre**2
    else:
        tanh_grad = 1 - hs**2

    dh = torch.zeros_like(hs)
    da = torch.zeros_like(hs)
    carry = torch.zeros_like(hs[:, 0])
    steps = range(T - 2, -1, -1) if bug == "skips-last-step" else reversed(range(T))
    for t in steps:
        dh[:, t] = dh_local[:, t] + carry
        da[:, t] = dh[:, t] * tanh_grad[:, t]
        if bug == "no-recurrence":
            continue  # carry stays zero
        carry = da[:, t] @ (W.T if bug == "W-not-transposed" else W)

    flat_da = da.reshape(B * T, -1)
    if bug == "dW-uses-h-t":
        dW = flat_da.T @ hs.reshape(B * T, -1)
    elif bug == "dW-misses-h0":
        dW = da[:, 1:].reshape(-1, da.shape[-1]).T @ hs[:, :-1].reshape(-1, hs.shape[-1])
    else:
        dW = flat_da.T @ h_prev.reshape(B * T, -1)

    ids = x.reshape(-1)
    demb = (flat_da @ U).to(rnn.C.weight.dtype)  # dLoss/demb at every position
    dC = torch.zeros_like(rnn.C.weight)
    if bug == "embedding-overwrite":
        # dC[ids] = demb, with the last occurrence of each id winning, deterministically.
        positions = torch.arange(ids.numel(), device=ids.device)
        last = torch.full((dC.shape[0],), -1, dtype=torch.long, device=ids.device)
        last.scatter_reduce_(0, ids, positions, reduce="amax")
        seen = torch.unique(ids)
        dC[seen] = demb[last[seen]]
    else:
        dC.index_add_(0, ids, demb)

    grads = {
        "logits": dlogits,
        "V.weight": dlogits.reshape(B * T, -1).T @ hs.reshape(B * T, -1),
        "V.bias": dlogits.sum(dim=(0, 1)),
        "W.weight": dW,
        "U.weight": flat_da.T @ emb.reshape(B * T, -1),
        "U.bias": flat_da.sum(dim=0),
        "C.weight": dC,
    }
    grads |= {f"h.{t + 1}": dh[:, t] for t in range(T)}
    return grads


GALLERY: dict[str, Callable[..., Mapping[str, torch.Tensor]]] = {
    PREFIX + slug: partial(bptt, bug=slug) for slug in BUGS
}


@hookimpl
def register_gradients(register: Callable[[str, Any], None]) -> None:
    """Loaded only on request (`plugins: [gradaudit_charrnn.gallery]` in a spec), so the
    deliberately wrong gradients never sit among the real ones in `gradaudit plugins`."""
    for name, wrong in GALLERY.items():  # charrnn-bptt-bug-<slug>
        register(name, wrong)
