"""The executor: the process that runs plugin code (`python -m gradaudit.run.executor FD`).

Its supervisor writes one job (JSON) to its stdin; it loads the spec, the plugins and the
target, makes the plan, sends it, runs the cases the job names and sends every result, all
as events on the pipe `FD` (gradaudit.run.events). It dies with its supervisor (Linux:
PR_SET_PDEATHSIG; elsewhere a thread that watches the parent), so no executor outlives a
killed `gradaudit`. What it does not send, the supervisor reports as not run.

`Job` is also how the Python API runs a spec in the caller's process (`run_job`).
"""

from __future__ import annotations

import ctypes
import dataclasses
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from gradaudit.errors import ExitCode, GradauditError, UsageError, one_line, why
from gradaudit.plan import Plan, Selection, make_plan, subset
from gradaudit.results import Shard
from gradaudit.run.events import Event, Failed, Finished, Planned, Stopped, encode
from gradaudit.spec.common import LoadedSpec
from gradaudit.spec.load import load_spec
from gradaudit.targets import Target


@dataclass(frozen=True)
class Job:
    """What a supervisor asks of an executor."""

    spec: str
    sets: tuple[str, ...] = ()
    devices: tuple[str, ...] = ()
    dtypes: tuple[str, ...] = ()
    shard: str | None = None  # "K/N"
    batches: tuple[int, ...] = ()  # --batch
    variants: tuple[str, ...] = ()  # --variant
    mode: str = "run"  # plan | run | mutate
    cases: tuple[tuple[str, str, str], ...] | None = None  # None: every runnable case
    resume: dict[str, int] = field(default_factory=dict)  # device -> last sample dealt with
    timeout: float | None = None
    threads: int | None = None
    require_devices: tuple[str, ...] = ()
    options: dict[str, Any] = field(default_factory=dict)
    alongside: tuple[str, ...] = ()  # the other specs of this run (LoadedSpec.alongside)

    def to_json(self) -> str:
        import json

        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> Job:
        import json

        data = json.loads(text)
        for key in (
            "sets",
            "devices",
            "dtypes",
            "batches",
            "variants",
            "require_devices",
            "alongside",
        ):
            data[key] = tuple(data[key])
        if data["cases"] is not None:
            data["cases"] = tuple(tuple(c) for c in data["cases"])
        return cls(**data)


def set_threads(threads: int | None) -> None:
    """torch's intra-op threads for a run: 1 by default, since audit-sized batches gain
    nothing reliable from a second thread and lose up to 40x when other work shares the
    cores (benchmarks/README.md); OMP_NUM_THREADS, when set, is the user's choice."""
    import torch

    if threads is None and "OMP_NUM_THREADS" not in os.environ:
        threads = 1
    if threads:
        torch.set_num_threads(threads)


def interpret_kernels(devices: Sequence[str]) -> dict[str, str]:
    """Triton kernels on a CPU runner run under Triton's interpreter: TRITON_INTERPRET=1,
    set before any plugin can import triton (which reads it once, at import). Only when
    every audited device is the cpu, and never over the user's own setting. Returns the
    plan's fact saying so (where triton is installed and its kernels will be interpreted)."""
    import importlib.util

    if set(devices) != {"cpu"} or importlib.util.find_spec("triton") is None:
        return {}
    fact = {"triton": "Triton kernels run under Triton's interpreter (TRITON_INTERPRET=1)"}
    if "triton" not in sys.modules and "TRITON_INTERPRET" not in os.environ:
        os.environ["TRITON_INTERPRET"] = "1"
        return fact
    return fact if os.environ.get("TRITON_INTERPRET") == "1" else {}


def run_job(
    job: Job,
    emit: Callable[[list[Event]], None],
    loaded: LoadedSpec | None = None,
    target: Target | None = None,
    own_process: bool = False,
) -> None:
    """Load, plan, and run the job, sending every event to `emit`. A GradauditError becomes
    `Failed` (exit 2, one line); anything else propagates (an internal error). `loaded` and
    `target`, when given, are used instead of loading `job.spec` (the Python API).
    `own_process`: this is an executor process, whose environment is gradaudit's to set."""
    try:
        loaded = loaded or load_spec(job.spec, job.sets)
        if job.alongside:
            loaded = dataclasses.replace(loaded, alongside=job.alongside)
        devices = subset("--device", job.devices, loaded.spec.devices)
        dtypes = subset("--dtype", job.dtypes, loaded.spec.dtypes)
        facts = interpret_kernels(devices) if own_process else {}
        if job.mode != "plan":
            set_threads(job.threads)
        from gradaudit.targets.kinds import build_target

        target = target or build_target(loaded)
        head = target.head()
        import torch

        facts = {"torch_version": torch.__version__, **head.facts, **facts}
        head = dataclasses.replace(head, facts=facts)
        only = _only(job, head)
        shard = Shard.parse(job.shard) if job.shard is not None else None
        selection = Selection(tuple(devices), tuple(dtypes), shard, only, job.sets)
        skeletons = target.skeletons(devices, dtypes)
        plan = make_plan(head, skeletons, loaded.spec.tolerance, selection)
        _required(plan, job.require_devices)
    except GradauditError as exc:
        emit([Failed(str(exc), int(exc.exit_code))])
        return
    except BaseException as exc:
        if not from_plugin(exc):
            raise
        message = f"plugin code raised {why(exc)} while the target loaded"
        emit([Failed(message, int(ExitCode.FAILED))])
        return
    emit([Planned(plan)])
    if job.mode == "plan":
        emit([Finished()])
        return
    from gradaudit.run.loop import run_plan
    from gradaudit.targets import Context

    mutants = None
    if job.mode == "mutate":
        from gradaudit.mutate import generic_mutants

        mutants = generic_mutants(list(plan.tensors))
    context = Context(job.timeout, mutants, dict(job.options))
    wanted = None if job.cases is None else set(job.cases)
    own = getattr(target, "run_plan", None)  # a target with an executor of its own (torchrun)
    try:
        if own is not None:
            own(plan, emit, context, wanted, job.resume)
        else:
            run_plan(target, plan, emit, context, wanted, job.resume)
    except GradauditError as exc:  # it cannot go on (a module this machine lacks)
        if not own_process:
            raise  # the Python API's caller gets the error itself
        emit([Failed(str(exc), int(exc.exit_code))])
        return
    emit([Finished()])


def _required(plan: Plan, devices: tuple[str, ...]) -> None:
    """--require-device: a device this machine lacks is a usage error, not a skip."""
    for device in devices:
        absent = [c.skip for c in plan.cases if c.device == device and c.skip]
        if absent and len(absent) == sum(c.device == device for c in plan.cases):
            raise UsageError(f"--require-device {device}: {absent[0]}")


def from_plugin(exc: BaseException) -> bool:
    """Whether an exception was raised in plugin code (a frame of its traceback outside
    gradaudit and torch), rather than being gradaudit's own error."""
    import traceback

    from gradaudit.errors import own_dirs

    ours = own_dirs()
    return any(not f.filename.startswith(ours) for f in traceback.extract_tb(exc.__traceback__))


def _only(job: Job, head: Plan) -> tuple[int, ...]:
    """--batch indices, or --variant names as the target's sample indices."""
    if job.variants:
        if not head.sample_names:
            raise GradauditError("--variant: this spec's samples are batches: use --batch")
        unknown = [v for v in job.variants if v not in head.sample_names]
        if unknown:
            known = ", ".join(head.sample_names)
            raise GradauditError(f"--variant {unknown[0]}: not a variant of this op ({known})")
        return tuple(head.sample_names.index(v) for v in job.variants)
    if job.batches and head.sample_names:
        raise GradauditError("--batch: this spec's samples are variants: use --variant NAME")
    if job.batches and head.samples is not None:
        count = len(head.samples)
        beyond = [k for k in job.batches if k >= count]
        if beyond:
            raise GradauditError(f"--batch {beyond[0]}: the spec has batches 0 to {count - 1}")
    return tuple(job.batches)


def die_with_parent(parent: int, sig: int = signal.SIGKILL) -> None:
    """End this process when its parent (the supervisor) dies, whatever plugin code does
    with signals: PR_SET_PDEATHSIG on Linux, a watching thread elsewhere."""
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, sig)  # PR_SET_PDEATHSIG
    else:

        def watch() -> None:
            while os.getppid() == parent:
                time.sleep(0.5)
            os._exit(1)

        threading.Thread(target=watch, daemon=True).start()
    if os.getppid() != parent:  # the parent died before the signal was armed
        os._exit(1)


def main() -> None:
    """`python -c EXECUTOR FD PARENT`: run the job on stdin, events to FD."""
    fd, parent = int(sys.argv[-2]), int(sys.argv[-1])
    die_with_parent(parent)
    serve_job(fd)


def serve_job(fd: int) -> None:
    """Read the job on stdin, run it, send its events to the descriptor `fd`, and end the
    process (a started executor, or one forked by gradaudit.run.zygote)."""
    import warnings

    warnings.filterwarnings("ignore", message="Failed to initialize NumPy")
    out = os.fdopen(fd, "wb", buffering=0)

    def emit(events: list[Event]) -> None:
        out.write(encode(events))

    job = Job.from_json(sys.stdin.readline())
    try:
        run_job(job, emit, own_process=True)
    except BaseException as exc:  # gradaudit's own error: the supervisor reports it
        if isinstance(exc, KeyboardInterrupt) and from_plugin(exc):
            # No Ctrl-C reaches an executor (its own session; the supervisor handles
            # SIGINT): plugin code raised it, which ends the cases it left unfinished.
            emit([Stopped("plugin code raised KeyboardInterrupt")])
            out.close()
            os._exit(0)
        try:
            emit([Failed(f"internal error: {one_line(exc)}", int(ExitCode.INTERNAL))])
        finally:
            os._exit(int(ExitCode.INTERNAL))
    out.close()
    os._exit(0)  # plugin code's threads or atexit handlers cannot hold the run open


if __name__ == "__main__":
    main()
