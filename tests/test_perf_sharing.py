"""Shared float64 truth, one device read per guard check, and --threads."""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from gradaudit.compare import syncs
from gradaudit.compare.syncs import count_syncs, same_bits_all
from gradaudit.results import CaseResult
from gradaudit.run.events import CaseDone
from gradaudit.run.executor import set_threads
from gradaudit.spec import LoadedSpec, parse_spec
from gradaudit.targets.model import dtype_pass
from gradaudit.targets.model.target import ModelTarget
from tests.conftest import engine_events, small_spec


def audit_of(**overrides: Any) -> LoadedSpec:
    text = yaml.safe_dump(small_spec(**overrides))
    return LoadedSpec(parse_spec(text, "s.yaml"), Path("s.yaml").resolve(), "0" * 64)


BORROWED = dtype_pass.DtypePass._borrowed


def record(event: object) -> object:
    if isinstance(event, CaseResult):
        return (event.device, event.dtype, event.kind, event.tensor, event.batch, event.check)
    if isinstance(event, CaseDone):
        return (event.key, event.device_name, event.zero_reference)
    return type(event).__name__


def events(
    loaded: LoadedSpec,
    share: bool,
    monkeypatch: pytest.MonkeyPatch,
    target: ModelTarget | None = None,
) -> tuple[list[object], Counter[str]]:
    borrowed: Counter[str] = Counter()

    def spy(self: dtype_pass.DtypePass, index: int) -> list[torch.Tensor] | None:
        got = BORROWED(self, index)
        borrowed[self.dtype] += got is not None
        return got

    monkeypatch.setattr(dtype_pass.DtypePass, "_borrowed", spy)
    if target is not None:
        target.share = share
    found = [record(e) for e in engine_events(loaded, target, share) if type(e).__name__ != "At"]
    return found, borrowed


CHECKS = {"repeat": {"count": 2}, "finite_difference": {"directions": 2, "batches": 1}}


@pytest.mark.parametrize("checks", [{}, CHECKS])
def test_shared_truth_gives_what_computing_it_again_gives(
    checks: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    audit = audit_of(dtypes=["float32", "float64", "bfloat16"], checks=checks)
    shared, borrowed = events(audit, True, monkeypatch)
    fresh, none = events(audit, False, monkeypatch)
    assert shared == fresh
    assert (
        borrowed["float32"] == 2 and sum(none.values()) == 0
    )  # the float32 truth was taken, not recomputed
    assert borrowed["bfloat16"] == 0  # its truth is built from bfloat16 weights: never shared
    if checks:  # the float64 pass's own truth model is its model: taken too
        assert borrowed["float64"] == 2


def test_no_sharing_when_the_weights_differ_after_the_cast(monkeypatch: pytest.MonkeyPatch) -> None:
    loaded = audit_of(tolerance={"mode": "auto"})
    target = ModelTarget(loaded)
    target.audit.master.double()
    with torch.no_grad():  # weights float32 cannot hold: the float32 case's differ after the cast
        for param in target.audit.master.parameters():
            param.add_(torch.full_like(param, 2.0**-40))
    shared, borrowed = events(loaded, True, monkeypatch, target)
    fresh, _ = events(loaded, False, monkeypatch, target)
    assert shared == fresh and not borrowed["float32"]


def test_the_sync_counter_counts_every_read_of_a_value() -> None:
    a, b = torch.ones(3), torch.zeros(3)
    with count_syncs() as counter:
        float(a.sum()), a.tolist(), bool(a.any()), a[0].item(), torch.equal(a, b)
    assert dict(counter.counts) == {"float": 1, "tolist": 1, "bool": 1, "item": 1, "equal": 1}
    with count_syncs() as counter:
        same = same_bits_all([(a, a.clone()), (a, b), (torch.tensor(float("nan")),) * 2])
    assert same == [True, False, True] and counter.total == 1


@pytest.mark.parametrize("memcmp", [True, False], ids=["memcmp", "torch.equal"])
def test_same_bytes_is_bitwise_on_both_paths(memcmp: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """The CPU's bitwise comparison (the in-place guard's): memcmp where ctypes finds it,
    torch.equal on the bits otherwise; both tell -0.0 from 0.0 and a changed last bit."""
    if not memcmp:
        monkeypatch.setattr(syncs, "memcmp", lambda: None)
    a = torch.randn(1000, dtype=torch.float64)
    flipped = a.clone()
    flipped.view(torch.int64)[-1] ^= 1  # the last bit of the last element
    nan = torch.tensor([float("nan"), 1.0])
    odd = torch.randn(3, dtype=torch.float16)  # 6 bytes: not whole 64-bit words
    assert syncs.same_bytes(a, a.clone()) and syncs.same_bytes(nan, nan.clone())
    assert syncs.same_bytes(odd, odd.clone()) and syncs.same_bytes(a[:0], a[:0].clone())
    assert not syncs.same_bytes(a, flipped)
    assert not syncs.same_bytes(torch.tensor([0.0]), torch.tensor([-0.0]))
    wide = torch.randn(4, 6)
    assert syncs.same_bytes(wide.t(), wide.t().clone())  # not contiguous: the fallback
    changed = wide.clone()
    changed[3, 0] += 1.0
    assert not syncs.same_bytes(wide.t(), changed.t())


def test_the_runner_reads_the_device_at_most_twice_per_case_and_batch(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Its own reads (guards, batch scale), apart from the comparison's (compare.py)."""
    audit = audit_of(tolerance={"mode": "auto"}, dtypes=["float32"])
    engine_events(audit)
    calls = Counter[str]()
    original = dtype_pass.check_all  # type: ignore[attr-defined]

    def counted(*args: Any, **kwargs: Any) -> Any:
        with count_syncs() as inner:
            found = original(*args, **kwargs)
        calls["compare"] += inner.total
        return found

    monkeypatch.setattr(dtype_pass, "check_all", counted)
    with count_syncs() as counter:
        engine_events(audit)
    batches = 2
    # the first batch also asks which gradients are nonzero (once, for all of them)
    assert counter.total - calls["compare"] <= 2 * batches + 1


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_no_unexpected_sync_on_cuda() -> None:
    audit = audit_of(devices=["cuda"], dtypes=["float32"], tolerance={"mode": "allclose"})
    engine_events(audit)
    torch.cuda.set_sync_debug_mode("warn")
    try:
        with pytest.warns(UserWarning) as caught:
            engine_events(audit)
    finally:
        torch.cuda.set_sync_debug_mode(0)
    assert len(caught) > 0  # reads are reported; the count per batch is in benchmarks/README.md


def test_threads_sets_torchs_intra_op_threads(monkeypatch: pytest.MonkeyPatch) -> None:
    before = torch.get_num_threads()
    try:
        set_threads(2)
        assert torch.get_num_threads() == 2
        monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
        set_threads(None)
        assert torch.get_num_threads() == 1
        monkeypatch.setenv("OMP_NUM_THREADS", "2")
        torch.set_num_threads(2)
        set_threads(None)  # the user's OMP_NUM_THREADS stands
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
    assert os.environ.get("OMP_NUM_THREADS") == "2"


def test_threads_is_an_option_of_run_and_mutate(run_cli: Any) -> None:
    for command in ("run", "mutate"):
        result = run_cli(command, "--help")
        assert "--threads" in result.stdout


def test_the_guard_watches_what_named_parameters_and_buffers_name() -> None:
    """watched walks the modules once for both; it must name and hold the same tensors
    (shared weights once, None parameters skipped, parametrizations and non-persistent
    buffers included)."""
    from torch.nn.utils import parametrize

    from gradaudit.targets.model.guards import watched
    from gradaudit.types import Forward

    class Twice(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = torch.nn.Linear(3, 3, bias=False)
            self.b = torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.BatchNorm1d(3))
            self.b[0].weight = self.a.weight  # shared
            self.register_buffer("scratch", torch.zeros(2), persistent=False)
            self.c = torch.nn.Linear(3, 2)
            parametrize.register_parametrization(self.c, "weight", torch.nn.Identity())

    model = Twice()
    forward = Forward(torch.tensor(0.0), {"h": torch.ones(2)})
    expected: dict[str, torch.Tensor] = {f"parameter {n}": p for n, p in model.named_parameters()}
    expected |= {f"buffer {n}": b for n, b in model.named_buffers()}
    expected |= {"intermediate h": forward.intermediates["h"]}
    found = watched(model, forward)
    assert list(found) == list(expected)
    assert all(found[k] is v for k, v in expected.items())
