"""The shipped example ops: green in every dtype with default tolerances, and each gallery
bug red in exactly the cases that expose it, in float64 and float32 alike."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from gradaudit_ops import log_softmax_reference, rmsnorm_reference, softmax_xent_reference
from gradaudit_ops.gallery import BUGS, RMSNormFirstRowGrad
from gradaudit_ops.rmsnorm import RMSNormFunction

from gradaudit.targets.op.api import OpResult, check_op
from tests.conftest import run_op_spec

REPO = Path(__file__).resolve().parents[1]
XENT: dict[str, Any] = {
    "reference": softmax_xent_reference,
    "inputs": {"logits": ["N", "V"], "targets": {"shape": ["N"], "dtype": "int64", "high": "V"}},
    "dims": {"N": 8, "V": 16},
    "checks": {"micro_batch": {"reduction": "mean"}, "saved_tensors": {}},
}
RMS: dict[str, Any] = {
    "reference": rmsnorm_reference,
    "inputs": {"x": ["N", "D"], "weight": ["D"]},
    "dims": {"N": 6, "D": 16},
    "checks": {"micro_batch": {"reduction": "none"}, "saved_tensors": {}},
}
LOGSOFTMAX: dict[str, Any] = {
    "reference": log_softmax_reference,
    "inputs": {"x": ["N", "D"]},
    "dims": {"N": 6, "D": 16},
}
# With `n_items` fixed to the batch's rows, a correct op sums over micro-batches.
XENT_ITEMS = {**XENT, "args": {"n_items": "N"}, "checks": {"micro_batch": {"reduction": "sum"}}}
LAYOUTS = {"transposed", "strided", "expanded"}

# bug -> (audit settings, {failing case: failing tensors}); `!` marks an error (the op
# raised) rather than a wrong value. Every other case of the audit passes.
EXPECTED: dict[str, tuple[dict[str, Any], dict[str, set[str]]]] = {
    # right only where n = 1 (N=1) or the gradient is 0 anyway (V=1: softmax is 1)
    "xent-missing-scale": (
        XENT,
        {
            c: {"grad.logits"}
            for c in ["base", "N=11", "V=17", "lead1", "lead2", *LAYOUTS, "ignore_index-hit"]
            + ["micro_batch"]
        },
    ),
    # random targets never equal ignore_index (-100): only the variant that plants it
    "xent-ignores-ignore-index": (XENT, {"ignore_index-hit": {"grad.logits"}}),
    # dim defaults to -1 (base); the argument variant dim=0 is the only other dim of x
    "log-softmax-last-dim": (LOGSOFTMAX, {"dim=0": {"grad.x"}}),
    # the dropped tail is V % 4 columns: only an odd vocabulary has one (V=1 has a zero grad)
    "xent-odd-vocab": (XENT, {"V=17": {"grad.logits"}}),
    # n_items = N matches the counted rows of every single call except with leading dims
    # and where ignored rows are left out; only the micro-batch check shows it on the
    # declared shapes
    "xent-local-normaliser": (
        XENT_ITEMS,
        {c: {"grad.logits"} for c in ["lead1", "lead2", "ignore_index-hit", "micro_batch"]},
    ),
    # dim 1 is dim -1 for 2-D inputs
    "rmsnorm-wrong-axis": (RMS, {"lead1": {"grad.x"}, "lead2": {"grad.x"}}),
    # wrong values from a transposed or strided grad; an expanded one is out of bounds
    "rmsnorm-assumes-contiguous": (
        RMS,
        {
            "transposed": {"grad.x", "grad.weight"},
            "strided": {"grad.x", "grad.weight"},
            "expanded": {"out!", "grad.x!", "grad.weight!"},
        },
    ),
    # right where all rows share one upstream gradient row: N=1, and `expanded`
    "rmsnorm-first-row-grad": (
        RMS,
        {
            c: {"grad.weight"}
            for c in [
                "base",
                "N=7",
                "D=17",
                "D=1",
                "lead1",
                "lead2",
                "transposed",
                "strided",
                "eps=0.5",
                "micro_batch",
            ]
        },
    ),
    # a half-precision accumulator: exact where the accumulator is float32 or float64
    # (test_the_accumulator_bug_is_red_only_on_the_long_batch_in_half_types)
    "rmsnorm-low-accumulator": (RMS, {}),
    # the audit's sides get their own inputs, so only saved_tensors sees the overwrite
    # (and `expanded`, where writing into a stride-0 input raises)
    "rmsnorm-in-place": (
        RMS,
        {
            "saved_tensors": {"input.x", "grad.x!", "grad.weight!"},
            "expanded": {"out!", "grad.x!", "grad.weight!"},
        },
    ),
}


def failing(result: OpResult, dtype: str) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for group in result.groups:
        if group.dtype != dtype:
            continue
        case = group.check.removeprefix("variant:")
        for s in group.tensors:
            if s.status not in ("pass", "skipped"):  # a skip: not applicable (a contract)
                out.setdefault(case, set()).add(s.tensor + ("!" if s.status == "error" else ""))
    return out


@pytest.fixture(scope="module")
def gallery() -> dict[str, OpResult]:
    return {
        name: check_op(
            BUGS[name][0], dtypes=["float64", "float32"], raise_on_failure=False, **settings
        )
        for name, (settings, _) in EXPECTED.items()
    }


def test_the_gallery_covers_the_issue() -> None:
    kinds = {what for _, what in BUGS.values()}
    assert {
        "a scale factor missing in backward",
        "a wrong reduction axis",
        "a .view that assumes contiguity",
        "odd sizes handled wrong",
        "needs a non-uniform upstream gradient",
        "accumulation normalisation",
        "a half-precision accumulator",
    } <= kinds
    assert set(EXPECTED) == set(BUGS)


@pytest.mark.parametrize("name", list(EXPECTED))
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_each_bug_fails_exactly_where_stated(
    gallery: dict[str, OpResult], name: str, dtype: str
) -> None:
    assert failing(gallery[name], dtype) == EXPECTED[name][1]


@pytest.mark.parametrize("name", [name for name, (_, cases) in EXPECTED.items() if cases])
def test_the_failure_names_the_variant_and_seed(name: str) -> None:
    settings, cases = EXPECTED[name]
    with pytest.raises(AssertionError) as info:
        check_op(BUGS[name][0], dtypes=["float32"], **settings)
    first = str(info.value).splitlines()[0]
    assert any(
        f"variant {case}, seed " in first or f"{case.replace('_', ' ')}, seed " in first
        for case in cases
    ), first
    assert "worst element" in str(info.value) or "raised" in str(info.value)
    assert "reproduce: check_op(" in str(info.value)


def test_the_accumulator_bug_is_red_only_on_the_long_batch_in_half_types() -> None:
    """The long variants (each dim at 16384, the others halved to fit 32k elements per input:
    N=16384 x D=2, D=16384 x N=2) run in bfloat16, or in float16 where the audit has no
    bfloat16; a row loop with a half accumulator is red on the long batch's weight gradient,
    and the correct op is green there."""
    for dtypes in (["bfloat16", "float16"], ["float16"]):
        bug = check_op(
            BUGS["rmsnorm-low-accumulator"][0], dtypes=dtypes, raise_on_failure=False, **RMS
        )
        good = check_op(RMSNormFunction, dtypes=dtypes, raise_on_failure=False, **RMS)
        long = dtypes[0]
        assert failing(bug, long) == {"N=16384": {"grad.weight"}}
        assert failing(good, long) == {}
        checks = {(g.dtype, g.check) for g in good.groups}
        assert {(long, "variant:N=16384"), (long, "variant:D=16384")} <= checks
        assert not any(c.endswith("16384") for d, c in checks if d != long)


def test_the_reproduce_line_reproduces_the_failure() -> None:
    settings = EXPECTED["rmsnorm-wrong-axis"][0]
    result = check_op(
        BUGS["rmsnorm-wrong-axis"][0],
        dtypes=["float32"],
        variants=["lead2"],
        raise_on_failure=False,
        **{**settings, "checks": None},
    )
    assert [g.check for g in result.groups] == ["variant:lead2"]
    assert failing(result, "float32") == {"lead2": {"grad.x"}}


def test_a_uniform_upstream_gradient_hides_the_first_row_bug() -> None:
    """Why the audit draws a random upstream gradient: with ones, the bug is exact."""
    x = torch.randn(6, 16, dtype=torch.float64, requires_grad=True)
    w = torch.rand(16, dtype=torch.float64, requires_grad=True)
    for upstream, hidden in (
        (torch.ones(6, 16, dtype=torch.float64), True),
        (torch.randn(6, 16, dtype=torch.float64), False),
    ):
        good = torch.autograd.grad(RMSNormFunction.apply(x, w, 1e-6), [w], upstream)[0]  # type: ignore[no-untyped-call]
        bad = torch.autograd.grad(RMSNormFirstRowGrad.apply(x, w, 1e-6), [w], upstream)[0]  # type: ignore[no-untyped-call]
        assert torch.allclose(good, bad) == hidden


@pytest.mark.parametrize("spec", ["op-rmsnorm", "op-softmax-xent"])
def test_each_example_op_is_green_in_four_dtypes(spec: str) -> None:
    groups = run_op_spec(REPO / "specs" / f"{spec}.yaml")
    statuses = {(g.dtype, g.check, s.tensor): s.status for g in groups for s in g.tensors}
    assert {dtype for dtype, _, _ in statuses} == {"float64", "float32", "bfloat16", "float16"}
    assert set(statuses.values()) == {"pass"}, [k for k, v in statuses.items() if v != "pass"]
    checks = {check for _, check, _ in statuses}
    assert {
        "variant:base",
        "variant:lead2",
        "variant:expanded",
        "micro_batch",
        "saved_tensors",
    } <= checks
    # compared in the dtype each group claims, against autograd's own error (baseline)
    low = [
        s for g in groups if g.dtype == "bfloat16" and g.check != "variant:zeros" for s in g.tensors
    ]
    assert all(s.tol.mode in ("baseline", "exact") for s in low)
    zeros = [s for g in groups if g.check == "variant:zeros" for s in g.tensors]
    assert zeros and all(s.tol.mode in ("finite", "exact") for s in zeros)
    assert all(s.worst is not None and s.numel > 0 for g in groups for s in g.tensors)


def test_argument_variants_run_and_the_correct_ops_stay_green() -> None:
    """log_softmax's `dim` (a default of the Function's forward, not declared) runs at every
    other dim; the cross-entropy's `ignore_index` gets a variant whose targets hit it."""
    from gradaudit_ops import log_softmax

    result = check_op(
        log_softmax, dtypes=["float64", "float32", "bfloat16", "float16"], **LOGSOFTMAX
    )
    checks = {g.check for g in result.groups}
    assert "variant:dim=0" in checks and "variant:dim=1" not in checks  # dim=1 is base's -1
    assert result.ok
    groups = run_op_spec(REPO / "specs" / "op-softmax-xent.yaml")
    hit = [s.status for g in groups if g.check == "variant:ignore_index-hit" for s in g.tensors]
    assert hit and set(hit) == {"pass"}


def test_check_op_prints_a_one_screen_overview_on_a_pass_and_on_a_failure(
    capsys: pytest.CaptureFixture[str],
) -> None:
    good = check_op(RMSNormFunction, dtypes=["float64", "bfloat16"], verbose=True, **RMS)
    shown = capsys.readouterr().out.splitlines()
    assert shown[0].startswith("check_op: op RMSNormFunction, 14 variants of x 6x16")
    assert shown[0].endswith(
        f"passed ({good.summary.passed} passed, 0 failed, 0 errors, 0 skipped)"
    )
    assert [line.split()[0] for line in shown[1:3]] == ["float64", "bfloat16"]
    assert "worst budget" in shown[1] and shown[3].startswith("  14 variants: base, N=7,")
    assert len(shown) == 4
    bad = check_op(BUGS["rmsnorm-wrong-axis"][0], dtypes=["float32"], raise_on_failure=False, **RMS)
    text = bad.overview()
    assert ": FAILED (" in text.splitlines()[0] and "reproduce: check_op(" in text
