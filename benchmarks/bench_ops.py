"""An op audit against the pytest loop a careful kernel author writes by hand.

The loop does, for the same dtypes and input variants (shapes, layouts, zeros and argument
values taken from the audit's own variant list beforehand, outside the timing): draw seeded
inputs, cast, make the layout, forward candidate and reference, a random upstream gradient,
autograd.grad on both, and `torch.testing.assert_close` per output and input gradient.
Under `auto` the loop also
runs the reference in float64 and holds each tensor to FlashAttention's rule (at most twice
the reference's own error against that truth), as the audit's `baseline` does.

One torch thread; the two sides run alternately in paired rounds; the ratio is the median
of the per-round ratios (target <= 1.25x, issue 18).

    python benchmarks/bench_ops.py [--quick]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from typing import Any

warnings.filterwarnings("ignore", message="Failed to initialize NumPy")

import torch  # noqa: E402
from gradaudit_ops import rmsnorm, rmsnorm_reference, softmax_xent, softmax_xent_reference  # noqa: E402

from gradaudit.spec.op import InputDecl, Variants  # noqa: E402
from gradaudit.targets.op.api import check_op  # noqa: E402
from gradaudit.targets.op.resolve import resolve, varied_arguments  # noqa: E402
from gradaudit.targets.op.variants import Variant, derive  # noqa: E402

TARGET = 1.25
DTYPES = ("float64", "float32")
OPS: dict[str, dict[str, Any]] = {
    "rmsnorm": {
        "candidate": rmsnorm,
        "reference": rmsnorm_reference,
        "inputs": {"x": ["N", "D"], "weight": ["D"]},
        "dims": {"N": 64, "D": 256},
        "out": lambda v: v.shapes["x"],
    },
    "softmax-xent": {
        "candidate": softmax_xent,
        "reference": softmax_xent_reference,
        "inputs": {
            "logits": ["N", "V"],
            "targets": {"shape": ["N"], "dtype": "int64", "high": "V"},
        },
        "dims": {"N": 64, "V": 512},
        "out": lambda v: (),
    },
}


def _layout(t: torch.Tensor, layout: str, shape: tuple[int, ...]) -> torch.Tensor:
    if layout == "expanded" and t.dim():
        return t[:1].expand(shape)
    if layout == "transposed" and t.dim() >= 2:
        return t.transpose(-1, -2).contiguous().transpose(-1, -2)
    if layout in ("strided", "transposed") and t.dim():
        buffer = t.new_zeros(*t.shape[:-1], 2 * t.shape[-1])
        buffer[..., ::2] = t
        return buffer[..., ::2]
    return t


def hand_loop(op: dict[str, Any], variants: list[Variant], mode: str) -> Callable[[], None]:
    """What a pytest suite over these variants does, written out by hand."""
    candidate, reference = op["candidate"], op["reference"]
    decls = {
        n: InputDecl.model_validate({"shape": s} if isinstance(s, list) else s)
        for n, s in op["inputs"].items()
    }

    def draw(v: Variant, dtype: torch.dtype) -> dict[str, torch.Tensor]:
        gen = torch.Generator().manual_seed(v.seed)
        out = {}
        for name, decl in decls.items():
            shape = v.shapes[name]
            if decl.dtype == "float":
                t = torch.randn(shape, generator=gen, dtype=torch.float64)
                if v.zeros:  # the zeros variant: a quarter of the entries exactly 0
                    t.view(-1)[1::4] = 0.0
                t = t.to(dtype)
            else:
                t = torch.randint(0, v.sizes[str(decl.high)], shape, generator=gen)
            for target, special in v.hit:  # ignore_index hit in places
                if target == name:
                    t.view(-1)[::3] = special
            out[name] = t
        return out

    def run(
        fn: Callable[..., Any], tensors: dict[str, torch.Tensor], v: Variant, g: torch.Tensor
    ) -> list[torch.Tensor]:
        xs = {
            k: _layout(t.clone(), v.layout, v.shapes[k]).requires_grad_(t.is_floating_point())
            for k, t in tensors.items()
        }
        out = fn(*xs.values(), **dict(v.args))
        wrt = [x for x in xs.values() if x.requires_grad]
        grads = torch.autograd.grad(out, wrt, _layout(g.to(out.dtype), v.layout, g.shape))
        return [out.detach(), *grads]

    failures: list[str] = []

    def loop() -> None:
        for name in DTYPES:
            dtype = getattr(torch, name)
            for v in variants:
                tensors = draw(v, dtype)
                g = torch.randn(op["out"](v), dtype=torch.float64)
                got = run(candidate, tensors, v, g)
                expected = run(reference, tensors, v, g)
                if mode == "allclose" or name == "float64":
                    for a, b in zip(got, expected, strict=True):
                        try:  # counted, not raised: both sides run to the end
                            torch.testing.assert_close(a, b)
                        except AssertionError:
                            failures.append(name)
                    continue
                wide = {k: t.double() if t.is_floating_point() else t for k, t in tensors.items()}
                truth = run(reference, wide, v, g.to(dtype).double())
                for a, b, t in zip(got, expected, truth, strict=True):
                    error = (a.double() - t).abs().max()
                    allowed = 2 * (b.double() - t).abs().max() + 1e-5 * t.abs().max()
                    if not error <= allowed:
                        failures.append(name)

    return loop


def paired(
    measured: Callable[[], object], baseline: Callable[[], object], rounds: int
) -> tuple[float, float, list[float]]:
    measured()
    baseline()
    pairs = []
    for _ in range(rounds):
        start = time.perf_counter()
        measured()
        middle = time.perf_counter()
        baseline()
        pairs.append((middle - start, time.perf_counter() - middle))
    return (
        statistics.median(p[0] for p in pairs),
        statistics.median(p[1] for p in pairs),
        [a / b for a, b in pairs],
    )


def rows(quick: bool) -> list[tuple[str, float, float, str]]:
    """(what, audit seconds, hand loop seconds, "ratio [lowest-highest] (target)")."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        out = []
        rounds = 3 if quick else 15
        for name, op in OPS.items():
            settings = {k: v for k, v in op.items() if k in ("inputs", "dims")}
            decls = {
                n: InputDecl.model_validate({"shape": s} if isinstance(s, list) else s)
                for n, s in op["inputs"].items()
            }
            # the audit's own variants in these dtypes: its argument variants too; the long
            # reductions run in bfloat16 or float16 only, so not here
            cand, ref = (
                resolve(op["candidate"], "bench", "candidate"),
                resolve(op["reference"], "bench", "reference"),
            )
            varied = varied_arguments(cand, ref, {}, decls)
            variants = [v for v in derive(decls, op["dims"], Variants(), 0, varied) if not v.long]
            for mode in ("allclose", "auto"):

                def audit(
                    mode: str = mode, op: dict[str, Any] = op, settings: dict[str, Any] = settings
                ) -> None:
                    check_op(
                        op["candidate"],
                        op["reference"],
                        dtypes=DTYPES,
                        tolerance=mode,
                        raise_on_failure=False,
                        **settings,
                    )

                measured, baseline, ratios = paired(audit, hand_loop(op, variants, mode), rounds)
                median = statistics.median(ratios)
                out.append(
                    (
                        f"op audit {name} {'+'.join(DTYPES)} x {len(variants)} variants, "
                        f"{mode}, vs hand-written loop",
                        measured,
                        baseline,
                        f"{median:.2f}x [{min(ratios):.2f}-{max(ratios):.2f}] (<= {TARGET}x)",
                    )
                )
        return out
    finally:
        torch.set_num_threads(threads)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    for what, measured, baseline, ratio in rows(args.quick):
        print(f"| {what} | {measured * 1e3:.3g} ms | {baseline * 1e3:.3g} ms | {ratio} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
