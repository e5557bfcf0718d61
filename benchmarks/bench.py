"""gradaudit's cost against the bare computations it must do, measured side by side.

Every target is a ratio of two things measured in this one run on this machine, so
noise from other load affects both sides. Prints a table; exits 0 (it reports, it
does not gate). `--quick` runs small sizes only, to prove the script works (CI).

    python benchmarks/bench.py            # the full table (several minutes on 2 cores)
    python benchmarks/bench.py --quick    # seconds
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

warnings.filterwarnings("ignore", message="Failed to initialize NumPy")

import torch  # noqa: E402
from gradaudit_charrnn.bptt import charrnn_bptt  # noqa: E402
from gradaudit_charrnn.model import build_charrnn  # noqa: E402

from gradaudit.types import Batch  # noqa: E402

if TYPE_CHECKING:
    from gradaudit.spec import LoadedSpec

REPO = Path(__file__).resolve().parents[1]
GRADAUDIT = str(Path(sys.executable).with_name("gradaudit"))
ROWS: list[tuple[str, str, str, str]] = []  # what, measured, baseline, ratio + target


def median_time(fn: Callable[[], object], repeat: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


Ratio = tuple[float, float, float]  # median, lowest and highest of the per-round ratios


def spread(ratios: list[float]) -> Ratio:
    return statistics.median(ratios), min(ratios), max(ratios)


def row(
    what: str,
    measured: float,
    baseline: float,
    target: str,
    unit: str = "ms",
    ratio: Ratio | None = None,
) -> None:
    """One table row; a paired ratio shows as its median [lowest-highest round]."""
    scale = 1000.0 if unit == "ms" else 1.0
    if ratio is None:
        text = f"{measured / baseline if baseline else float('inf'):.2f}x"
    else:
        text = f"{ratio[0]:.3f}x [{ratio[1]:.2f}-{ratio[2]:.2f}]"
    ROWS.append(
        (
            what,
            f"{measured * scale:.3g} {unit}",
            f"{baseline * scale:.3g} {unit}",
            f"{text} ({target})",
        )
    )


def bptt_times(B: int, T: int, H: int, repeat: int) -> tuple[float, float, float, Ratio]:
    """Median forward, autograd backward (alone) and manual BPTT times at one size, and the
    per-round ratios manual / autograd (the two run back to back in each round)."""
    vocab = 65
    torch.manual_seed(0)
    model = build_charrnn(vocab, d_model=24, n_hidden=H)
    x = torch.randint(0, vocab, (B, T))
    y = torch.randint(0, vocab, (B, T))
    params = list(model.parameters())
    forwards, backwards, manuals = [], [], []
    for i in range(repeat + 1):  # the first round warms up
        start = time.perf_counter()
        forward = model(x, y)
        middle = time.perf_counter()
        torch.autograd.grad(forward.loss, params)
        end = time.perf_counter()
        forward = model(x, y)
        detached = forward.detached()
        with torch.no_grad():
            begin = time.perf_counter()
            charrnn_bptt(model, Batch({"inputs": x, "targets": y}), detached)
            done = time.perf_counter()
        if i:
            forwards.append(middle - start)
            backwards.append(end - middle)
            manuals.append(done - begin)
    ratios = spread([m / b for m, b in zip(manuals, backwards, strict=True)])
    return (
        statistics.median(forwards),
        statistics.median(backwards),
        statistics.median(manuals),
        ratios,
    )


def bench_bptt(sizes: list[tuple[int, int, int]], repeat: int) -> None:
    """Manual BPTT against autograd's backward of the same forward (float32, CPU)."""
    for B, T, H in sizes:
        r = max(5, repeat // max(1, (B * T * H) // 200_000))
        t_fwd, t_auto, t_manual, ratio = bptt_times(B, T, H, r)
        what = f"manual BPTT vs autograd backward, B,T,H={B},{T},{H} (forward {t_fwd * 1e3:.3g} ms)"
        row(what, t_manual, t_auto, "target <= 1.0", ratio=ratio)


def bench_overhead(batches: int, dtypes: list[str], mode: str, what: str, target: str) -> None:
    """`gradaudit run` against the bare loops of a careful hand-written test, batch by batch
    in lockstep (benchmarks/bench_overhead.py says why)."""
    import bench_overhead

    loaded = overhead_spec(batches, dtypes, mode)
    run, bare, ratio = bench_overhead.overhead(loaded, dtypes, mode)
    row(what, run, bare, target, ratio=ratio)


def subprocess_time(args: list[str], repeat: int) -> float:
    def call() -> object:
        return subprocess.run(args, capture_output=True, check=True, cwd=REPO)

    return median_time(call, repeat)


def bench_startup(repeat: int) -> None:
    """Commands that must not import torch, against importing torch."""
    t_torch = subprocess_time([sys.executable, "-c", "import torch"], repeat)
    t_help = subprocess_time([GRADAUDIT, "--help"], repeat)
    t_validate = subprocess_time([GRADAUDIT, "validate", "specs/charrnn.yaml"], repeat)
    row("gradaudit --help vs python -c 'import torch'", t_help, t_torch, "target <= 0.25")
    row("gradaudit validate vs python -c 'import torch'", t_validate, t_torch, "target <= 0.25")


def peak_rss_kib(spec_text: str) -> int:
    """Peak RSS of one `gradaudit run` child process (ru_maxrss of the children)."""
    with tempfile.TemporaryDirectory() as tmp:
        spec = Path(tmp) / "spec.yaml"
        spec.write_text(spec_text)
        code = (
            "import resource, subprocess, sys;"
            f"subprocess.run([{GRADAUDIT!r}, 'run', {str(spec)!r}, '-q', '--json', "
            f"{str(Path(tmp) / 'r.json')!r}], check=True, stdout=subprocess.DEVNULL);"
            "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)"
        )
        out = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, check=True
        )
        return int(out.stdout.strip())


def bench_memory(small: int, large: int) -> None:
    def spec(count: int) -> str:
        return (
            "name: memory\nmodel: {plugin: charrnn, options: {d_model: 4, n_hidden: 8}}\n"
            "gradients: {plugin: charrnn-bptt}\n"
            "data: {plugin: text, options: {source: builtin, block_size: 4}}\n"
            f"batches: {{count: {count}, size: 2, seed: 0}}\n"
            "devices: [cpu]\ndtypes: [float32]\ntolerance: {mode: allclose}\n"
        )

    rss_small = peak_rss_kib(spec(small))
    rss_large = peak_rss_kib(spec(large))
    ROWS.append(
        (
            f"peak RSS, {large} batches vs {small} batches (with --json)",
            f"{rss_large / 1024:.0f} MiB",
            f"{rss_small / 1024:.0f} MiB",
            f"{rss_large / rss_small:.2f}x (target <= 1.10)",
        )
    )


def bench_finite_difference(full_gradcheck: bool) -> None:
    """gradaudit's finite-difference check vs torch.autograd.gradcheck, notebook-sized, float64."""
    from gradaudit.api import run_loaded
    from gradaudit.spec import LoadedSpec, parse_spec
    from gradaudit.targets.model.load import Audit

    text = """
name: fd
model: {plugin: charrnn, options: {d_model: 24, n_hidden: 200}}
gradients: {plugin: charrnn-bptt}
batches: {count: 1, size: 1, seed: 64}
devices: [cpu]
dtypes: [float64]
checks: {finite_difference: {directions: 8}}
"""
    loaded = LoadedSpec(parse_spec(text, "fd.yaml"), REPO / "fd.yaml", "0" * 64)
    groups = run_loaded(loaded, devices=["cpu"], dtypes=["float64"]).groups
    fd_group = next(g for g in groups if g.check == "finite_difference")
    assert all(s.status == "pass" for s in fd_group.tensors)
    fd_seconds = fd_group.seconds  # gradients + fd for the batch: an upper bound for fd alone

    audit = Audit(loaded)  # the same seeded model and batch as the run's
    model = copy.deepcopy(audit.master).double()
    batch = next(audit.batches())
    names = [n for n, _ in model.named_parameters()]
    params = [p.detach().clone().requires_grad_(True) for p in model.parameters()]

    def loss_of(*values: torch.Tensor) -> torch.Tensor:
        state = dict(zip(names, values, strict=True))
        forward = torch.func.functional_call(model, state, (batch.inputs, batch.targets))
        loss: torch.Tensor = forward.loss
        return loss

    start = time.perf_counter()
    assert torch.autograd.gradcheck(loss_of, params, fast_mode=True)
    fast = time.perf_counter() - start
    row(
        "finite-difference check vs gradcheck fast_mode (float64, notebook size)",
        fd_seconds,
        fast,
        "info",
        "s",
    )
    if full_gradcheck:
        start = time.perf_counter()
        assert torch.autograd.gradcheck(loss_of, params)
        full = time.perf_counter() - start
        ROWS.append(
            (
                "finite-difference check vs gradcheck full (float64, notebook size)",
                f"{fd_seconds:.3g} s",
                f"{full:.3g} s",
                f"{full / fd_seconds:.0f}x faster (target >= 50x)",
            )
        )


def bench_threads(batches: int) -> None:
    """What torch's intra-op threads give, and whether dtype groups in parallel help."""
    spec = REPO / "specs" / "charrnn.yaml"
    base = [GRADAUDIT, "run", str(spec), "--device", "cpu", "-q", "--dtype"]
    env1 = {**os.environ, "OMP_NUM_THREADS": "1"}

    def run_one(threads_env: dict[str, str], dtypes: list[str]) -> None:
        procs = [
            subprocess.Popen(base + [d], env=threads_env, stdout=subprocess.DEVNULL) for d in dtypes
        ]
        for p in procs:
            assert p.wait() == 0

    def sequential(env: dict[str, str]) -> float:
        start = time.perf_counter()
        run_one(env, ["float32"])
        run_one(env, ["float64"])
        return time.perf_counter() - start

    t1 = sequential(env1)
    t2 = sequential(dict(os.environ))
    start = time.perf_counter()
    run_one(env1, ["float32", "float64"])  # two processes at once, one thread each
    parallel = time.perf_counter() - start
    row("specs/charrnn.yaml cpu float32+float64: 2 threads vs 1 thread", t2, t1, "info", "s")
    row(
        "same, 2 processes x 1 thread in parallel vs sequential 2 threads",
        parallel,
        t2,
        "info",
        "s",
    )


def overhead_spec(batches: int, dtypes: list[str], mode: str) -> LoadedSpec:
    """A spec of the CharRNN (32x8, hidden 200) on the CPU, loaded in this process."""
    from gradaudit.spec import LoadedSpec, parse_spec

    text = f"""
name: overhead
model: {{plugin: charrnn, options: {{d_model: 24, n_hidden: 200}}}}
gradients: {{plugin: charrnn-bptt}}
batches: {{count: {batches}, size: 32, seed: 64}}
devices: [cpu]
dtypes: [{", ".join(dtypes)}]
tolerance: {{mode: {mode}}}
"""
    return LoadedSpec(parse_spec(text, "overhead.yaml"), REPO / "overhead.yaml", "0" * 64)


def bench_syncs(batches: int) -> None:
    """Device reads (host-device synchronisations on a GPU) per case and batch: one for
    the batch, and one more on a batch that is some tensor's worst so far (fewer as the
    run goes on). Counted over the runner's loop (planned beforehand), after a warm-up run."""
    import bench_overhead

    from gradaudit.compare.syncs import count_syncs

    for mode in ("allclose", "auto"):
        target, made = bench_overhead.engine(overhead_spec(batches, ["float32"], mode), ["float32"])
        bench_overhead.run_plan_events(target, made, lambda events: None)
        with count_syncs() as counter:
            bench_overhead.run_plan_events(target, made, lambda events: None)
        ROWS.append(
            (
                f"device reads per case and batch, float32 {mode}, {batches} batches",
                f"{counter.total / batches:.2f}",
                "-",
                f"{dict(counter.counts)} (target <= 2)",
            )
        )


def bench_thread_load(batches: int) -> None:
    """1 vs 2 intra-op threads, idle and with a busy-loop process on the other core."""
    spec = REPO / "specs" / "charrnn.yaml"
    base = [GRADAUDIT, "run", str(spec), "--device", "cpu", "--dtype", "float32", "-q"]

    def timed(threads: int) -> float:
        start = time.perf_counter()
        subprocess.run([*base, "--threads", str(threads)], check=True, stdout=subprocess.DEVNULL)
        return time.perf_counter() - start

    idle = (timed(2), timed(1))
    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        loaded = (timed(2), timed(1))
    finally:
        busy.kill()
        busy.wait()
    row("specs/charrnn.yaml float32: --threads 2 vs 1, idle", idle[0], idle[1], "info", "s")
    row("same, a busy-loop process on the other core", loaded[0], loaded[1], "info", "s")


def overhead_rows(batches: int) -> None:
    """The three overhead targets: one dtype in allclose and auto, and the default spec's
    four CPU dtypes (auto) in one run against the sum of their four bare loops."""
    four = ["float32", "float64", "bfloat16", "float16"]
    size = f"{batches} batches of 32x8, float32"
    bench_overhead(
        batches,
        ["float32"],
        "allclose",
        f"gradaudit run (allclose) vs bare loop (forward, autograd.grad, manual, allclose), {size}",
        "target <= 1.10",
    )
    bench_overhead(
        batches,
        ["float32"],
        "auto",
        f"gradaudit run (auto) vs bare loop that also computes the float64 truth and the "
        f"baseline rule, {size}",
        "target <= 1.10",
    )
    bench_overhead(
        batches // 2,
        four,
        "auto",
        f"the default spec's four CPU dtypes (auto) in one run vs the sum of four bare loops, "
        f"{batches // 2} batches",
        "target <= 1.0",
    )


def other_rows(quick: bool) -> None:
    """The op audit, distributed and pytest rows (benchmarks/bench_ops.py and friends)."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import importlib

    modules = [importlib.import_module(n) for n in ("bench_ops", "bench_dist", "bench_pytest")]

    for module in modules:
        for what, measured, baseline, ratio in module.rows(quick):
            if "x" not in ratio.split()[0]:  # a target alone: show the plain ratio with it
                ratio = f"{measured / baseline:.2f}x ({ratio})"
            ROWS.append((what, f"{measured:.3g} s", f"{baseline:.3g} s", ratio))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} cpus")
    if args.quick:
        print("--quick: too small to judge the targets; it proves the script runs")
        torch.set_num_threads(1)
        bench_bptt([(1, 8, 200), (32, 8, 200)], 5)
        overhead_rows(30)
        bench_syncs(4)
        bench_startup(2)
        bench_memory(20, 200)
        bench_finite_difference(full_gradcheck=False)
        other_rows(quick=True)
    else:
        torch.set_num_threads(1)
        bench_bptt([(1, 8, 200), (32, 8, 200), (64, 64, 512), (128, 256, 1024)], 20)
        overhead_rows(200)
        bench_syncs(200)
        bench_startup(5)
        bench_memory(100, 10_000)
        bench_finite_difference(full_gradcheck=True)
        bench_threads(8)
        bench_thread_load(8)
        other_rows(quick=False)
    width = [max(len(r[i]) for r in ROWS) for i in range(4)]
    header = ("what", "measured", "baseline", "ratio")
    print("| " + " | ".join(h.ljust(w) for h, w in zip(header, width, strict=True)) + " |")
    print("|" + "|".join("-" * (w + 2) for w in width) + "|")
    for r in ROWS:
        print("| " + " | ".join(c.ljust(w) for c, w in zip(r, width, strict=True)) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
