"""A plugin that misbehaves where and how $HOSTILE_PLUGIN says ("PLACE:ACT"): the
matrix of tests/test_hostile_matrix.py. Places: import, hook, data, model, batches, forward,
backward, candidate, reference. Acts: sys-exit (sys.exit(0)), os-exit (os._exit(0)),
interrupt (KeyboardInterrupt, a BaseException), segv (SIGSEGV to itself), hang (sleeps),
hang-no-alarm (ignores SIGALRM, then sleeps)."""

from __future__ import annotations

import os
import signal
import sys
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch

from gradaudit import hookimpl

PLACE, _, ACT = os.environ.get("HOSTILE_PLUGIN", ":").partition(":")


def act(place: str) -> None:
    """Misbehave, if this is the place."""
    if place != PLACE:
        return
    if ACT == "sys-exit":
        sys.exit(0)
    if ACT == "os-exit":
        os._exit(0)
    if ACT == "interrupt":
        raise KeyboardInterrupt
    if ACT == "segv":
        os.kill(os.getpid(), signal.SIGSEGV)
    if ACT in ("hang", "hang-no-alarm"):
        if ACT == "hang-no-alarm":
            signal.signal(signal.SIGALRM, signal.SIG_IGN)
        time.sleep(600)


act("import")


class _Data:
    def __init__(self, inner: Any) -> None:
        self.inner = inner

    @property
    def model_args(self) -> Mapping[str, Any]:
        return dict(self.inner.model_args)

    def batches(self, split: str, count: int | None, size: int | None, seed: int) -> Iterator[Any]:
        for i, batch in enumerate(self.inner.batches(split, count, size, seed)):
            if i == 1:
                act("batches")
            yield batch


def data(options: Mapping[str, Any], base_dir: Path) -> Any:
    from gradaudit_text import load_text

    act("data")
    return _Data(load_text(options, base_dir))


def model(**kwargs: Any) -> torch.nn.Module:
    from gradaudit_charrnn.model import build_charrnn

    act("model")
    built: torch.nn.Module = build_charrnn(**kwargs)
    calls = [0]

    def second_forward(module: Any, args: Any, kwargs: Any) -> None:
        calls[0] += 1
        if calls[0] == 2:
            act("forward")

    built.register_forward_pre_hook(second_forward, with_kwargs=True)
    return built


CALLS = {"backward": 0}


def gradients(model: Any, batch: Any, forward: Any) -> Any:
    from gradaudit_charrnn.bptt import charrnn_bptt

    CALLS["backward"] += 1
    if CALLS["backward"] == 2:
        act("backward")
    return charrnn_bptt(model, batch, forward)


def candidate(x: torch.Tensor) -> torch.Tensor:
    act("candidate")
    return torch.tanh(x)


def reference(x: torch.Tensor) -> torch.Tensor:
    act("reference")
    return torch.tanh(x)


@hookimpl
def register_models(register: Any) -> None:
    act("hook")
    register("hostile-model", model)


@hookimpl
def register_gradients(register: Any) -> None:
    register("hostile-gradients", gradients)


@hookimpl
def register_data(register: Any) -> None:
    register("hostile-data", data)


@hookimpl
def register_ops(register: Any) -> None:
    register("hostile-candidate", candidate)
    register("hostile-reference", reference)
