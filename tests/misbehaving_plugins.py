"""Misbehaving plugins: models and manual gradients that break the rules (not a test file).

Load it from a spec with `plugins: [/abs/path/to/tests/misbehaving_plugins.py]`. Every plugin
here starts from the correct CharRNN and its correct BPTT and misbehaves in one way, in one
dtype only (and, where noted, on batch 0 only), so that a run over [float32, float64] shows both
that the misbehaviour is reported per tensor and that the well-behaved cases still run and pass.

Manual gradients misbehave in float64. Models misbehave in float32 instead, on batches of more
than one row: a float32 case also runs the model in float64 (its truth for the baseline
tolerance), so a model that failed in float64 would take the float32 cases down with it; and
gradaudit probes the model's tensor names with a one-row float32 forward at start-up.

Models (`model: {plugin: ...}`):
  mis-build-raises            the factory raises (a setup error: the run cannot start)
  mis-forward-raises          forward raises (float32)
  mis-forward-modifies-batch  forward rolls the batch's targets in place (float32)

Gradients (`gradients: {plugin: ...}`), each wrapping `charrnn_bptt`:
  mis-raises               raises RuntimeError in float64
  mis-wrong-shape          V.bias one element short
  mis-wrong-dtype          V.bias in float32
  mis-wrong-device         V.bias on the meta device
  mis-non-tensor           V.bias as a Python list
  mis-missing              no V.bias
  mis-unknown-name         an extra 'Z.weight', which the model does not have
  mis-nan                  V.bias[0] = NaN
  mis-inf                  W.weight[0, 0] = +Inf
  mis-modifies-params      W.weight *= 2 in place, on batch 0 (every dtype)
  mis-modifies-batch       batch.inputs += 1 in place
  mis-returns-param        V.bias is the parameter itself (requires grad)
  mis-requires-grad        V.bias is a new tensor that requires grad
  mis-view-of-param        V.bias is `model.V.bias.view(-1)`, a view of the parameter
  mis-detached-param       V.bias is `model.V.bias.detach()`: no grad, but the parameter's memory
  mis-slow                 sleeps SLOW_SECONDS before returning (float64)
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any, cast

import torch
from gradaudit_charrnn.bptt import charrnn_bptt
from gradaudit_charrnn.model import CharRNN, build_charrnn
from torch import nn

from gradaudit import Batch, Forward, hookimpl

SLOW_SECONDS = 3.0
RAISE_MESSAGE = "deliberate failure in float64"
BUILD_MESSAGE = "deliberate failure while building the model"
FORWARD_MESSAGE = "deliberate failure in forward"

Grads = dict[str, torch.Tensor]
GradientFn = Callable[[nn.Module, Batch, Forward], Mapping[str, Any]]


def _is64(forward: Forward) -> bool:
    return forward.loss.dtype == torch.float64


def _correct(model: nn.Module, batch: Batch, forward: Forward) -> Grads:
    return dict(charrnn_bptt(model, batch, forward))


def _only_in_float64(
    misbehave: Callable[[nn.Module, Batch, Forward, Grads], Mapping[str, Any]],
) -> GradientFn:
    """The correct BPTT, handed to `misbehave` in float64 (returned untouched otherwise)."""

    def gradient(model: nn.Module, batch: Batch, forward: Forward) -> Mapping[str, Any]:
        grads = _correct(model, batch, forward)
        return misbehave(model, batch, forward, grads) if _is64(forward) else grads

    gradient.__name__ = misbehave.__name__
    return gradient


@_only_in_float64
def raises(model: nn.Module, batch: Batch, forward: Forward, grads: Grads) -> Grads:
    raise RuntimeError(RAISE_MESSAGE)


@_only_in_float64
def wrong_shape(model: nn.Module, batch: Batch, forward: Forward, grads: Grads) -> Grads:
    return grads | {"V.bias": grads["V.bias"][:-1].clone()}


@_only_in_float64
def wrong_dtype(model: nn.Module, batch: Batch, forward: Forward, grads: Grads) -> Grads:
    return grads | {"V.bias": grads["V.bias"].float()}


@_only_in_float64
def wrong_device(model: nn.Module, batch: Batch, forward: Forward, grads: Grads) -> Grads:
    return grads | {"V.bias": grads["V.bias"].to("meta")}


@_only_in_float64
def non_tensor(model: nn.Module, batch: Batch, forward: Forward, grads: Grads) -> dict[str, Any]:
    return grads | {"V.bias": grads["V.bias"].tolist()}


@_only_in_float64
def missing(model: nn.Module, batch: Batch, forward: Forward, grads: Grads) -> Grads:
    return {name: g for name, g in grads.items() if name != "V.bias"}


@_only_in_float64
def unknown_name(model: nn.Module, batch: Batch, forward: Forward, grads: Grads) -> Grads:
    return grads | {"Z.weight": torch.zeros_like(grads["W.weight"])}


@_only_in_float64
def nan(model: nn.Module, batch: Batch, forward: Forward, grads: Grads) -> Grads:
    bias = grads["V.bias"].clone()
    bias[0] = float("nan")
    return grads | {"V.bias": bias}


@_only_in_float64
def inf(model: nn.Module, batch: Batch, forward: Forward, grads: Grads) -> Grads:
    weight = grads["W.weight"].clone()
    weight[0, 0] = float("inf")
    return grads | {"W.weight": weight}


def modifies_params(model: nn.Module, batch: Batch, forward: Forward) -> Grads:
    """Correct values, but W.weight is doubled in place on batch 0 (in every dtype)."""
    grads = _correct(model, batch, forward)
    if batch.index == 0:
        cast(CharRNN, model).W.weight.mul_(2)
    return grads


@_only_in_float64
def modifies_batch(model: nn.Module, batch: Batch, forward: Forward, grads: Grads) -> Grads:
    batch.inputs.add_(1)
    return grads


@_only_in_float64
def returns_param(model: nn.Module, batch: Batch, forward: Forward, grads: Grads) -> Grads:
    return grads | {"V.bias": cast(CharRNN, model).V.bias}


@_only_in_float64
def requires_grad(model: nn.Module, batch: Batch, forward: Forward, grads: Grads) -> Grads:
    return grads | {"V.bias": grads["V.bias"].clone().requires_grad_(True)}


@_only_in_float64
def view_of_param(model: nn.Module, batch: Batch, forward: Forward, grads: Grads) -> Grads:
    return grads | {"V.bias": cast(CharRNN, model).V.bias.view(-1)}


@_only_in_float64
def detached_param(model: nn.Module, batch: Batch, forward: Forward, grads: Grads) -> Grads:
    return grads | {"V.bias": cast(CharRNN, model).V.bias.detach()}


@_only_in_float64
def slow(model: nn.Module, batch: Batch, forward: Forward, grads: Grads) -> Grads:
    time.sleep(SLOW_SECONDS)
    return grads


GRADIENTS: dict[str, GradientFn] = {
    "mis-raises": raises,
    "mis-wrong-shape": wrong_shape,
    "mis-wrong-dtype": wrong_dtype,
    "mis-wrong-device": wrong_device,
    "mis-non-tensor": non_tensor,
    "mis-missing": missing,
    "mis-unknown-name": unknown_name,
    "mis-nan": nan,
    "mis-inf": inf,
    "mis-modifies-params": modifies_params,
    "mis-modifies-batch": modifies_batch,
    "mis-returns-param": returns_param,
    "mis-requires-grad": requires_grad,
    "mis-view-of-param": view_of_param,
    "mis-detached-param": detached_param,
    "mis-slow": slow,
}


def _misbehaves(model: CharRNN, inputs: torch.Tensor) -> bool:
    return model.V.weight.dtype == torch.float32 and inputs.shape[0] > 1


class ForwardRaises(CharRNN):
    def forward(self, inputs: torch.Tensor, targets: torch.Tensor) -> Forward:
        if _misbehaves(self, inputs):
            raise RuntimeError(FORWARD_MESSAGE)
        return super().forward(inputs, targets)


class ForwardModifiesBatch(CharRNN):
    def forward(self, inputs: torch.Tensor, targets: torch.Tensor) -> Forward:
        if _misbehaves(self, inputs):
            targets.copy_(targets.roll(1, dims=-1))
        return super().forward(inputs, targets)


def build_raises(vocab_size: int, **options: Any) -> nn.Module:
    raise RuntimeError(BUILD_MESSAGE)


def _build(cls: type[CharRNN]) -> Callable[..., nn.Module]:
    def build(vocab_size: int, block_size: int, **options: Any) -> nn.Module:
        build_charrnn(vocab_size, **options)  # the same option checks
        return cls(vocab_size, **options)

    return build


MODELS: dict[str, Callable[..., nn.Module]] = {
    "mis-build-raises": build_raises,
    "mis-forward-raises": _build(ForwardRaises),
    "mis-forward-modifies-batch": _build(ForwardModifiesBatch),
}


@hookimpl
def register_models(register: Callable[[str, Any], None]) -> None:
    for name, factory in MODELS.items():
        register(name, factory)


@hookimpl
def register_gradients(register: Callable[[str, Any], None]) -> None:
    for name, fn in GRADIENTS.items():
        register(name, fn)
