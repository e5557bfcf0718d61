"""The processes of a distributed audit: what this machine can run, the launcher's
environment, stopping it and its ranks, and reading its failure report."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import time
from pathlib import Path

from gradaudit.errors import SpecError, UsageError
from gradaudit.spec import LoadedSpec

GRACE = 15.0  # seconds torchrun gets to stop its ranks before everything is SIGKILLed
POLL = 0.05


def check_machine(loaded: LoadedSpec, devices: list[str]) -> dict[str, str]:
    """Exit-2 problems of backend, devices and port; returns the devices to skip (absent)."""
    import torch
    import torch.distributed as dist

    cfg = loaded.spec.distributed
    assert cfg is not None
    where = f"{loaded.path}:{loaded.line_of('distributed')}"
    if not dist.is_available():
        raise UsageError(f"{where}: this torch build has no torch.distributed")
    for device in devices:
        if device not in ("cpu", "cuda"):
            raise SpecError(
                f"{where}: devices: '{device}': distributed audits run on cpu or cuda "
                "(rank r uses cuda:r)"
            )
    if cfg.backend == "nccl":
        if not dist.is_nccl_available() or not torch.cuda.is_available():
            raise UsageError(f"{where}: backend nccl needs CUDA GPUs; this machine has none")
        if "cpu" in devices:
            raise SpecError(f"{where}: backend nccl cannot audit the cpu device: use gloo")
    elif not dist.is_gloo_available():
        raise UsageError(f"{where}: this torch build has no gloo backend")
    skipped = {}
    cores = os.cpu_count() or 1
    if "cpu" in devices and cfg.world_size > cores:
        raise UsageError(
            f"{where}: world_size {cfg.world_size}: this machine has {cores} CPU cores, "
            "one per cpu rank"
        )
    if "cuda" in devices:
        if not torch.cuda.is_available():
            skipped["cuda"] = "cuda is not available on this machine"
        elif cfg.world_size > torch.cuda.device_count():
            raise UsageError(
                f"{where}: world_size {cfg.world_size}: this machine has "
                f"{torch.cuda.device_count()} CUDA devices, one per rank"
            )
    if cfg.port is not None:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            try:
                probe.bind(("127.0.0.1", cfg.port))
            except OSError:
                raise UsageError(
                    f"{where}: port {cfg.port} is already in use: free it, or drop `port` "
                    "to let torchrun pick a free one"
                ) from None
    return skipped


def environment() -> dict[str, str]:
    """The ranks import this gradaudit, one torch thread each unless the caller chose."""
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", "1")
    root = str(Path(__file__).resolve().parents[2])  # the folder holding gradaudit
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH", "")) if p)
    return env


def stop(proc: subprocess.Popen[bytes], pids: list[int], run_dir: Path) -> None:
    """torchrun stops its ranks on SIGTERM; SIGKILL whatever is left, ranks included."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(GRACE)
        except ProcessLookupError:
            pass
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    for pid in pids:
        _kill_rank(pid, run_dir)


def _kill_rank(pid: int, run_dir: Path) -> None:
    """SIGKILL a rank that outlived torchrun (checked by its command line: pids get reused)."""
    proc = Path(f"/proc/{pid}")
    try:
        if str(run_dir).encode() not in (proc / "cmdline").read_bytes():
            return
        os.kill(pid, signal.SIGKILL)
    except (OSError, ProcessLookupError):
        return
    deadline = time.monotonic() + 5.0
    while time.monotonic() < deadline:
        try:
            if (proc / "stat").read_text().split(") ")[1].startswith("Z"):
                return
        except (OSError, IndexError):
            return
        time.sleep(POLL)


def failures(log: str) -> list[tuple[int, int]]:
    """(rank, exit code) of each failed rank in torchrun's failure report, root cause first."""
    pattern = r"rank\s*:\s*(\d+)\s*\(local_rank[^\n]*\n\s*exitcode\s*:\s*(-?\d+)"
    found = [(int(m[1]), int(m[2])) for m in re.finditer(pattern, log)]
    root = log.rfind("Root Cause")
    first = [(int(m[1]), int(m[2])) for m in re.finditer(pattern, log[root:])] if root >= 0 else []
    return first[:1] + [f for f in found if f not in first[:1]]


def tail(path: Path, limit: int = 20_000) -> str:
    try:
        with open(path, "rb") as handle:
            handle.seek(max(0, path.stat().st_size - limit))
            return handle.read().decode("utf-8", "replace")
    except OSError:
        return ""
