"""A gallery of CharRNN manual gradients that only the invariance checks catch (or name).

Loaded on request, `plugins: [gradaudit_charrnn.invariance_gallery]`, like the BPTT gallery.
Each is the correct BPTT (`gradaudit_charrnn.bptt`) with one slip:

  name                                  the slip                           what catches it
  -----------------------------------   --------------------------------   --------------------
  charrnn-bptt-bug-hardcoded-batch      dlogits / (32*T), the configured   micro_batch only: on
                                        batch size, not the batch's B*T    batches of 32 rows
                                        (every gradient is linear in       it is exact
                                        dlogits: all scale by B/32)
  charrnn-bptt-bug-overwrites-logits    softmax computed in place in the   the pass's guard:
                                        logits intermediate (to save       every case of the
                                        memory); the result is right       batch is an error
  charrnn-bptt-bug-clobbers-saved       (model charrnn-saving) overwrites  saved_tensors (and
                                        the hidden states the forward      repeat): the second
                                        saved for it with tanh' after      call over the same
                                        using them; right once             forward is wrong
  charrnn-bptt-bug-accumulates          adds dC into a workspace kept on   saved_tensors names
                                        the model, never zeroed: right on  the workspace; the
                                        the first call only                second call is wrong

`charrnn-saving` is the CharRNN that also keeps its hidden states in `saved` (a holder, as
`ctx` is for an autograd.Function) for its backward, `charrnn-bptt-saved`, to read.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn

from gradaudit import Batch, Forward, hookimpl
from gradaudit_charrnn.bptt import charrnn_bptt
from gradaudit_charrnn.model import CharRNN, build_charrnn

CONFIGURED_BATCH = 32  # the spec's batches.size, hard-coded where B belongs


class SavingRNN(CharRNN):
    """The CharRNN, keeping its hidden states (time-major) for the backward in `saved`."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.saved: dict[str, torch.Tensor] = {}

    def forward(self, inputs: torch.Tensor, targets: torch.Tensor) -> Forward:
        out = super().forward(inputs, targets)
        steps = inputs.shape[1]
        hs = [out.intermediates[f"h.{t}"].detach() for t in range(1, steps + 1)]
        self.saved = {"hs": torch.stack(hs)}
        return out


def build_saving(vocab_size: int, block_size: int | None = None, **options: Any) -> SavingRNN:
    build_charrnn(vocab_size, **options)  # the same option checks
    return SavingRNN(vocab_size, **options)


def _from_saved(model: nn.Module, forward: Forward) -> Forward:
    """The forward with its hidden states replaced by the model's saved ones."""
    hs: torch.Tensor = model.saved["hs"]  # type: ignore[index]
    states = {f"h.{t + 1}": hs[t] for t in range(hs.shape[0])}
    return Forward(forward.loss, {**forward.intermediates, **states})


def bptt_saved(model: nn.Module, batch: Batch, forward: Forward) -> Mapping[str, torch.Tensor]:
    """Correct: BPTT from the saved hidden states."""
    return charrnn_bptt(model, batch, _from_saved(model, forward))


def clobbers_saved(model: nn.Module, batch: Batch, forward: Forward) -> Mapping[str, torch.Tensor]:
    grads = charrnn_bptt(model, batch, _from_saved(model, forward))
    hs: torch.Tensor = model.saved["hs"]  # type: ignore[index]
    hs.mul_(hs).neg_().add_(1)  # the bug: tanh' into the saved states' memory
    return grads


def hardcoded_batch(model: nn.Module, batch: Batch, forward: Forward) -> Mapping[str, torch.Tensor]:
    grads = charrnn_bptt(model, batch, forward)
    factor = batch.inputs.shape[0] / CONFIGURED_BATCH  # the bug: N = 32*T, not B*T
    return {name: g * factor for name, g in grads.items()}


def overwrites_logits(
    model: nn.Module, batch: Batch, forward: Forward
) -> Mapping[str, torch.Tensor]:
    logits = forward.intermediates["logits"]
    logits.sub_(logits.amax(-1, keepdim=True)).exp_()  # the bug: softmax in place
    logits.div_(logits.sum(-1, keepdim=True))
    probs = Forward(forward.loss, {**forward.intermediates, "logits": logits.log()})
    return charrnn_bptt(model, batch, probs)  # softmax(log p) = p: right to rounding


def accumulates(model: nn.Module, batch: Batch, forward: Forward) -> Mapping[str, torch.Tensor]:
    grads = dict(charrnn_bptt(model, batch, forward))
    workspace = getattr(model, "dC_workspace", None)
    if workspace is None:
        workspace = torch.zeros_like(grads["C.weight"])
        model.dC_workspace = workspace
    workspace += grads["C.weight"]  # the bug: never zeroed between calls
    grads["C.weight"] = workspace.clone()
    return grads


PREFIX = "charrnn-bptt-bug-"
GALLERY: dict[str, Callable[..., Mapping[str, torch.Tensor]]] = {
    PREFIX + "hardcoded-batch": hardcoded_batch,
    PREFIX + "overwrites-logits": overwrites_logits,
    PREFIX + "clobbers-saved": clobbers_saved,
    PREFIX + "accumulates": accumulates,
}


@hookimpl
def register_models(register: Callable[[str, Any], None]) -> None:
    register("charrnn-saving", build_saving)


@hookimpl
def register_gradients(register: Callable[[str, Any], None]) -> None:
    register("charrnn-bptt-saved", bptt_saved)
    for name, wrong in GALLERY.items():
        register(name, wrong)
