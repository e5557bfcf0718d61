"""The numpy adapter: min-char-rnn's hand-written BPTT audited as written, clipping included."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch
import yaml

from gradaudit import Forward
from gradaudit.numpy_adapter import NumpyGradients, from_numpy
from gradaudit.targets.values.check import check
from tests import minchar_rnn
from tests.conftest import CliRunner, small_spec
from tests.minchar_rnn import MinCharRNN, numpy_bptt, sequence

V, H, T = 6, 16, 25
CLIP = [{"clip": 5.0, "tensors": ["*"]}]
PARAMS = ("Wxh", "Whh", "Why", "bh", "by")


def build(dtype: torch.dtype, recurrent: bool = True) -> tuple[Any, ...]:
    torch.manual_seed(0)
    model = MinCharRNN(V, H).to(dtype)
    inputs, targets = sequence(V, T, seed=1)
    batch = SimpleNamespace(tensors={"inputs": inputs, "targets": targets}, index=0, seed=1)
    forward = model(**batch.tensors)
    with torch.no_grad():
        grads = numpy_bptt(H, recurrent)(model, batch, forward.detached())
    return forward.loss, dict(model.named_parameters()), grads


def statuses(result: Any) -> dict[str, str]:
    return {t.name: t.status for t in result.tensors}


def test_minchar_rnn_with_declared_clipping_passes_as_written() -> None:
    loss, params, grads = build(torch.float64)
    result = check(loss, params, grads, postprocess=CLIP, print_table=False)
    assert statuses(result) == dict.fromkeys(PARAMS, "pass"), result
    assert result.ok


def test_without_declared_clipping_the_clipped_tensor_fails() -> None:
    loss, params, grads = build(torch.float64)
    # The data makes autograd's dby pass -5, as on real text.
    assert float(torch.autograd.grad(loss, params["by"], retain_graph=True)[0].min()) < -5
    result = check(loss, params, grads, print_table=False)
    assert statuses(result) == {"Wxh": "pass", "Whh": "pass", "Why": "pass", "bh": "pass",
                                "by": "fail"}  # fmt: skip
    assert not result.ok


def test_dropped_recurrent_term_fails_even_with_clipping() -> None:
    loss, params, grads = build(torch.float64, recurrent=False)
    result = check(loss, params, grads, postprocess=CLIP, print_table=False)
    assert statuses(result) == {"Wxh": "fail", "Whh": "fail", "Why": "pass", "bh": "fail",
                                "by": "pass"}  # fmt: skip


def test_bfloat16_case_says_it_computed_in_float64_and_is_not_a_pass() -> None:
    result = check(
        build=build, dtypes=[torch.float64, torch.bfloat16], postprocess=CLIP, print_table=False
    )
    for name in PARAMS:
        assert result[name, "float64"].status == "pass"
        bf16 = result[name, "bfloat16"]
        assert bf16.status == "error"
        assert "computed in float64, not bfloat16" in bf16.message
    assert "computed in float64" in result.table
    assert not result.ok


def test_adapter_records_the_dtype_of_the_returned_arrays() -> None:
    _, _, grads = build(torch.float64)
    assert isinstance(grads, NumpyGradients)
    assert grads.computed_in == dict.fromkeys(PARAMS, "float64")
    assert all(g.dtype == torch.float64 for g in grads.values())  # never cast to the case dtype


class Linear(torch.nn.Module):
    """loss = sum over rows of sum((x W)^2): per-row gradients add up."""

    def __init__(self) -> None:
        super().__init__()
        self.W = torch.nn.Parameter(torch.randn(3, 2, dtype=torch.float64))

    def forward(self, x: torch.Tensor) -> Forward:
        return Forward(((x @ self.W) ** 2).sum())


def linear_case(fn: Any, **kwargs: Any) -> Any:
    torch.manual_seed(0)
    model = Linear()
    x = torch.randn(4, 3, dtype=torch.float64)
    batch = SimpleNamespace(tensors={"x": x})
    forward = model(x)
    grads = from_numpy(fn, **kwargs)(model, batch, forward.detached())
    return check(forward.loss, {"W": model.W}, grads, print_table=False)


def row_grad(p: dict[str, Any], row: dict[str, Any]) -> dict[str, Any]:
    x = row["x"][None, :]
    return {"W": 2 * x.T @ (x @ p["W"])}


def test_per_row_sum_is_right_and_mean_is_caught() -> None:
    assert linear_case(row_grad, per_row=True, combine="sum").ok
    result = linear_case(row_grad, per_row=True, combine="mean")
    assert result["W"].status == "fail"


def test_whole_batch_function() -> None:
    result = linear_case(lambda p, d: {"W": 2 * d["x"].T @ (d["x"] @ p["W"])})
    assert result.ok


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (np.full((3, 2), np.nan), "has 6 non-finite values (NaN/Inf)"),
        (np.ones((3, 2), dtype=np.int64), "is a int64 array, not floating point"),
        ("abc", "not floating point"),
        (np.ones((2, 3)), "gradient has shape (2, 3), autograd's is (3, 2)"),
        (np.ones(2 * 3), "gradient has shape (6,), autograd's is (3, 2)"),
    ],
)
def test_bad_arrays_are_per_tensor_errors(value: Any, message: str) -> None:
    result = linear_case(lambda p, d: {"W": value})
    assert result["W"].status == "error"
    assert message in result["W"].message


def test_rows_of_different_shapes_are_an_error() -> None:
    def ragged(p: dict[str, Any], row: dict[str, Any]) -> dict[str, Any]:
        return {"W": np.ones((3, 2)) if row["x"][0] > 0 else np.ones((2, 3))}

    torch.manual_seed(0)
    x = torch.tensor([[1.0, 0, 0], [-1.0, 0, 0]], dtype=torch.float64)
    grads = from_numpy(ragged, per_row=True, combine="sum")(
        Linear(), SimpleNamespace(tensors={"x": x}), Forward(torch.zeros(()))
    )
    assert "W" in grads.problems and "W" not in grads
    assert "has shapes [(2, 3), (3, 2)] across rows" in grads.problems["W"]


def test_options_reach_the_function_and_older_batches_work() -> None:
    seen: dict[str, Any] = {}

    def fn(p: dict[str, Any], d: dict[str, Any], *, scale: float) -> dict[str, Any]:
        seen.update(d, scale=scale)
        return {"W": np.zeros((3, 2))}

    old_batch = SimpleNamespace(inputs=torch.ones(2, 3), targets=torch.zeros(2))
    from_numpy(fn)(Linear(), old_batch, Forward(torch.zeros(())), scale=0.5)
    assert seen["scale"] == 0.5 and set(seen) == {"inputs", "targets", "scale"}


def test_usage_errors() -> None:
    with pytest.raises(ValueError, match="combine="):
        from_numpy(row_grad, per_row=True)
    fn = from_numpy(lambda p, d: (np.ones(1),), names=("a", "b"))
    with pytest.raises(ValueError, match="returned 1 values for 2 names"):
        fn(Linear(), SimpleNamespace(tensors={}), Forward(torch.zeros(())))
    fn = from_numpy(lambda p, d: [np.ones(1)])
    with pytest.raises(TypeError, match="not a mapping"):
        fn(Linear(), SimpleNamespace(tensors={}), Forward(torch.zeros(())))


def test_the_runner_never_passes_a_bfloat16_case_computed_in_float64(
    tmp_path: Path, run_cli: CliRunner
) -> None:
    """Through `gradaudit run`, wired or not: the bfloat16 case is an error for every tensor
    (until the runner reads `computed_in` it is a dtype mismatch; after, "computed in")."""
    spec = small_spec(
        plugins=[str(Path(minchar_rnn.__file__))],
        model={"plugin": "minchar-rnn", "options": {"hidden_size": H}},
        gradients={"plugin": "minchar-numpy"},
        data={"plugin": "text", "options": {"source": "builtin", "block_size": 10}},
        batches={"split": "train", "count": 2, "size": 1, "seed": 3},
        dtypes=["float64", "bfloat16"],
    )
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec), encoding="utf-8")
    done = run_cli("run", path, "--json", tmp_path / "out.json", cwd=tmp_path)
    assert done.returncode == 1, done.stdout + done.stderr
    groups = json.loads((tmp_path / "out.json").read_text())["groups"]
    status = {(g["dtype"], t["tensor"]): t["status"] for g in groups for t in g["tensors"]}
    assert {s for (dtype, _), s in status.items() if dtype == "bfloat16"} == {"error"}
    assert {s for (dtype, _), s in status.items() if dtype == "float64"} == {"pass"}
    assert len(status) == 2 * len(PARAMS)
