"""The Triton example op (plugins/gradaudit_triton) under Triton's interpreter: the shipped
spec is green in four dtypes, and each gallery bug is red in exactly the cases stated here.

TRITON_INTERPRET must be set before triton is imported, so every audit runs in a child
process (this one never imports triton); the children run at once, to use two cores.
"""

from __future__ import annotations

import importlib.util
import json
import signal
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest

from tests.conftest import GRADAUDIT, REPO, cli_env

pytestmark = [
    pytest.mark.skipif(
        importlib.util.find_spec("triton") is None,
        reason="triton is not installed: pip install 'gradaudit[triton]'",
    ),
]

SPEC = REPO / "specs" / "op-triton-rmsnorm.yaml"
ALL = {"out", "grad.x", "grad.weight"}
GRADS = {"grad.x", "grad.weight"}
VARIANTS = ["base", "N=7", "N=1", "D=17", "D=1", "lead1", "lead2"]
LAYOUTS = ["transposed", "strided", "expanded"]
VARIANTS += [*LAYOUTS, "eps=0.5"]  # eps=0.5: an argument variant (the float default 1e-6)

# (bug, dtype, audit) -> {failing case: failing tensors}; every other case passes. An audit
# is "default" (every variant, micro_batch and saved_tensors at N=6, D=16), "no-strided"
# (the same but `strided`, which kills the process: test_the_out_of_bounds_store_...) or
# the base case alone at N=2 and that D ("D=65536": 65536 squares of N(0, 1) pass 65504).
EXPECTED: dict[tuple[str, str, str], dict[str, set[str]]] = {
    # BLOCK = 16 = D everywhere but D=17 (D=1 has BLOCK 1): only there is the tail read
    ("tail-mask", "float32", "default"): {"D=17": ALL},
    # the upstream gradient is non-contiguous exactly in the three layouts
    ("contiguous-grad", "float32", "default"): {c: GRADS for c in LAYOUTS},
    # 8 programs: one row each up to 8 rows; lead1 has 18 rows and lead2 36
    ("dw-overwrite", "float32", "default"): {"lead1": {"grad.weight"}, "lead2": {"grad.weight"}},
    # empty_like keeps a transposed x's strides, so only expanded (row stride 0) is wrong
    ("dx-strides-of-x", "float32", "no-strided"): {"expanded": {"grad.x"}},
    # eps rounded to float32 is 2.5e-15 off: seen only where mean(x^2) is small, at D = 1
    ("float32-eps", "float64", "default"): {"D=1": ALL},
    # a no-op in float32 and float64; the interpreter sums float16 as accurately as float32
    # (numpy), so only an overflow past 65504 shows; its bfloat16 arithmetic adds raw bits
    ("input-dtype-sum", "float16", "default"): {},
    ("input-dtype-sum", "float16", "D=32768"): {},
    ("input-dtype-sum", "float16", "D=65536"): {"base": ALL},
    ("input-dtype-sum", "bfloat16", "default"): {c: ALL for c in [*VARIANTS, "micro_batch"]},
}

# The child: run each job's op audit under the interpreter, write {job: failing} as JSON.
AUDITS = """
import json, sys
import torch
torch.set_num_threads(1)
from gradaudit.targets.op.api import check_op
from gradaudit_triton.gallery import BUGS, EDITS, edited_source, kernel_source
from gradaudit_triton.rmsnorm import rmsnorm_reference

jobs, out = json.loads(sys.argv[1]), sys.argv[2]
settings = {
    "inputs": {
        "x": ["N", "D"],
        "weight": {"shape": ["D"], "distribution": "uniform", "low": 0.5, "high": 1.5},
    },
    "args": {"eps": 1e-6},
}
default = {"micro_batch": {"reduction": "none"}, "saved_tensors": {}}
results = {}
for key, (bug, dtype, audit) in jobs.items():
    if audit.startswith("D="):
        size = {"dims": {"N": 2, "D": int(audit[2:])}, "variants": ["base"], "checks": None}
    else:
        # as the spec: its long row stands in for the long variants (2048 programs)
        size = {"dims": {"N": 6, "D": 16}, "checks": default, "variants": {"long": False}}
        if audit == "no-strided":
            size["variants"] = [v for v in json.loads(sys.argv[3]) if v != "strided"]
    result = check_op(
        BUGS["triton-rmsnorm-" + bug][0].apply, rmsnorm_reference, dtypes=[dtype],
        raise_on_failure=False, **settings, **size,
    )
    failing = {}
    for group in result.groups:
        for s in group.tensors:
            if s.status != "pass":
                case = group.check.removeprefix("variant:")
                failing.setdefault(case, []).append(s.tensor + ("!" if s.status == "error" else ""))
    results[key] = failing
edits = {}
for name, edit in EDITS.items():
    correct, source = edited_source(edit)
    edits[name] = [kernel_source(correct).splitlines(), source.splitlines()]
json.dump({"audits": results, "edits": edits}, open(out, "w"))
"""

# The child that runs the out-of-bounds store on the strided variant.
OOB = """
import torch
torch.set_num_threads(1)
from gradaudit.targets.op.api import check_op
from gradaudit_triton.gallery import BUGS
from gradaudit_triton.rmsnorm import rmsnorm_reference

check_op(
    BUGS["triton-rmsnorm-dx-strides-of-x"][0].apply, rmsnorm_reference,
    inputs={"x": (6, 16), "weight": (16,)}, dtypes=["float32"], variants=["strided"],
    raise_on_failure=False,
)
print("the process survived", flush=True)
"""

# Without TRITON_INTERPRET, or with it set only after triton's import, a call is refused
# with the variable's name (argv[1]: "late" sets it late).
NO_INTERPRETER = """
import os, sys
import torch
import triton
from gradaudit_triton import rmsnorm
if sys.argv[1] == "late":
    os.environ["TRITON_INTERPRET"] = "1"
try:
    rmsnorm(torch.randn(2, 3), torch.ones(3))
except RuntimeError as exc:
    print(exc)
"""


# Compile the kernels (and the gallery's) for a GPU without one: the interpreter runs code
# the compiler rejects, and computes in numpy what a GPU approximates. Writes {name: PTX}.
COMPILE = """
import json, sys
import triton
import triton.language as tl
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from gradaudit_triton.gallery import EDITS, edited_kernels
from gradaudit_triton.rmsnorm import load_kernels

ACCUMULATED, TENSORS = {"RSTD", "DW_PARTIAL"}, {"X", "W", "Y", "DY", "DX"}
kernels = {"correct": load_kernels()} | {name: edited_kernels(e) for name, e in EDITS.items()}
ptx = {}
for name, pair in kernels.items():
    for dtype in ("fp64", "fp32", "bf16", "fp16"):
        acc = "fp64" if dtype == "fp64" else "fp32"
        for part in ("forward", "backward"):
            kernel = getattr(pair, part)
            constexprs = {"BLOCK": 1024, "ACC": tl.float64 if acc == "fp64" else tl.float32}
            if "EPS" in kernel.arg_names:
                constexprs["EPS"] = 1e-6
            signature = {
                arg: "constexpr" if arg in constexprs
                else f"*{acc}" if arg in ACCUMULATED
                else f"*{dtype}" if arg in TENSORS
                else "i32"
                for arg in kernel.arg_names
            }
            source = ASTSource(fn=kernel, signature=signature, constexprs=constexprs)
            compiled = triton.compile(source, target=GPUTarget("cuda", 90, 32))
            ptx[f"{name} {part} {dtype}"] = compiled.asm["ptx"]
json.dump(ptx, open(sys.argv[1], "w"))
"""


def _interpreted() -> dict[str, str]:
    return cli_env({"TRITON_INTERPRET": "1", "OMP_NUM_THREADS": "1"})


@pytest.fixture(scope="module")
def children(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """Start every child at once, wait for all: {name: exit status, name.log: output}."""
    tmp = tmp_path_factory.mktemp("triton")
    jobs = {"|".join(key): key for key in EXPECTED}
    plain = cli_env()
    plain.pop("TRITON_INTERPRET", None)
    commands: dict[str, tuple[list[str], dict[str, str]]] = {
        "spec": (  # without the variable: gradaudit sets it for a cpu-only executor
            [str(GRADAUDIT), "run", str(SPEC), "--json", str(tmp / "spec.json"), "-q"],
            plain,
        ),
        "audits": (
            [sys.executable, "-c", AUDITS, json.dumps(jobs), str(tmp / "audits.json")]
            + [json.dumps(VARIANTS)],
            _interpreted(),
        ),
        "oob": ([sys.executable, "-c", OOB], _interpreted()),
        "no-interpreter": ([sys.executable, "-c", NO_INTERPRETER, "never"], plain),
        "late-interpreter": ([sys.executable, "-c", NO_INTERPRETER, "late"], plain),
        "compile": ([sys.executable, "-c", COMPILE, str(tmp / "ptx.json")], plain),
    }
    procs: dict[str, subprocess.Popen[bytes]] = {}
    done: dict[str, Any] = {"tmp": tmp}
    try:
        for name, (argv, env) in commands.items():
            with (tmp / f"{name}.log").open("w") as log:
                procs[name] = subprocess.Popen(argv, cwd=REPO, env=env, stdout=log, stderr=log)
        for name, proc in procs.items():
            done[name] = proc.wait(timeout=300)
            done[f"{name}.log"] = (tmp / f"{name}.log").read_text()
        yield done
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()


def test_the_spec_is_green_in_four_dtypes_under_the_interpreter(
    children: dict[str, Any],
) -> None:
    assert children["spec"] == 0, children["spec.log"]
    groups = json.loads((children["tmp"] / "spec.json").read_text())["groups"]
    statuses = {
        (g["dtype"], g["check"], t["tensor"]): t["status"] for g in groups for t in g["tensors"]
    }
    assert {d for d, _, _ in statuses} == {"float64", "float32", "bfloat16", "float16"}
    assert set(statuses.values()) == {"pass"}, [k for k, v in statuses.items() if v != "pass"]
    checks = {check for _, check, _ in statuses}
    assert {f"variant:{v}" for v in VARIANTS} | {"micro_batch", "saved_tensors"} <= checks
    assert "variant:shapes0" in checks  # the long row, D = 65536
    assert all(t["numel"] > 0 for g in groups for t in g["tensors"])


@pytest.fixture(scope="module")
def audits(children: dict[str, Any]) -> dict[str, Any]:
    assert children["audits"] == 0, children["audits.log"]
    result: dict[str, Any] = json.loads((children["tmp"] / "audits.json").read_text())
    return result


@pytest.mark.parametrize("key", list(EXPECTED), ids="|".join)
def test_each_bug_fails_exactly_where_stated(
    audits: dict[str, Any], key: tuple[str, str, str]
) -> None:
    failing = {case: set(tensors) for case, tensors in audits["audits"]["|".join(key)].items()}
    assert failing == EXPECTED[key]


def test_the_gallery_covers_the_issue_and_each_bug_is_one_changed_line(
    audits: dict[str, Any],
) -> None:
    from gradaudit_triton.gallery import BUGS  # imports no triton

    assert {name.removeprefix("triton-rmsnorm-") for name in BUGS} == {b for b, _, _ in EXPECTED}
    assert {
        "a load without its tail mask",
        "a stride assumed contiguous",
        "a reduction in the input's dtype",
        "partial sums overwritten",
        "a store out of bounds",
    } <= {what for _, what in BUGS.values()}
    assert set(audits["edits"]) == set(BUGS)
    for name, (correct, buggy) in audits["edits"].items():
        assert len(correct) == len(buggy), name
        changed = [(a, b) for a, b in zip(correct, buggy, strict=True) if a != b]
        assert len(changed) == 1, (name, changed)


def test_the_out_of_bounds_store_kills_the_process_that_runs_it(children: dict[str, Any]) -> None:
    """The strided x's row stride (2 D) addresses dx (rows of D) past its end: the
    interpreter stores through raw pointers, and glibc finds its heap corrupted at a later
    malloc or free and aborts, or the process segfaults. It died in 92 of 92 runs (58 by
    SIGABRT), at varying points: in the kernel, in autograd, or at exit after check_op."""
    assert children["oob"] in (-signal.SIGABRT, -signal.SIGSEGV), children["oob.log"]
    assert "Traceback" not in children["oob.log"]


def test_a_cpu_tensor_without_the_interpreter_is_refused_with_its_variable(
    children: dict[str, Any],
) -> None:
    assert children["no-interpreter"] == 0, children["no-interpreter.log"]
    assert children["no-interpreter.log"] == (
        "Triton kernels run on CPU tensors only under its interpreter: set TRITON_INTERPRET=1 "
        "before triton is first imported\n"
    )
    assert children["late-interpreter"] == 0, children["late-interpreter.log"]
    assert children["late-interpreter.log"] == (
        "TRITON_INTERPRET=1 was set after triton was imported: set it before triton is first "
        "imported\n"
    )


def test_the_kernels_and_the_gallery_compile_for_a_gpu(children: dict[str, Any]) -> None:
    """Every kernel compiles for sm_90 in all four dtypes. In float64 the forward takes a
    correctly rounded sqrt and division: tl.rsqrt would be rsqrt.approx.f64, an
    approximation the interpreter (numpy's 1 / sqrt) cannot show."""
    assert children["compile"] == 0, children["compile.log"]
    ptx = json.loads((children["tmp"] / "ptx.json").read_text())
    assert len(ptx) == 7 * 2 * 4
    forward64 = ptx["correct forward fp64"]
    assert "sqrt.rn.f64" in forward64 and "div.rn.f64" in forward64
    assert "approx" not in forward64
    assert "rsqrt.approx.ftz.f32" in ptx["correct forward fp32"]
