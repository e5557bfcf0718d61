"""The distributed audit's cost against the same work written by hand under torchrun (gloo).

Both sides run the tensor-parallel MLP (plugins/gradaudit_tp) on 2 gloo ranks, float64,
the same batches, and are timed inside the ranks (the case's loop, not torchrun's start-up):

- audit: `specs/tp-mlp.yaml`'s audit, run by `gradaudit.api.run` (the sharded target's
  launcher starts torchrun; each rank runs the shard forward and manual backward with their
  collectives, autograd on the full model shared out between the ranks, the comparisons,
  the replica exchange; gradaudit/targets/sharded/case.py);
- by hand: what a careful hand-written torchrun test does per batch (Megatron-style), on
  the batches the spec's data plugin draws: the same forward, manual backward and
  full-model autograd, then `torch.allclose` of each shard against its slice and of each
  replicated gradient against rank 0's;
- arithmetic: the forward, manual backward and full-model autograd alone, compared with
  nothing (every rank computing every reference, as the hand-written test does);
- plain: the shard's forward and manual backward alone (what training runs; for scale).

    python benchmarks/bench_dist.py [--quick]     # prints the rows; bench.py imports rows()
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
TARGET = 1.5
ROUNDS = 9


def _spec(folder: Path, batches: int) -> Path:
    import yaml

    spec = yaml.safe_load((REPO / "specs" / "tp-mlp.yaml").read_text())
    spec["batches"] = {"count": batches, "size": 32, "seed": 0}
    spec["dtypes"] = ["float64"]
    path = folder / "tp-mlp-bench.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def _audit(spec: Path) -> tuple[float, float]:
    """(slowest rank's case seconds, wall seconds including planning and torchrun's start-up)
    of `gradaudit.api.run` on the spec: the sharded target's launcher starts torchrun from
    this process, and each rank's cases time its loop."""
    from gradaudit.api import run

    start = time.perf_counter()
    result = run(spec)
    wall = time.perf_counter() - start
    if not result.ok:
        raise RuntimeError(f"the audit is not green:\n{result.report()}")
    return max(g.seconds for g in result.groups if not g.check.endswith(".replicas")), wall


def _by_hand(spec: Path, mode: str) -> tuple[float, float]:
    """(slowest rank's loop seconds, wall seconds) of this file's rank loop under torchrun."""
    start = time.perf_counter()
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
    subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
         __file__, "--rank-loop", str(spec), mode],
        capture_output=True, text=True, env=env, check=True,
    )  # fmt: skip
    wall = time.perf_counter() - start
    files = sorted(spec.parent.glob("rank*.json"))
    times = [json.loads(p.read_text())["seconds"] for p in files]
    for path in files:
        path.unlink()
    if len(times) != 2:
        raise RuntimeError(f"expected 2 ranks' timings, got {len(times)}")
    return max(times), wall


def rows(quick: bool) -> list[tuple[str, float, float, str]]:
    """(what, audit seconds, baseline seconds, ratio and target) per row: the median of
    the per-round ratios. Each round runs the audit and the plain loop back to back (which
    goes first alternates, so that a drift in the machine's speed favours neither), then
    the other two: gloo's collectives on 2 busy cores spread a run's time by up to 2x from
    one minute to the next, so only ratios taken side by side mean anything."""
    batches, rounds = (5, 1) if quick else (200, ROUNDS)
    with tempfile.TemporaryDirectory() as folder:
        spec = _spec(Path(folder), batches)
        audit, hand, arith, plain, audit_wall, hand_wall = [], [], [], [], [], []
        for index in range(rounds):
            if index % 2:
                plain.append(_by_hand(spec, "plain")[0])
            seconds, wall = _audit(spec)
            audit.append(seconds)
            audit_wall.append(wall)
            if not index % 2:
                plain.append(_by_hand(spec, "plain")[0])
            seconds, wall = _by_hand(spec, "check")
            hand.append(seconds)
            hand_wall.append(wall)
            arith.append(_by_hand(spec, "arithmetic")[0])
    what = f"tp-mlp, 2 gloo ranks, float64, {batches} batches of 32"
    med = statistics.median

    def paired(ours: list[float], theirs: list[float], target: str) -> str:
        ratios = [a / b for a, b in zip(ours, theirs, strict=True)]
        return f"{med(ratios):.2f}x [{min(ratios):.2f}-{max(ratios):.2f}] ({target})"

    return [
        (
            f"distributed audit vs the same model's plain forward and backward, the shard's "
            f"forward and manual backward with their collectives ({what})",
            med(audit),
            med(plain),
            paired(audit, plain, f"<= {TARGET}x"),
        ),
        (
            f"distributed audit vs a hand-written torchrun test ({what})",
            med(audit),
            med(hand),
            paired(audit, hand, "report only"),
        ),
        (
            f"distributed audit vs its arithmetic alone ({what})",
            med(audit),
            med(arith),
            paired(audit, arith, "report only"),
        ),
        (
            "the same, wall time with torchrun start-up",
            med(audit_wall),
            med(hand_wall),
            paired(audit_wall, hand_wall, "report only"),
        ),
    ]


def _rank_loop(spec_path: str, mode: str) -> None:
    """One rank of the hand-written test (mode check), or of a part of it (see the top). The
    models and the batches are the audit's: the same plugins, seed and data plugin."""
    import torch
    import torch.distributed as dist
    from gradaudit_random import load_random
    from gradaudit_tp.backward import tp_mlp_backward
    from gradaudit_tp.model import build_tp_mlp

    from gradaudit.spec import load_spec
    from gradaudit.targets.sharded.layout import Replicated, piece
    from gradaudit.targets.sharded.setup import load_slices

    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    loaded = load_spec(spec_path)
    spec = loaded.spec
    data = load_random(spec.data.options, loaded.base_dir)
    options: dict[str, Any] = {**data.model_args, **spec.model.options}
    torch.manual_seed(spec.model_seed)
    full = build_tp_mlp(None, world, **options).double()
    shard = build_tp_mlp(rank, world, **options).double()
    layout = shard.shard_layout()
    load_slices(shard, full, layout, rank, world)
    b = spec.batches
    start = time.perf_counter()
    for drawn in data.batches(b.split, b.count, b.size, b.seed):
        batch = drawn.to("cpu", torch.float64)
        with torch.no_grad():
            forward = shard(**batch.tensors)
            manual = tp_mlp_backward(shard, batch, forward.detached())
        if mode == "plain":
            continue
        reference_forward = full(**batch.tensors)
        names = list(layout)
        available = {**reference_forward.intermediates, **dict(full.named_parameters())}
        grads = torch.autograd.grad(reference_forward.loss, [available[n] for n in names])
        if mode == "arithmetic":
            continue
        for name, grad in zip(names, grads, strict=True):
            expected = piece(grad, layout[name], rank, world)
            assert torch.allclose(manual[name], expected, rtol=1e-7, atol=1e-7), name
            if isinstance(layout[name], Replicated):
                theirs = manual[name].clone()
                dist.broadcast(theirs, src=0)
                assert torch.equal(theirs, manual[name]), name
    seconds = time.perf_counter() - start
    Path(spec_path).with_name(f"rank{rank}.json").write_text(json.dumps({"seconds": seconds}))
    dist.destroy_process_group()


def main() -> None:
    import warnings

    warnings.filterwarnings("ignore", message="Failed to initialize NumPy")
    if "--rank-loop" in sys.argv:
        at = sys.argv.index("--rank-loop")
        _rank_loop(sys.argv[at + 1], sys.argv[at + 2])
        return
    quick = "--quick" in sys.argv
    for what, audit, baseline, ratio in rows(quick):
        print(f"{what}: {audit:.3f}s vs {baseline:.3f}s (medians), {ratio}")


if __name__ == "__main__":
    main()
