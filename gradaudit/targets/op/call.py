"""Calling one side of an op audit: inputs in, outputs and gradients out.

Inputs go in positionally in their declared order, constant `args` as keywords. An
nn.Module candidate is built once per variant under the variant's seed; a Module reference
gets the candidate's parameters (load_state_dict), a function reference gets them as
keywords (dots in names become '_').
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from gradaudit.compare import Scratch
from gradaudit.spec import Tolerance
from gradaudit.spec.op import InputDecl, OpChecks
from gradaudit.targets.op.errors import OpError
from gradaudit.targets.op.resolve import Callee
from gradaudit.targets.op.variants import Variant, draw_upstream, materialise

if TYPE_CHECKING:
    import torch


@dataclass
class OpAudit:
    """Everything a run needs, resolved: from a spec file or from check_op's arguments."""

    name: str
    candidate: Callee
    reference: Callee | None
    inputs: dict[str, InputDecl]
    variants: list[Variant]
    args: dict[str, Any] = field(default_factory=dict)
    init: dict[str, Any] = field(default_factory=dict)
    tolerance: Tolerance = field(default_factory=Tolerance)
    checks: OpChecks = field(default_factory=OpChecks)
    where: Callable[[str], str] = lambda key: "check_op"  # "file:line" of a spec key
    scratch: Scratch = field(default_factory=Scratch)


class VariantError(Exception):
    """A side failed on one variant: an error for that case only; the run goes on."""


@dataclass
class Run:
    """One side run once: outputs, and gradients w.r.t. inputs then parameters."""

    outputs: list[torch.Tensor]
    grads: dict[str, torch.Tensor]


def constants(values: Mapping[str, Any], variant: Variant, args: bool = True) -> dict[str, Any]:
    """`args` (or `init`, with `args=False`) with dim names replaced by the variant's sizes
    (`dim: D` follows D), and an argument variant's own values (they may add an argument
    the spec left out)."""
    found = {k: variant.sizes.get(v, v) if isinstance(v, str) else v for k, v in values.items()}
    return found | dict(variant.args) if args else found


def build_modules(audit: OpAudit, variant: Variant) -> tuple[Any, Any]:
    """(candidate module, reference module) in float64 on the CPU, same parameters; None
    where a side is a function."""
    import torch

    cls = audit.candidate.module_class
    ref_cls = audit.reference.module_class if audit.reference else None
    if cls is None:
        if ref_cls is not None:
            raise OpError(
                f"{audit.where('reference')}: op.reference: a Module reference "
                "needs a Module candidate"
            )
        return None, None
    init = constants(audit.init, variant, args=False)

    def build(kind: str, module_class: type) -> Any:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(variant.seed)
            try:
                return module_class(**init).double()
            except Exception as exc:
                raise OpError(
                    f"{audit.where(kind)}: op.{kind}: {module_class.__name__}"
                    f"(**init) failed: {_why(exc)}"
                ) from None

    candidate = build("candidate", cls)
    if ref_cls is None:
        return candidate, None
    reference = build("reference", ref_cls)
    try:
        reference.load_state_dict(candidate.state_dict())
    except Exception as exc:
        raise OpError(
            f"{audit.where('reference')}: op.reference: cannot take the candidate's "
            f"parameters: {_why(exc)}"
        ) from None
    return candidate, reference


def case_module(master: Any, device: str, dtype: torch.dtype) -> Any:
    return None if master is None else copy.deepcopy(master).to(device=device, dtype=dtype)


def reference_outputs(
    audit: OpAudit,
    variant: Variant,
    drawn: Mapping[str, torch.Tensor],
    masters: tuple[Any, Any],
    device: str,
    dtype: torch.dtype,
    gradients: bool = False,
) -> list[torch.Tensor]:
    """The reference's forward on one variant, built as a case builds it, and with
    `gradients` the gradients of <outputs, a random upstream> after them: the plan's probes
    (how many outputs; whether the reference takes the variant; whether it is finite)."""
    assert audit.reference is not None
    master, reference_master = masters
    module = case_module(master, device, dtype)
    params = dict(module.named_parameters()) if module is not None else {}
    reference = case_module(reference_master, device, dtype)
    inputs = make_inputs(audit, variant, drawn, dtype, device)
    call_params = None if reference is not None else params
    args = constants(audit.args, variant)
    outputs = forward(audit.reference, reference, inputs, args, call_params)
    if not gradients:
        return outputs
    ups = draw_upstream([tuple(o.shape) for o in outputs], variant)
    wrt = wrt_of(audit, inputs, dict(reference.named_parameters()) if reference else params)
    floats = [(o, u) for o, u in zip(outputs, ups, strict=True) if o.is_floating_point()]
    return outputs + list(
        backward([o for o, _ in floats], [u for _, u in floats], wrt, variant).values()
    )


def make_inputs(
    audit: OpAudit,
    variant: Variant,
    drawn: Mapping[str, torch.Tensor],
    dtype: torch.dtype,
    device: str,
    rounded_from: torch.dtype | None = None,
) -> dict[str, torch.Tensor]:
    """Fresh input tensors. `rounded_from`: round floats to that dtype first (the float64
    truth runs on float64 copies of the same rounded inputs)."""
    out = {}
    for name, decl in audit.inputs.items():
        values = drawn[name]
        floating = decl.dtype == "float"
        if floating and rounded_from is not None:
            values = values.to(rounded_from)
        out[name] = materialise(
            values,
            variant.shapes[name],
            variant.layout,
            dtype if floating else None,
            device,
            requires_grad=decl.grad,
        )
    return out


def forward(
    callee: Callee,
    module: Any,
    inputs: Mapping[str, torch.Tensor],
    args: Mapping[str, Any],
    params: Mapping[str, torch.Tensor] | None = None,
) -> list[torch.Tensor]:
    """Call one side; its outputs as a list of tensors."""
    import torch

    values = list(inputs.values())
    if module is not None:
        result = module(*values, **args)
    elif params:
        result = callee.fn(*values, **args, **{k.replace(".", "_"): p for k, p in params.items()})
    else:
        result = callee.fn(*values, **args)
    outputs = list(result) if isinstance(result, tuple | list) else [result]
    for i, out in enumerate(outputs):
        if not isinstance(out, torch.Tensor):
            raise VariantError(f"{callee.label} returned a {type(out).__name__} as output {i}")
    return outputs


def upstream(outputs: Sequence[torch.Tensor], variant: Variant) -> list[torch.Tensor | None]:
    """float64 upstream gradients for the differentiable (floating) outputs."""
    shapes = [tuple(o.shape) for o in outputs if o.is_floating_point()]
    drawn = iter(draw_upstream(shapes, variant))
    return [next(drawn) if o.is_floating_point() else None for o in outputs]


def backward(
    outputs: Sequence[torch.Tensor],
    grads64: Sequence[torch.Tensor | None],
    wrt: Mapping[str, torch.Tensor],
    variant: Variant,
    retain_graph: bool = False,
    rounded_from: torch.dtype | None = None,
) -> dict[str, torch.Tensor]:
    """Gradients of sum(<output, upstream>) w.r.t. `wrt`, upstream rounded to each output's
    dtype (or first to `rounded_from`, for the float64 truth) and laid out like the
    variant's inputs; a tensor the outputs do not reach gets zeros."""
    import torch

    def rounded(g: torch.Tensor, o: torch.Tensor) -> torch.Tensor:
        g = g.to(rounded_from) if rounded_from is not None else g
        return materialise(g, tuple(o.shape), variant.layout, o.dtype, o.device)

    pairs = [
        (o, rounded(g, o))
        for o, g in zip(outputs, grads64, strict=True)
        if g is not None and o.requires_grad
    ]
    if not wrt:
        return {}
    if not pairs:
        return {k: torch.zeros_like(t) for k, t in wrt.items()}
    found = torch.autograd.grad(
        [o for o, _ in pairs],
        list(wrt.values()),
        [g for _, g in pairs],
        allow_unused=True,
        retain_graph=retain_graph,
    )
    return {
        k: torch.zeros_like(t) if g is None else g
        for (k, t), g in zip(wrt.items(), found, strict=True)
    }


def differentiate(
    run: Run,
    ups: Sequence[torch.Tensor | None],
    variant: Variant,
    kind: str = "candidate",
    rounded_from: torch.dtype | None = None,
) -> Run:
    """`run` with its `grads` (the tensors to differentiate) replaced by their gradients."""
    grads = guarded(kind, backward, run.outputs, ups, run.grads, variant, rounded_from=rounded_from)
    return Run(run.outputs, grads)


def wrt_of(
    audit: OpAudit, inputs: Mapping[str, torch.Tensor], params: Mapping[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """`grad.<input>` for inputs that require grad, then `grad.<parameter>`."""
    wrt = {f"grad.{k}": t for k, t in inputs.items() if audit.inputs[k].grad}
    for name, p in params.items():
        key = f"grad.{name}"
        if key in wrt:
            raise OpError(
                f"{audit.where('inputs')}: op.inputs: input '{name}' has the name of "
                "a parameter of the candidate module"
            )
        wrt[key] = p
    return wrt


def guarded(kind: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """fn(*args, **kwargs); a side that raises is an error for this variant only."""
    try:
        return fn(*args, **kwargs)
    except (OpError, KeyboardInterrupt):
        raise
    except VariantError as exc:
        raise VariantError(f"{kind}: {exc}") from None
    except ImportError as exc:  # this machine lacks what the op needs: no variant can run
        raise OpError(f"op.{kind} cannot run here: {_why(exc)}") from None
    except Exception as exc:
        if _interpreter_limit(exc):
            text = f"Triton's interpreter cannot run this kernel: {_why(exc)}"
            raise VariantError(f"{kind}: {text}") from None
        raise VariantError(f"{kind} raised {_why(exc)}") from None


def _interpreter_limit(exc: BaseException) -> bool:
    """Triton's interpreter (TRITON_INTERPRET=1) refused the kernel: a limit of the
    interpreter, not a wrong gradient (on a GPU the same kernel may run)."""
    kind = type(exc)
    return kind.__name__ == "InterpreterError" and kind.__module__.startswith("triton")


def output_names(count: int) -> list[str]:
    return ["out"] if count == 1 else [f"out.{i}" for i in range(count)]


def _why(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__
