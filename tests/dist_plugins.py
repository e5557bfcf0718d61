"""Misbehaving ranks for tests/test_distributed.py: drift, a raise, a hang, a death, a bad layout.

Loaded by file path from the test specs (`plugins: [.../dist_plugins.py]`), in every rank.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable, Mapping
from typing import Any

import torch
from gradaudit_tp.backward import tp_mlp_backward
from gradaudit_tp.model import TPMLP, build_tp_mlp

from gradaudit import Forward, Placement, Split, hookimpl


def _rank(model: torch.nn.Module) -> int:
    return int(getattr(model, "rank", 0) or 0)


def drift(
    model: torch.nn.Module, batch: Any, forward: Forward, **options: Any
) -> Mapping[str, torch.Tensor]:
    """Correct, except rank 1's b2 gradient moves by 1e-12 relative: within allclose against
    autograd, but no longer bitwise rank 0's."""
    grads = dict(tp_mlp_backward(model, batch, forward))
    if _rank(model) == 1:
        grads["b2"] = grads["b2"] * (1 + 1e-12)
    return grads


def drift_at(
    model: torch.nn.Module, batch: Any, forward: Forward, **options: Any
) -> Mapping[str, torch.Tensor]:
    """drift, on the batches listed in options["batches"] only."""
    if batch.index in options["batches"]:
        return drift(model, batch, forward)
    return tp_mlp_backward(model, batch, forward)


def _on_rank1_batch1(action: Callable[[], None]) -> Callable[..., Mapping[str, torch.Tensor]]:
    def gradient(
        model: torch.nn.Module, batch: Any, forward: Forward, **options: Any
    ) -> Mapping[str, torch.Tensor]:
        if _rank(model) == 1 and batch.index == 1:
            action()
        return tp_mlp_backward(model, batch, forward)

    return gradient


def _raise() -> None:
    raise ValueError("boom on rank 1")


def _hang() -> None:
    time.sleep(600)


def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


class UntiledMLP(TPMLP):
    def shard_layout(self) -> dict[str, Placement]:
        layout = super().shard_layout()
        layout["b1"] = Split(dim=0, sizes=(10, 20))  # b1 has 32 entries
        return layout


def _own(options: dict[str, Any]) -> dict[str, Any]:
    """The model's options without what the data declares (shapes, classes)."""
    return {k: v for k, v in options.items() if k not in ("shapes", "classes")}


def build_untiled(rank: int | None = None, world_size: int = 1, **options: Any) -> TPMLP:
    build_tp_mlp(rank, world_size, **options)  # the same option checks
    return UntiledMLP(rank, world_size, **_own(options))


def build_unseeded(rank: int | None = None, world_size: int = 1, **options: Any) -> TPMLP:
    """tp-mlp whose weights also draw from an unseeded source: each process builds a
    different full model (gradaudit gives every rank rank 0's)."""
    model = build_tp_mlp(rank, world_size, **options)
    noise = torch.Generator().manual_seed(os.getpid())
    with torch.no_grad():
        for param in model.parameters():
            param.add_(torch.randn(param.shape, generator=noise) * 0.1)
    return model


class RaggedMLP(TPMLP):
    """The full model's `h` loses a row on every batch after the first it sees: shapes
    that vary from batch to batch."""

    first: torch.Tensor | None = None

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> Forward:
        result = super().forward(x, y)
        if self.rank is not None:
            return result
        if self.first is None:
            self.first = x.detach().clone()
        if self.first.shape != x.shape or not torch.equal(self.first, x.detach()):
            return Forward(
                result.loss, {**result.intermediates, "h": result.intermediates["h"][1:]}
            )
        return result


def build_ragged(rank: int | None = None, world_size: int = 1, **options: Any) -> TPMLP:
    build_tp_mlp(rank, world_size, **options)  # the same option checks
    return RaggedMLP(rank, world_size, **_own(options))


@hookimpl
def register_models(register: Callable[[str, Any], None]) -> None:
    register("tp-test-untiled", build_untiled)
    register("tp-test-unseeded", build_unseeded)
    register("tp-test-ragged", build_ragged)


@hookimpl
def register_gradients(register: Callable[[str, Any], None]) -> None:
    register("tp-test-drift", drift)
    register("tp-test-drift-at", drift_at)
    register("tp-test-raise", _on_rank1_batch1(_raise))
    register("tp-test-hang", _on_rank1_batch1(_hang))
    register("tp-test-die", _on_rank1_batch1(_die))
