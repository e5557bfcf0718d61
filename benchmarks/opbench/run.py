"""Which of three tools catches which bug: gradcheck, an assert_close test, gradaudit.

    python benchmarks/opbench/run.py [--quick] [--json OUT] [--ops a,b] [--bugs a,b]

For every op of cases.py, its correct Function and each bug of bugs.py go through:

- gradcheck: `torch.autograd.gradcheck(candidate, sample)` on the op's OpInfo samples in
  float64 (hand-written samples where the op has no OpInfo entry); caught when any sample
  fails or raises. It needs no reference: it compares the candidate's backward with finite
  differences of its own forward.
- assert_close: the same samples in float32, bfloat16 and float16; candidate and reference
  forward in that dtype, a seeded random upstream gradient, autograd.grad on both, and
  `torch.testing.assert_close` (default tolerances) on every output and input gradient;
  caught when any assertion fails or the candidate raises.
- gradaudit: `check_op(candidate, reference, inputs=..., dtypes=[four], raise_on_failure=False)`
  with one plain shape per input and every other option at its default; caught when the
  result is not ok (or check_op raises).

A tool that is red on a correct op raises a false alarm. One torch thread.
"""

from __future__ import annotations

import argparse
import datetime
import importlib
import inspect
import json
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

warnings.filterwarnings("ignore", message="Failed to initialize NumPy")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from gradaudit.targets.op.api import OpResult, check_op  # noqa: E402
from opbench.bugs import BUGS, CLASSES  # noqa: E402
from opbench.cases import BY_NAME, OPS, Call, Op  # noqa: E402

TOOLS = ("gradcheck", "assert_close", "gradaudit")
LOW_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
GRADAUDIT_DTYPES = ["float64", "float32", "bfloat16", "float16"]
QUICK_OPS = ("softmax", "nll_loss", "swiglu")


# --- calling an autograd.Function with keywords ---------------------------------------------


def apply(function: type[torch.autograd.Function], *tensors: Any, **kwargs: Any) -> Any:
    """`function.apply` with keyword arguments and forward's defaults filled in."""
    params = list(inspect.signature(function.forward).parameters.values())[1:]
    bound = inspect.Signature(params).bind(*tensors, **kwargs)
    bound.apply_defaults()
    return function.apply(*bound.args)  # type: ignore[no-untyped-call]


def outputs(result: Any) -> list[torch.Tensor]:
    return list(result) if isinstance(result, tuple | list) else [result]


def fresh(call: Call, dtype: torch.dtype | None = None) -> Call:
    """New leaf tensors with the sample's values (floating ones cast to `dtype`)."""
    tensors = []
    for t in call.tensors:
        floating = t.is_floating_point()
        copy = t.detach().to(dtype if floating and dtype else t.dtype).clone()
        tensors.append(copy.requires_grad_(t.requires_grad and floating))
    return Call(tuple(tensors), call.kwargs)


# --- samples --------------------------------------------------------------------------------


@dataclass
class Samples:
    calls: list[Call]
    source: str  # "OpInfo <name>[.<variant>]" or "hand-written"
    skipped: int = 0  # OpInfo samples the Function does not take


def samples_for(op: Op, op_db: list[Any]) -> Samples:
    """The op's float64 samples, drawn under seed 0 (the global RNG is left as it was)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        if op.opinfo is None or op.adapt is None:
            assert op.handwritten is not None
            return Samples(op.handwritten(), "hand-written")
        name, variant = op.opinfo
        entry = next(o for o in op_db if (o.name, o.variant_test_name) == op.opinfo)
        raw = list(entry.sample_inputs("cpu", torch.float64, requires_grad=True))
    calls = [c for c in (op.adapt(s) for s in raw) if c is not None]
    label = f"OpInfo {name}" + (f".{variant}" if variant else "")
    return Samples(calls, label, len(raw) - len(calls))


def load_op_db() -> list[Any]:
    """PyTorch's OpInfo database. Importing it freezes torch.backends' global flags
    (common_utils calls disable_global_flags); they are unfrozen again if they were not
    frozen before, so that a test process importing this goes on as it was."""
    flags: dict[str, Any] = torch.backends.flags_frozen.__globals__
    frozen = not flags["__allow_nonbracketed_mutation_flag"]
    module = importlib.import_module("torch.testing._internal.common_methods_invocations")
    if not frozen:
        flags["__allow_nonbracketed_mutation_flag"] = True
    return list(module.op_db)


# --- the three tools as a user writes them: a test per sample (or op) that raises ------------
# (what lines_per_op counts; the harness below runs them and records what failed)


def gradcheck_test(function: type[torch.autograd.Function], call: Call) -> None:
    """One OpInfo sample through gradcheck in float64 (pytest: parametrized over samples)."""
    sample = fresh(call)

    def fn(*tensors: torch.Tensor) -> Any:
        return apply(function, *tensors, **sample.kwargs)

    torch.autograd.gradcheck(fn, sample.tensors)


def assert_close_test(
    function: type[torch.autograd.Function],
    reference: Callable[..., Any],
    call: Call,
    dtype: torch.dtype,
    seed: int,
    same_dtype: bool = False,
) -> None:
    """One sample in one dtype (pytest: parametrized over samples and dtypes): outputs and
    input gradients under a seeded random upstream gradient, against the reference run in
    float32 on the same rounded inputs and rounded to the dtype (`same_dtype`: the reference
    runs in the dtype), assert_close with its default tolerances. Returns without asserting
    where the reference does not take the sample, or its results are not finite in the dtype."""
    mine = fresh(call, dtype)
    theirs = fresh(mine, dtype if same_dtype else torch.float32)
    gen = torch.Generator().manual_seed(seed)
    try:
        expected = outputs(reference(*theirs.tensors, **theirs.kwargs))
        ups = [torch.randn(e.shape, generator=gen).to(dtype) for e in expected]
        grads = _grads(expected, theirs, [u.to(_float_dtype(theirs)) for u in ups])
    except Exception:
        return  # pytest.skip: the reference does not take this sample in this dtype
    want = [t.to(dtype) if t.is_floating_point() else t for t in expected + grads]
    if not all(t.isfinite().all() for t in want if t.is_floating_point()):
        return  # pytest.skip: out of the dtype's range, no assertion could pass
    actual = outputs(apply(function, *mine.tensors, **mine.kwargs))
    got = actual + _grads(actual, mine, ups)
    assert len(got) == len(want), f"{len(got)} tensors, the reference's {len(want)}"
    for a, e in zip(got, want, strict=True):
        torch.testing.assert_close(a, e)


def _grads(outs: list[torch.Tensor], call: Call, ups: list[torch.Tensor]) -> list[torch.Tensor]:
    """Input gradients for these upstream gradients (zeros where an input is unused)."""
    wrt = [t for t in call.tensors if t.requires_grad]
    pairs = [(o, u) for o, u in zip(outs, ups, strict=True) if o.requires_grad]
    if not wrt or not pairs:
        return []
    found = torch.autograd.grad(
        [o for o, _ in pairs], wrt, [u for _, u in pairs], allow_unused=True
    )
    return [torch.zeros_like(t) if g is None else g for t, g in zip(wrt, found, strict=True)]


def _float_dtype(call: Call) -> torch.dtype:
    return next(t.dtype for t in call.tensors if t.is_floating_point())


def gradaudit_test(
    function: type[torch.autograd.Function], reference: Callable[..., Any], inputs: dict[str, Any]
) -> OpResult:
    """The whole op in one call (pytest: raise_on_failure=True, the default, asserts)."""
    return check_op(
        function, reference, inputs=inputs, dtypes=GRADAUDIT_DTYPES, raise_on_failure=False
    )


# --- the harness: every case of a tool, and which of them failed -----------------------------


@dataclass
class Verdict:
    failing: list[str]  # the failing cases: "sample 3", "bfloat16 sample 3", "lead1/float16"
    detail: str  # why the first of them failed
    seconds: float
    caught: bool = False  # red on a case where the correct op is green (set by run)


def run_gradcheck(function: type[torch.autograd.Function], samples: Samples) -> Verdict:
    start = time.perf_counter()
    failing, detail = [], ""
    for i, call in enumerate(samples.calls):
        try:
            gradcheck_test(function, call)
        except Exception as exc:
            failing.append(f"sample {i}")
            detail = detail or f"sample {i}: {_why(exc)}"
    return Verdict(failing, detail, time.perf_counter() - start)


def run_assert_close(function: type[torch.autograd.Function], op: Op, samples: Samples) -> Verdict:
    start = time.perf_counter()
    failing, detail = [], ""
    for dtype in LOW_DTYPES:
        for i, call in enumerate(samples.calls):
            where = f"{str(dtype).removeprefix('torch.')} sample {i}"
            try:
                assert_close_test(function, op.reference, call, dtype, seed=i)
            except Exception as exc:
                failing.append(where)
                detail = detail or f"{where}: {_why(exc)}"
    return Verdict(failing, detail, time.perf_counter() - start)


def run_gradaudit(function: type[torch.autograd.Function], op: Op) -> Verdict:
    start = time.perf_counter()
    try:
        result = gradaudit_test(function, op.reference, op.inputs)
    except Exception as exc:
        return Verdict(["check_op raised"], _why(exc), time.perf_counter() - start)
    cases = [f"{g.check.removeprefix('variant:')}/{g.dtype}" for g, _ in result.failures]
    if not result.ok and not cases:
        cases = ["nothing compared"]
    return Verdict(list(dict.fromkeys(cases)), result.report(), time.perf_counter() - start)


def same_dtype_alarms(op: Op, samples: Samples) -> list[str]:
    """The correct op's assert_close cases that fail when the reference runs in the dtype
    itself (torch's own low-precision rounding against the Function's float32 arithmetic)."""
    failing = []
    for dtype in LOW_DTYPES:
        for i, call in enumerate(samples.calls):
            try:
                assert_close_test(op.function, op.reference, call, dtype, seed=i, same_dtype=True)
            except Exception:
                failing.append(f"{str(dtype).removeprefix('torch.')} sample {i}")
    return failing


def _why(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    return f"{type(exc).__name__}: {' '.join(lines[:3])[:300]}" if lines else type(exc).__name__


@dataclass
class Outcome:
    """One candidate (a correct op or a bug) through every tool."""

    op: str
    name: str  # the op's name for the correct op, else the bug's
    kind: str  # "correct" or a bug class
    description: str
    verdicts: dict[str, Verdict] = field(default_factory=dict)


def check(
    candidate: type[torch.autograd.Function], op: Op, samples: Samples, tools: Sequence[str]
) -> dict[str, Verdict]:
    verdicts = {}
    for tool in tools:
        if tool == "gradcheck":
            verdicts[tool] = run_gradcheck(candidate, samples)
        elif tool == "assert_close":
            verdicts[tool] = run_assert_close(candidate, op, samples)
        else:
            verdicts[tool] = run_gradaudit(candidate, op)
    return verdicts


def run(
    ops: Sequence[str] | None = None,
    bugs: Sequence[str] | None = None,
    tools: Sequence[str] = TOOLS,
    log: Callable[[str], None] | None = print,
) -> dict[str, Any]:
    """Every candidate of the chosen ops (all; `bugs`: only these bugs) through `tools`. A
    bug is caught by a tool that fails a case (sample, dtype, variant) the correct op passes;
    a correct op that fails is a false alarm."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _run(ops, bugs, tools, log)
    finally:
        torch.set_num_threads(threads)


def _run(
    ops: Sequence[str] | None,
    bugs: Sequence[str] | None,
    tools: Sequence[str],
    log: Callable[[str], None] | None,
) -> dict[str, Any]:
    chosen = [BY_NAME[name] for name in ops] if ops else OPS
    start = time.perf_counter()
    op_db = load_op_db() if any(op.opinfo for op in chosen) else []
    setup = time.perf_counter() - start
    results: list[Outcome] = []
    notes: dict[str, dict[str, Any]] = {}
    for op in chosen:
        samples = samples_for(op, op_db)
        notes[op.name] = {
            "source": samples.source,
            "used": len(samples.calls),
            "skipped": samples.skipped,
        }
        if "assert_close" in tools:
            notes[op.name]["assert_close_same_dtype_alarms"] = same_dtype_alarms(op, samples)
        correct = Outcome(op.name, op.name, "correct", "the correct op")
        correct.verdicts = check(op.function, op, samples, tools)
        for v in correct.verdicts.values():
            v.caught = bool(v.failing)
        outcomes = [correct]
        for bug in BUGS:
            if bug.op != op.name or (bugs is not None and bug.name not in bugs):
                continue
            outcome = Outcome(op.name, bug.name, bug.kind, bug.description)
            outcome.verdicts = check(bug.function, op, samples, tools)
            for tool, v in outcome.verdicts.items():
                v.caught = bool(set(v.failing) - set(correct.verdicts[tool].failing))
            outcomes.append(outcome)
        for outcome in outcomes:
            results.append(outcome)
            if log:
                marks = " ".join(
                    f"{t}={_mark(v)}({v.seconds:.1f}s)" for t, v in outcome.verdicts.items()
                )
                log(f"  {outcome.name:28s} {outcome.kind:12s} {marks}")
    return summarise(results, tools, chosen, notes, setup)


def _mark(v: Verdict) -> str:
    return "CAUGHT" if v.caught else ("red" if v.failing else "green")


def summarise(
    results: list[Outcome],
    tools: Sequence[str],
    chosen: Sequence[Op],
    notes: dict[str, dict[str, Any]],
    setup: float,
) -> dict[str, Any]:
    bugs = [r for r in results if r.kind != "correct"]
    correct = [r for r in results if r.kind == "correct"]
    summary: dict[str, Any] = {}
    for tool in tools:
        times = [r.verdicts[tool].seconds for r in results]
        summary[tool] = {
            "caught": sum(r.verdicts[tool].caught for r in bugs),
            "red": sum(bool(r.verdicts[tool].failing) for r in bugs),
            "bugs": len(bugs),
            "per_class": {
                k: [
                    sum(r.verdicts[tool].caught for r in bugs if r.kind == k),
                    sum(r.kind == k for r in bugs),
                ]
                for k in CLASSES
            },
            "false_alarms": [
                {"op": r.op, "failing": r.verdicts[tool].failing, "why": r.verdicts[tool].detail}
                for r in correct
                if r.verdicts[tool].failing
            ],
            "seconds_per_op": sum(times) / max(len(times), 1),
            "lines_per_op": lines_per_op(tool, chosen),
        }
    any_tool = [r for r in bugs if any(v.caught for v in r.verdicts.values())]
    data: dict[str, Any] = {
        "date": datetime.date.today().isoformat(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),  # inside run: 1
        "op_db_import_seconds": setup,
        "tools": list(tools),
        "samples": notes,
        "summary": summary,
        "caught_by_any": [len(any_tool), len(bugs)],
        "results": [
            {
                "op": r.op,
                "name": r.name,
                "kind": r.kind,
                "description": r.description,
                "verdicts": {t: vars(v) for t, v in r.verdicts.items()},
            }
            for r in results
        ],
    }
    if "gradaudit" in tools:
        peers = [t for t in tools if t != "gradaudit"]
        data["gradaudit_only"] = [
            r.name
            for r in bugs
            if r.verdicts["gradaudit"].caught and not any(r.verdicts[t].caught for t in peers)
        ]
        data["missed_by_gradaudit_caught_by_peer"] = [
            r.name
            for r in bugs
            if not r.verdicts["gradaudit"].caught and any(r.verdicts[t].caught for t in peers)
        ]
    return data


def lines_per_op(tool: str, chosen: Sequence[Op]) -> dict[str, float]:
    """What a user writes, counted in this harness's source (code lines; docstrings, comments
    and def lines left out): `own`, per op on average, the op's own setup (gradcheck: the
    OpInfo lookup and the sample adapter, or the hand-written samples; assert_close: the
    same and the reference; gradaudit: the inputs declaration); `shared`, the test written
    once for every op (gradcheck and assert_close with the helpers they need: `apply` and
    `fresh` to call a Function with keywords on fresh leaves, `_grads` for assert_close)."""
    helpers: list[Callable[..., Any]] = [apply, outputs, fresh]
    shared: dict[str, list[Callable[..., Any]]] = {
        "gradcheck": [gradcheck_test, *helpers],
        "assert_close": [assert_close_test, _grads, _float_dtype, *helpers],
        "gradaudit": [gradaudit_test],
    }
    own = []
    for op in chosen:
        if tool == "gradaudit":
            own.append(1)  # inputs={...}, one line per op in cases.py
            continue
        setup = op.adapt if op.adapt is not None else op.handwritten
        assert setup is not None
        lines = _source_lines(setup) + 1  # + the OpInfo lookup (or the samples' call)
        own.append(lines + (1 if tool == "assert_close" else 0))  # + naming the reference
    return {
        "own": sum(own) / max(len(own), 1),
        "shared": sum(_source_lines(fn) for fn in shared[tool]),
    }


def _source_lines(fn: Callable[..., Any]) -> int:
    """Code lines of a function's body: no blank lines, comments, docstring or def line."""
    lines = [line.strip() for line in inspect.getsource(fn).splitlines()]
    code = [line for line in lines if line and not line.startswith("#")]
    doc = inspect.getdoc(fn)
    body_start = next(i for i, line in enumerate(code) if line.endswith(":")) + 1
    if doc:
        body_start += len([d for d in doc.splitlines() if d.strip()])
    return len(code) - body_start


# --- reporting ------------------------------------------------------------------------------


def tables(data: dict[str, Any]) -> str:
    """The summary table, the per-bug table and the cross-tool lines, in markdown."""
    tools: list[str] = data["tools"]
    summary = data["summary"]
    n = summary[tools[0]]["bugs"]
    lines = [summary[t]["lines_per_op"] for t in tools]
    rows = [
        ("bugs caught", [f"{summary[t]['caught']}/{n}" for t in tools]),
        ("bugs red, counting false-alarm cases", [f"{summary[t]['red']}/{n}" for t in tools]),
        ("false alarms on the correct ops", [_alarms(summary[t]["false_alarms"]) for t in tools]),
        (
            "per class: " + " / ".join(CLASSES),
            [" / ".join(f"{c}/{m}" for c, m in summary[t]["per_class"].values()) for t in tools],
        ),
        ("seconds per op", [f"{summary[t]['seconds_per_op']:.2f}" for t in tools]),
        (
            "lines a user writes per op (+ once for all ops)",
            [f"{x['own']:.1f} (+ {x['shared']:.0f})" for x in lines],
        ),
    ]
    out = ["| | " + " | ".join(tools) + " |", "|---|" + "---|" * len(tools)]
    out += [f"| {label} | " + " | ".join(cells) + " |" for label, cells in rows]
    out += ["", "| bug | class | " + " | ".join(tools) + " |", "|---|---|" + "---|" * len(tools)]
    for r in data["results"]:
        if r["kind"] != "correct":
            cells = [_cell(r["verdicts"][t]) for t in tools]
            out.append(f"| {r['name']} | {r['kind']} | " + " | ".join(cells) + " |")
    caught, total = data["caught_by_any"]
    out += ["", f"caught by at least one tool: {caught}/{total}"]
    if "gradaudit_only" in data:
        only, missed = data["gradaudit_only"], data["missed_by_gradaudit_caught_by_peer"]
        out.append(f"caught by gradaudit only ({len(only)}): {', '.join(only) or '-'}")
        out.append(
            f"missed by gradaudit but caught by a peer ({len(missed)}): "
            + (", ".join(missed) or "-")
        )
    return "\n".join(out)


def _cell(verdict: dict[str, Any]) -> str:
    if verdict["caught"]:
        return "caught"
    return "red (false-alarm cases only)" if verdict["failing"] else "–"


def _alarms(alarms: list[dict[str, Any]]) -> str:
    if not alarms:
        return "0"
    named = []
    for a in alarms:
        cases = sorted({c.split("/")[0] for c in a["failing"]})
        named.append(f"{a['op']} ({', '.join(cases)})")
    return f"{len(alarms)}: " + "; ".join(named)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help=f"only {', '.join(QUICK_OPS)}")
    parser.add_argument("--json", type=Path, help="write every result here")
    parser.add_argument("--ops", help="comma-separated op names (default: all)")
    parser.add_argument("--bugs", help="comma-separated bug names (default: all of the ops')")
    parser.add_argument("--tools", default=",".join(TOOLS), help="comma-separated")
    args = parser.parse_args(argv)
    ops = args.ops.split(",") if args.ops else (list(QUICK_OPS) if args.quick else None)
    start = time.perf_counter()
    data = run(ops, args.bugs.split(",") if args.bugs else None, args.tools.split(","))
    data["wall_seconds"] = time.perf_counter() - start
    data["tables"] = tables(data)
    print(f"\ntorch {data['torch']}, {data['threads']} thread, {data['date']}; samples:")
    for name, note in data["samples"].items():
        line = f"  {name}: {note['source']}, {note['used']} used, {note['skipped']} not taken"
        alarms = note.get("assert_close_same_dtype_alarms")
        if alarms:
            line += f"; red against the reference in bf16/fp16 itself: {len(alarms)} cases"
        print(line)
    print(f"\n{data['tables']}")
    wall, setup = data["wall_seconds"], data["op_db_import_seconds"]
    print(f"\nwall {wall:.0f} s (of which importing op_db {setup:.1f} s)")
    if args.json:
        args.json.write_text(json.dumps(data, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
