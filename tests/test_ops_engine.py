"""The op-audit engine: variants really reach the op, bad input is one line (exit 2) or an
error of one variant, finite differences stand in for a missing reference, Module
candidates compare their parameters, the guard finds custom Functions, and the
existing reporters print op groups."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from gradaudit_ops import RMSNorm, rmsnorm, rmsnorm_reference
from gradaudit_ops.gallery import BUGS

from gradaudit.checks.micro_batch import split_sizes
from gradaudit.errors import EXIT_USAGE, GradauditError
from gradaudit.spec import load_spec as load_op_spec
from gradaudit.spec.op import InputDecl, Variants
from gradaudit.targets.model.functions import custom_functions_in_graph, warning_for
from gradaudit.targets.op.api import check_op
from gradaudit.targets.op.errors import OpError, OpSpecError
from gradaudit.targets.op.load import metadata
from gradaudit.targets.op.variants import derive, draw_inputs, variant_seed
from tests.conftest import run_gradaudit, run_op_spec

REPO = Path(__file__).resolve().parents[1]
XW = {"x": (4, 8), "w": (8,)}


def seen_by_op(variants: list[str]) -> list[dict[str, Any]]:
    """What the candidate receives, per call: input and upstream-gradient layouts."""
    calls: list[dict[str, Any]] = []

    class Spy(torch.autograd.Function):
        @staticmethod
        def forward(ctx: Any, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
            calls.append(
                {"shape": tuple(x.shape), "x_contiguous": x.is_contiguous(), "x_stride": x.stride()}
            )
            ctx.save_for_backward(x, w)
            return x * w

        @staticmethod
        def backward(ctx: Any, g: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            x, w = ctx.saved_tensors
            calls[-1] |= {"g_contiguous": g.is_contiguous(), "g": g.detach().clone()}
            return g * w, (g * x).reshape(-1, g.shape[-1]).sum(0)

    check_op(Spy, lambda x, w: x * w, inputs=XW, dtypes=["float64"], variants=variants)
    return calls


def test_layout_variants_reach_the_op_and_its_backward() -> None:
    calls = seen_by_op(["base", "transposed", "strided", "expanded"])
    cand = [c for c in calls if "g" in c]  # the candidate's calls (the reference is a lambda)
    assert [c["x_contiguous"] for c in cand] == [True, False, False, False]
    assert [c["g_contiguous"] for c in cand] == [True, False, False, False]
    assert cand[3]["x_stride"][0] == 0  # expanded: one row, stride 0
    for c in cand:
        assert c["shape"] == (4, 8)


def test_upstream_gradients_are_random_never_ones() -> None:
    for call in seen_by_op(["base", "lead1"]):
        g = call["g"]
        assert g.std() > 0.5 and not torch.all(g == 1)


LONG = Variants(sizes=False, leading=0, layouts=False, arguments=False, zeros=False)


def test_derived_variants_and_their_shapes() -> None:
    inputs = {"x": InputDecl(shape=["N", "D"]), "w": InputDecl(shape=["D"])}
    variants = {v.name: v for v in derive(inputs, {"N": 4, "D": 8}, Variants(extreme=True), 0)}
    assert list(variants) == [
        "base",
        "N=5",
        "N=1",
        "D=11",
        "D=1",
        "lead1",
        "lead2",
        "transposed",
        "strided",
        "expanded",
        "large",
        "tiny",
        "zeros",  # a quarter of the float inputs exactly zero, compared for finiteness
        "N=16384",  # long reductions, half types: the other dims halved to fit 32k elements
        "D=16384",
    ]
    assert variants["N=16384"].long
    assert variants["N=16384"].shapes == {"x": (16384, 2), "w": (2,)}
    assert variants["D=16384"].shapes == {"x": (2, 16384), "w": (16384,)}
    wide = derive({"x": InputDecl(shape=[64, 16]), "y": InputDecl(shape=[16, 16])}, {}, LONG, 0)
    # x.1 and y's two dims are one size, so one dim: y is 1024 x 1024 at the shortest long
    # size, past 32k elements whatever the others: no variant for it
    assert {v.name: v.shapes for v in wide if v.long} == {
        "x.0=16384": {"x": (16384, 2), "y": (2, 2)}
    }
    wide = derive({"x": InputDecl(shape=[64, 16])}, {}, LONG, 0)
    assert [v.shapes for v in wide if v.long] == [{"x": (16384, 2)}, {"x": (2, 16384)}]
    assert variants["D=11"].shapes == {"x": (4, 11), "w": (11,)}  # D moves together
    assert variants["lead2"].shapes == {"x": (2, 3, 4, 8), "w": (8,)}  # batch inputs only
    assert variants["large"].scale == 1e3
    # int sizes: equal sizes are one dimension, labelled where they first appear
    plain = derive({"x": InputDecl(shape=[4, 8]), "w": InputDecl(shape=[8])}, {}, Variants(), 0)
    assert [v.name for v in plain][:5] == ["base", "x.0=5", "x.0=1", "x.1=11", "x.1=1"]
    assert derive(inputs, {"N": 4, "D": 8}, None, 0)[0].name == "base"
    listed = derive(
        inputs,
        {"N": 4, "D": 8},
        Variants(sizes=False, leading=0, layouts=False, zeros=False, shapes=[{"x": [3, 5]}]),
        0,
    )
    assert [(v.name, v.shapes) for v in listed][1] == ("shapes0", {"x": (3, 5), "w": (5,)})


def test_variants_are_seeded_by_name_and_reproducible() -> None:
    inputs = {"x": InputDecl(shape=[4, 8])}
    full = {v.name: v for v in derive(inputs, {}, Variants(), 7)}
    alone = derive(inputs, {}, Variants(sizes=False, layouts=False), 7)
    assert alone[1].name == "lead1" and alone[1].seed == full["lead1"].seed
    assert full["lead1"].seed == variant_seed(7, "lead1") != variant_seed(8, "lead1")
    one, two = draw_inputs(inputs, full["x.0=5"]), draw_inputs(inputs, full["x.0=5"])
    assert one["x"].shape == (5, 8) and torch.equal(one["x"], two["x"])


def test_integer_inputs_follow_their_dim() -> None:
    decl = {"t": InputDecl(shape=["N"], dtype="int64", high="V")}
    for v in derive(decl, {"N": 64, "V": 3}, Variants(), 0):
        t = draw_inputs(decl, v)["t"]
        assert t.dtype == torch.int64 and int(t.max()) < v.sizes["V"]


def test_unequal_micro_batches() -> None:
    assert split_sizes(8, 2) == [3, 5]
    assert split_sizes(6, 3) == [1, 2, 3]
    assert split_sizes(2, 2) == [1, 1]


# --- bad input --------------------------------------------------------------------------


def audit(candidate: Any, reference: Any = rmsnorm_reference, **kw: Any) -> Any:
    kw.setdefault("dtypes", ["float64"])
    return check_op(candidate, reference, inputs={"x": (4, 8), "weight": (8,)}, **kw)


@pytest.mark.parametrize(
    ("candidate", "message"),
    [
        (lambda x, weight: (rmsnorm(x, weight), x), "returns 2 outputs, the reference 1"),
        (
            lambda x, weight: rmsnorm(x, weight).sum(-1),
            "out is (4,) torch.float64, the reference's (4, 8) torch.float64",
        ),
        (
            lambda x, weight: rmsnorm(x, weight).float(),
            "out is (4, 8) torch.float32, the reference's (4, 8) torch.float64",
        ),
        (
            lambda x, weight: rmsnorm(x, weight).detach(),
            "out is detached from the inputs: its gradients would be silently zero",
        ),
    ],
)
def test_structural_problems_are_usage_errors(candidate: Any, message: str) -> None:
    with pytest.raises(OpError) as info:
        audit(candidate)
    assert str(info.value) == f"check_op: op.candidate: {message}"
    assert info.value.exit_code == EXIT_USAGE


def test_structural_problems_name_the_spec_line(tmp_path: Path) -> None:
    module = tmp_path / "detaching.py"
    module.write_text("def op(x):\n    return x.detach() * 2\n")
    spec = tmp_path / "s.yaml"
    spec.write_text(
        "name: d\nop:\n  candidate: detaching:op\n  reference: torch:square\n"
        "  inputs: {x: {shape: [3]}}\n"
    )
    with pytest.raises(OpError, match=r"s\.yaml:3: op\.candidate: out is detached"):
        run_op_spec(spec)
    # through `gradaudit run`: exit 2 in that one line (it was an internal error, exit 3)
    result = run_gradaudit("run", spec, cwd=tmp_path, env={"PYTHONPATH": str(tmp_path)})
    assert result.returncode == 2, result.stdout + result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert line == f"gradaudit: error: {spec}:3: op.candidate: out is detached from the " + (
        "inputs: its gradients would be silently zero"
    )


def test_a_variant_the_reference_rejects_is_not_applicable_never_the_candidates_error() -> None:
    """Issue 28: the trusted side raising on a derived variant is the op's contract (a skip
    naming the exclusion that avoids it), not a red for a correct candidate; on the shapes
    as declared (base) it stays an error."""

    def picky(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        if x.shape[0] == 1:
            raise ValueError("no single rows")
        return rmsnorm_reference(x, weight)

    result = audit(rmsnorm, picky, raise_on_failure=False)
    assert result.ok
    skipped = {g.check: g.skipped for g in result.groups if g.skipped}
    assert set(skipped) == {"variant:x.0=1"}
    reason = skipped["variant:x.0=1"]
    assert reason.startswith("not applicable: the reference rejects variant x.0=1 (ValueError")
    assert reason.endswith("; leave it out with variants: {exclude: [x.0=1]}"), reason
    assert all(s.status == "pass" for g in result.groups if not g.skipped for s in g.tensors)
    # a bug is still caught on the variants the reference takes
    bad = audit(BUGS["rmsnorm-wrong-axis"][0], picky, raise_on_failure=False)
    assert not bad.ok and any(s.status == "fail" for g in bad.groups for s in g.tensors)

    def never(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        raise ValueError("nothing")

    declared = audit(rmsnorm, never, variants=False, raise_on_failure=False)
    assert not declared.ok
    assert {s.status for g in declared.groups for s in g.tensors} == {"error"}


def test_variants_excluded_by_name_in_a_spec_and_in_python(tmp_path: Path) -> None:
    spec = tmp_path / "s.yaml"
    spec.write_text(
        "name: x\nop:\n  candidate: rmsnorm\n  reference: rmsnorm-reference\n"
        "  inputs: {x: {shape: [3, 8]}, weight: {shape: [8]}}\n"
        "  variants: {exclude: [lead2, strided]}\ndtypes: [float64]\n"
    )
    checks = {g.check for g in run_op_spec(spec)}
    assert "variant:lead1" in checks and not {"variant:lead2", "variant:strided"} & checks
    result = check_op(
        rmsnorm, rmsnorm_reference, inputs={"x": (3, 8), "weight": (8,)},
        variants={"exclude": ["lead2"]}, dtypes=["float64"],
    )  # fmt: skip
    assert "variant:lead2" not in {g.check for g in result.groups}
    spec.write_text(spec.read_text().replace("strided]", "stridd]"))
    with pytest.raises(GradauditError, match=r"s\.yaml:\d+: op\.variants\.exclude: 'stridd' is"):
        run_op_spec(spec)


def test_a_shape_problem_on_a_derived_variant_is_that_variant_s_error() -> None:
    def flat(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        out = rmsnorm(x, weight)
        return out.reshape(-1, out.shape[-1])  # wrong only with leading dims

    result = audit(flat, raise_on_failure=False)
    assert {g.check for g in result.groups if g.tensors[0].status != "pass"} == {
        "variant:lead1",
        "variant:lead2",
    }
    assert "out is (12, 8) torch.float64, the reference's (3, 4, 8)" in result.report()


def test_bad_arguments_are_one_line_usage_errors() -> None:
    with pytest.raises(OpSpecError, match=r"check_op: inputs\.t: .*cannot require grad"):
        check_op(
            rmsnorm,
            inputs={"t": {"shape": [3], "dtype": "int64", "high": 3, "requires_grad": True}},
        )
    with pytest.raises(OpSpecError, match=r"check_op: inputs.x.shape: N not in dims"):
        check_op(rmsnorm, inputs={"x": ["N"]})
    with pytest.raises(OpSpecError, match="unknown variant lead9; this op has: base, "):
        check_op(rmsnorm, inputs={"x": (2,)}, variants=["lead9"])
    with pytest.raises(OpSpecError, match="check_op: dtypes: 'float8'"):
        check_op(rmsnorm, inputs={"x": (2,)}, dtypes=["float8"])


def test_a_dtype_or_device_outside_the_spec_is_a_usage_error() -> None:
    with pytest.raises(GradauditError, match="--dtype float8: not in the spec's list") as caught:
        run_op_spec(REPO / "specs" / "op-rmsnorm.yaml", dtypes=["float8"])
    assert caught.value.exit_code == 2


# --- finite differences, modules, tolerances, pytest -------------------------------------


def test_without_a_reference_finite_differences_are_the_truth() -> None:
    small: dict[str, Any] = {
        "inputs": {"x": (3, 5), "weight": (5,)},
        "dtypes": ["float64", "float32"],
        "variants": ["base", "lead1"],
    }
    good = check_op(rmsnorm, **small)
    assert [s.tensor for s in good.groups[0].tensors] == ["grad.x", "grad.weight"]
    assert good.groups[2].tensors[0].tol.mode == "allclose"  # float32: no baseline without one
    bad = check_op(BUGS["rmsnorm-wrong-axis"][0], raise_on_failure=False, **small)
    assert {(g.dtype, g.check) for g in bad.groups if g.tensors[0].status == "fail"} == {
        ("float64", "variant:lead1"),
        ("float32", "variant:lead1"),
    }


def test_finite_differences_refuse_large_inputs() -> None:
    result = check_op(
        rmsnorm,
        inputs={"x": (80, 64), "weight": (64,)},
        dtypes=["float64"],
        variants=False,
        raise_on_failure=False,
    )
    assert "finite differences would need 10368 forward calls" in result.report()


def test_a_module_candidate_compares_its_parameters() -> None:
    settings: dict[str, Any] = {
        "inputs": {"x": ["N", "D"]},
        "dims": {"N": 4, "D": 8},
        "init": {"dim": "D"},
        "dtypes": ["float64", "float32"],
        "checks": {"micro_batch": {}, "saved_tensors": {}},
    }
    result = check_op(RMSNorm, rmsnorm_reference, **settings)
    names = [s.tensor for s in result.groups[0].tensors]
    assert names == ["out", "grad.x", "grad.weight"]
    saved = next(g for g in result.groups if g.check == "saved_tensors")
    assert "param.weight" in [s.tensor for s in saved.tensors]

    class Buggy(RMSNorm):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return BUGS["rmsnorm-first-row-grad"][0].apply(x, self.weight, self.eps)  # type: ignore[no-untyped-call,no-any-return]

    bad = check_op(Buggy, rmsnorm_reference, raise_on_failure=False, **settings)
    assert {s.tensor for g in bad.groups for s in g.tensors if s.status == "fail"} == {
        "grad.weight"
    }


def test_a_module_reference_gets_the_candidate_s_parameters() -> None:
    class Reference(RMSNorm):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return rmsnorm_reference(x, self.weight, self.eps)

    check_op(
        RMSNorm,
        Reference,
        inputs={"x": ["N", "D"]},
        dims={"N": 4, "D": 8},
        init={"dim": "D"},  # a named dim: the module's size follows D's variants
        dtypes=["float32"],
    )


def test_the_tolerance_argument_is_used() -> None:
    result = check_op(
        rmsnorm,
        rmsnorm_reference,
        inputs={"x": (4, 8), "weight": (8,)},
        dtypes=["float32"],
        variants=False,
        tolerance="allclose",
    )
    assert {s.tol.mode for s in result.groups[0].tensors} == {"allclose"}
    exact = check_op(
        rmsnorm,
        rmsnorm_reference,
        inputs={"x": (4, 8), "weight": (8,)},
        dtypes=["float32"],
        variants=False,
        tolerance="exact",
        raise_on_failure=False,
    )
    assert not exact.ok and "exact (bitwise)" in exact.report()


@pytest.mark.parametrize("shape", [(2, 3), (5, 7)])
@pytest.mark.parametrize("dtype", ["float64", "bfloat16"])
def test_check_op_under_parametrize(shape: tuple[int, int], dtype: str) -> None:
    check_op(
        rmsnorm,
        rmsnorm_reference,
        inputs={"x": shape, "weight": shape[-1:]},
        dtypes=[dtype],
        variants=False,
    )


# --- guard and reporting -------------------------------------------------------------------


def test_the_guard_finds_custom_functions() -> None:
    x = torch.randn(3, 4, requires_grad=True)
    w = torch.ones(4, requires_grad=True)
    through = (rmsnorm(x, w) * 2).sum() + x.sum()
    assert custom_functions_in_graph(through) == ["gradaudit_ops.rmsnorm.RMSNormFunction"]
    assert custom_functions_in_graph(rmsnorm_reference(x, w).sum()) == []
    assert custom_functions_in_graph(torch.tensor(1.0)) == []
    text = warning_for(custom_functions_in_graph(through))
    assert text is not None and "RMSNormFunction" in text and "op spec" in text
    assert "checks.finite_difference runs" in text
    assert warning_for(custom_functions_in_graph(x.sum())) is None


def test_the_existing_reporters_print_op_groups(tmp_path: Path) -> None:
    from gradaudit.report.console import group_rows
    from gradaudit.report.elements import document
    from gradaudit.report.jsonfile import group_record
    from gradaudit.report.junit import group_suite

    spec = REPO / "specs" / "op-rmsnorm.yaml"
    loaded = load_op_spec(spec)
    groups = check_op(
        BUGS["rmsnorm-wrong-axis"][0],
        rmsnorm_reference,
        raise_on_failure=False,
        inputs={"x": (4, 8), "weight": (8,)},
        dtypes=["float32"],
    ).groups
    rows = [row for g in groups for row in group_rows(g)]
    assert any("grad.x [variant:lead1]" in text and word == "FAIL" for text, word in rows)
    xml = document(group_suite("op-rmsnorm", g, metadata(loaded)) for g in groups)
    assert 'name="op-rmsnorm[cpu,float32,variant:lead1]"' in xml and "<failure" in xml
    record = json.loads(json.dumps(group_record(groups[0])))
    assert record["check"] == "variant:base" and record["tensors"][0]["status"] == "pass"
    assert "lead2" in metadata(loaded)["variants"]
    seen = [g.check for g in run_op_spec(spec, dtypes=["float64"])]
    assert seen.count("variant:base") == 1 and seen[-1] == "saved_tensors"


def reference_calls(dtypes: list[str], low: float = 0.5) -> list[torch.dtype]:
    calls: list[torch.dtype] = []

    def counted(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        if x.device.type != "meta":  # the plan's shape-only look at its outputs computes none
            calls.append(x.dtype)
        return rmsnorm_reference(x, weight)

    inputs: dict[str, Any] = {
        "x": {"shape": [4, 8], "distribution": "uniform", "low": low, "high": 2 * low},
        "weight": (8,),
    }
    check_op(rmsnorm, counted, inputs=inputs, dtypes=dtypes, variants=False)
    return calls


def test_one_float64_reference_run_is_the_truth_of_every_dtype() -> None:
    """Inputs are rounded to the run's narrowest dtype, so each dtype holds them exactly and
    the float64 case's reference run is every other case's truth. (A float64 case that would
    fail also runs it in float32 and on inputs one ULP away, to estimate its own error; a
    passing one does not.)"""
    calls = reference_calls(["float64", "float32", "bfloat16", "float16"])
    assert calls == [torch.float64, torch.float32, torch.bfloat16, torch.float16]
    # below float16's normal range a bfloat16 value is not exact in float16: its own truth
    calls = reference_calls(["bfloat16", "float16"], low=1e-6)
    assert calls.count(torch.float64) == 2


def test_a_module_missing_mid_run_stops_it_with_exit_2_keeping_what_was_compared(
    tmp_path: Path,
) -> None:
    """The first variant compares; then the op imports a module this machine lacks: the
    run stops (exit 2, one line), its report keeps the first variant's verdicts."""
    (tmp_path / "lazy.py").write_text(
        "calls = []\n"
        "def op(x):\n"
        "    calls.append(1)\n"
        "    if len(calls) > 2:\n"
        "        import gradaudit_no_such_module\n"
        "    return x * x\n"
    )
    spec = tmp_path / "s.yaml"
    spec.write_text(
        "name: lazy\nop:\n  candidate: lazy:op\n  reference: torch:square\n"
        "  inputs: {x: {shape: [3]}}\ndtypes: [float64]\n"
    )
    report = tmp_path / "r.json"
    result = run_gradaudit(
        "run", spec, "--json", report, cwd=tmp_path, env={"PYTHONPATH": str(tmp_path)}
    )
    assert result.returncode == 2, result.stdout + result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("gradaudit: error: op.candidate cannot run here: ModuleNotFoundError")
    data = json.loads(report.read_text())
    statuses = {(g["check"], t["status"]) for g in data["groups"] for t in g["tensors"]}
    assert ("variant:base", "pass") in statuses and data["totals"]["passed"] > 0
    assert "cannot run here" in data["stopped"]


def _verdicts(result: Any) -> list[tuple[str, str, str, str, float]]:
    return [
        (g.dtype, g.check, t.tensor, t.status, t.max_abs) for g in result.groups for t in g.tensors
    ]


def test_isolated_check_op_gives_the_in_process_verdicts_green_and_red() -> None:
    """isolate=True (forked, supervised children) changes where the cases run, not what they
    find: a correct op stays green and a bug fails the same cases, with the same numbers."""
    small: dict[str, Any] = {
        "inputs": {"x": (3, 5), "weight": (5,)},
        "dtypes": ["float64", "float32"],
        "variants": ["base", "lead1", "transposed"],
        "raise_on_failure": False,
    }
    for op in (rmsnorm, BUGS["rmsnorm-wrong-axis"][0]):
        here = check_op(op, rmsnorm_reference, **small)
        isolated = check_op(op, rmsnorm_reference, isolate=True, **small)
        assert _verdicts(isolated) == _verdicts(here)
        assert isolated.ok == (op is rmsnorm)


def test_isolated_check_op_refuses_cuda_in_one_line() -> None:
    with pytest.raises(OpSpecError, match="isolate=True runs cpu devices only"):
        check_op(rmsnorm, rmsnorm_reference, inputs={"x": (3, 5), "weight": (5,)},
                 devices=["cuda"], isolate=True)  # fmt: skip


def test_argument_alternatives_declared_in_variants_run_and_can_be_turned_off() -> None:
    from gradaudit_ops import log_softmax, log_softmax_reference

    inputs = {"x": (4, 6)}
    result = check_op(
        rmsnorm, rmsnorm_reference, inputs={"x": (4, 8), "weight": (8,)}, args={"eps": 1e-6},
        variants={"args": {"eps": [0.5]}, "sizes": False, "layouts": False, "leading": 0,
                  "zeros": False},
    )  # fmt: skip
    assert {g.check for g in result.groups} == {"variant:base", "variant:eps=0.5"}
    off = check_op(log_softmax, log_softmax_reference, inputs=inputs, variants={"arguments": False})
    on = check_op(log_softmax, log_softmax_reference, inputs=inputs)
    assert "variant:dim=0" in {g.check for g in on.groups}
    assert "variant:dim=0" not in {g.check for g in off.groups}


CRASHES = """
import json, os, signal
import torch
from gradaudit import check_op
from gradaudit_ops import rmsnorm, rmsnorm_reference

def crashing(x, weight, eps=1e-6):
    if not x.is_contiguous():
        os.kill(os.getpid(), signal.SIGSEGV)  # a kernel's out-of-bounds store, every time
    return rmsnorm(x, weight, eps)

result = check_op(crashing, rmsnorm_reference, inputs={"x": (4, 8), "weight": (8,)},
                  dtypes=["float64"], isolate=True, raise_on_failure=False)
print(json.dumps([[g.check, t.status, (t.errors or [""])[0]]
                  for g in result.groups for t in g.tensors]))
"""


def test_check_op_isolated_keeps_going_past_a_candidate_that_kills_its_process() -> None:
    """isolate=True: the variants with a non-contiguous x SIGSEGV their child; each is an
    error naming the signal, and the others still run and pass, in the caller that lives."""
    import subprocess
    import sys

    from tests.conftest import REPO, cli_env

    done = subprocess.run(
        [sys.executable, "-c", CRASHES], cwd=REPO, env=cli_env(), capture_output=True,
        text=True, timeout=300, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    rows = json.loads(done.stdout.strip().splitlines()[-1])
    crashed = {c for c, status, error in rows if status != "pass"}
    assert crashed == {"variant:transposed", "variant:strided", "variant:expanded"}, rows
    for check, status, error in rows:
        if check in crashed:
            assert status == "error" and "was killed by SIGSEGV" in error, error
    assert len({c for c, _, _ in rows}) == 12  # every variant reported


def test_a_passing_variant_is_located_only_when_it_is_its_tensors_worst_so_far() -> None:
    """Describing a passing tensor (worst element, relative errors, cosine) cost a quarter of
    an op audit; as for a model's batches, only a tensor's new worst budget in its (device,
    dtype) is described. A failing tensor is always located."""
    good = check_op(rmsnorm, rmsnorm_reference, inputs={"x": (4, 8), "weight": (8,)},
                    dtypes=["float32"], tolerance="allclose")  # fmt: skip
    so_far: dict[str, float] = {}
    located = []
    for group in good.groups:
        if not group.check.startswith("variant:"):
            continue
        for t in group.tensors:
            assert t.worst is not None
            new = t.tensor not in so_far or t.worst.budget > so_far[t.tensor]
            assert t.worst.located == new, (group.check, t.tensor)
            located.append(new)
            so_far[t.tensor] = max(so_far.get(t.tensor, t.worst.budget), t.worst.budget)
    assert any(located) and not all(located)
    bad = check_op(BUGS["rmsnorm-wrong-axis"][0], rmsnorm_reference, raise_on_failure=False,
                   inputs={"x": (4, 8), "weight": (8,)}, dtypes=["float32"])  # fmt: skip
    assert bad.failures and all(s.worst is not None and s.worst.located for _, s in bad.failures)
