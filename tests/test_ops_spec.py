"""Op specs: validation with `file:line: field: msg` errors, and resolving the candidate and
reference (import paths, plugin-registered names) with one-line errors that exit 2."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from gradaudit.errors import EXIT_USAGE, GradauditError, SpecError
from gradaudit.spec import load_spec as load_op_spec
from gradaudit.spec import peek_kind
from gradaudit.spec.load import parse
from gradaudit.targets.op.errors import OpError
from gradaudit.targets.op.load import audit_of
from gradaudit.targets.op.resolve import named_ops, resolve


def parse_op_spec(text: str, where: str) -> tuple[Any, Any]:
    spec, lines, _ = parse(text, where)
    return spec, lines


def is_op_spec(path: Path) -> bool:
    return peek_kind(path) == "op"


REPO = Path(__file__).resolve().parents[1]
SHIPPED = ["op-rmsnorm", "op-softmax-xent"]
# Lines 1-5; whatever a test appends starts on line 6.
BASE = """name: demo
op:
  candidate: gradaudit_ops.rmsnorm:rmsnorm
  reference: gradaudit_ops.rmsnorm:rmsnorm_reference
  inputs:
"""


def errors(text: str) -> list[str]:
    with pytest.raises(SpecError) as info:
        parse_op_spec(text, "s.yaml")
    assert info.value.exit_code == EXIT_USAGE
    return str(info.value).splitlines()


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_op_specs_validate_in_at_most_15_lines(name: str) -> None:
    path = REPO / "specs" / f"{name}.yaml"
    assert len(path.read_text().splitlines()) <= 15
    loaded = load_op_spec(path)
    assert loaded.spec.name == name
    assert loaded.spec.dtypes == ["float64", "float32", "bfloat16", "float16"]
    assert loaded.spec.tolerance.mode == "auto" and not loaded.spec.tolerance.overrides
    assert is_op_spec(path)


def test_model_specs_are_not_op_specs(tmp_path: Path) -> None:
    assert not is_op_spec(REPO / "specs" / "charrnn.yaml")
    assert not is_op_spec(tmp_path / "missing.yaml")
    broken = tmp_path / "broken.yaml"
    broken.write_text("op: [\n")
    assert not is_op_spec(broken)  # the model-spec loader then reports the YAML error


def test_defaults() -> None:
    spec, _ = parse_op_spec(BASE + "    x: {shape: [4, 8]}\n", "s.yaml")
    decl = spec.op.inputs["x"]
    assert (decl.dtype, decl.kind, decl.grad) == ("float", "normal", True)
    assert spec.dtypes == ["float64", "float32"] and spec.devices == ["cpu"]
    assert spec.op.variant_options is not None and not spec.op.variant_options.extreme
    assert spec.op.checks.micro_batch is None and spec.op.checks.saved_tensors is None


def test_integer_inputs_default_to_randint_without_grad() -> None:
    text = BASE + "    t: {shape: [N], dtype: int64, high: V}\n  dims: {N: 4, V: 9}\n"
    decl = parse_op_spec(text, "s.yaml")[0].op.inputs["t"]
    assert (decl.kind, decl.grad) == ("randint", False)


@pytest.mark.parametrize(
    ("line", "message"),
    [
        (
            "    t: {shape: [4], dtype: int64, requires_grad: true}",
            "s.yaml:6: op.inputs.t: an integer input (int64) cannot require grad",
        ),
        (
            "    t: {shape: [4], dtype: int64}",
            "s.yaml:6: op.inputs.t: randint needs `high` (exclusive; a number or a dim name)",
        ),
        (
            "    x: {shape: [4], distribution: randint, high: 3}",
            "s.yaml:6: op.inputs.x: randint draws integers: give an integer dtype",
        ),
        (
            "    x: {shape: [4], distribution: uniform, std: 2.0}",
            "s.yaml:6: op.inputs.x: mean and std belong to normal, not uniform",
        ),
        ("    x: {shape: [N, 8]}", "s.yaml:6: op.inputs.x.shape: N not in dims (none)"),
        (
            "    x: {shape: [0]}",
            "s.yaml:6: op.inputs.x.shape.0: Input should be greater than or equal to 1",
        ),
        (
            "    x: {shape: [4], dtyp: float}",
            "s.yaml:6: op.inputs.x.dtyp: unknown key (did you mean 'dtype'?)",
        ),
    ],
)
def test_input_errors_name_the_line(line: str, message: str) -> None:
    assert errors(BASE + line + "\n") == [message]


def test_one_line_per_problem_and_union_members_merged() -> None:
    text = BASE + "    x: {shape: [4]}\n  variants: {sizez: true}\ndevices: [gpu]\n"
    assert errors(text) == [
        "s.yaml:7: op.variants.sizez: unknown key (did you mean 'sizes'?)",
        "s.yaml:8: devices.0: not a device: expected cpu, cuda, cuda:N, mps, xpu or xpu:N",
    ]
    assert errors(BASE + "    x: {shape: [4]}\n  variants: 3\n") == [
        "s.yaml:7: op.variants: Input should be a valid boolean or Input should be a valid "
        "dictionary or instance of Variants"
    ]


def test_yaml_problems_use_the_model_spec_messages(tmp_path: Path) -> None:
    assert errors("name: [\n")[0].startswith("s.yaml:2: not valid YAML")
    assert errors("") == ["s.yaml:1: the spec is empty"]
    assert errors(BASE + "    x: {shape: [4]}\n    x: {shape: [5]}\n") == [
        "s.yaml:7: op.inputs.x: duplicate key"
    ]
    with pytest.raises(SpecError, match="cannot read spec"):
        load_op_spec(tmp_path / "missing.yaml")


def write(tmp_path: Path, candidate: str, reference: str = "rmsnorm-reference") -> Path:
    path = tmp_path / "op.yaml"
    path.write_text(
        f"name: t\nop:\n  candidate: '{candidate}'\n  reference: '{reference}'\n"
        "  inputs:\n    x: {shape: [4, 8]}\n    w: {shape: [8]}\n"
    )
    return path


@pytest.mark.parametrize(
    ("candidate", "message"),
    [
        (
            "no_such_module:fn",
            "op.yaml:3: op.candidate: cannot import 'no_such_module' "
            "(ModuleNotFoundError: No module named 'no_such_module')",
        ),
        (
            "gradaudit_ops.rmsnorm:rmsnrm",
            "op.yaml:3: op.candidate: 'gradaudit_ops.rmsnorm:rmsnrm' has no attribute 'rmsnrm' "
            "(did you mean 'rmsnorm'?)",
        ),
        (
            "gradaudit_ops.rmsnorm:",
            "op.yaml:3: op.candidate: 'gradaudit_ops.rmsnorm:' is not module.path:attribute",
        ),
        ("rmsnrm", "op.yaml:3: op.candidate: no op named 'rmsnrm' (did you mean 'rmsnorm'?)"),
    ],
)
def test_candidates_that_do_not_resolve(tmp_path: Path, candidate: str, message: str) -> None:
    with pytest.raises(OpError) as info:
        audit_of(load_op_spec(write(tmp_path, candidate)))
    text = str(info.value)
    assert "\n" not in text and info.value.exit_code == EXIT_USAGE
    assert text.startswith(str(tmp_path / message))


def test_a_reference_that_does_not_import_names_its_line(tmp_path: Path) -> None:
    with pytest.raises(OpError, match=r"op\.yaml:4: op\.reference: cannot import 'nope'"):
        audit_of(load_op_spec(write(tmp_path, "rmsnorm", "nope:ref")))


def test_registered_names_and_function_classes_resolve(tmp_path: Path) -> None:
    from gradaudit_ops import OPS
    from gradaudit_ops.rmsnorm import RMSNormFunction

    assert set(OPS) <= set(named_ops())
    audit = audit_of(load_op_spec(write(tmp_path, "gradaudit_ops.rmsnorm:RMSNormFunction")))
    assert audit.candidate.module_class is None
    assert audit.reference is not None and audit.reference.fn is OPS["rmsnorm-reference"]
    # Fn.apply takes keywords and fills in forward's defaults (apply alone does not)
    apply = resolve(RMSNormFunction.apply, "t", "candidate").fn
    import torch

    x, w = torch.randn(2, 3, dtype=torch.float64), torch.ones(3, dtype=torch.float64)
    assert torch.equal(apply(x, w), apply(x, weight=w, eps=1e-6))


def test_the_allow_list_hides_plugin_ops(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GRADAUDIT_PLUGINS", "charrnn")
    assert "rmsnorm" not in named_ops()
    with pytest.raises(OpError, match="no op named 'rmsnorm'; registered: none"):
        resolve("rmsnorm", "s.yaml:3", "op.candidate")


def test_errors_are_gradaudit_errors() -> None:
    assert issubclass(OpError, GradauditError) and OpError.exit_code == EXIT_USAGE


def test_loading_an_op_spec_does_not_import_torch() -> None:
    code = (
        "import sys; from gradaudit.spec import load_spec; "
        f"load_spec({str(REPO / 'specs' / 'op-rmsnorm.yaml')!r}); "
        "assert 'torch' not in sys.modules, 'torch imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
