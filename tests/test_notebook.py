"""gradaudit.check: the notebook one-liner. Each check that must catch a bug has a test that
it does, next to one that it stays quiet on correct code."""

from __future__ import annotations

import io
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest
import torch

import gradaudit
from gradaudit.targets.values.check import check


def layer(dtype: torch.dtype = torch.float32, seed: int = 0) -> dict[str, Any]:
    """A tanh layer with its hand-written backward, as a notebook's locals()."""
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(3, 4, generator=g, dtype=torch.float64).to(dtype).requires_grad_()
    b = torch.randn(1, 4, generator=g, dtype=torch.float64).to(dtype).requires_grad_()
    x = torch.randn(5, 3, generator=g, dtype=torch.float64).to(dtype)
    h = torch.tanh(x @ W + b)
    loss = (h * h).sum()
    with torch.no_grad():
        dh = 2 * h
        dpre = dh * (1 - h * h)
        dW = x.T @ dpre
        db = dpre.sum(0, keepdim=True)
    return locals()


def quiet(*args: Any, **kwargs: Any) -> Any:
    return check(*args, print_table=False, **kwargs)


def names(result: Any) -> dict[str, str]:
    return {t.name: t.status for t in result.tensors}


def test_prefix_pairing_passes_correct_code() -> None:
    ns = layer()
    result = quiet(ns["loss"], namespace=ns, prefix="d", ignore=["dpre"])
    assert names(result) == {"h": "pass", "W": "pass", "b": "pass"}
    assert result.ok


def test_broadcast_hidden_shape_mismatch_is_an_error() -> None:
    ns = layer()
    ns["db"] = ns["db"].reshape(4)  # (4,) vs (1, 4): equal after broadcasting
    assert torch.allclose(ns["db"], torch.autograd.grad(ns["loss"], ns["b"], retain_graph=True)[0])
    result = quiet(ns["loss"], namespace=ns, ignore=["dpre"])
    assert result["b"].status == "error"
    assert result["b"].message == "gradient has shape (4,), autograd's is (1, 4)"
    assert not result.ok


def test_a_wrong_gradient_fails_and_says_by_how_much() -> None:
    ns = layer()
    ns["dW"] = ns["dW"] * 1.001
    result = quiet(ns["loss"], {"W": ns["W"], "b": ns["b"]}, {"W": ns["dW"], "b": ns["db"]})
    assert names(result) == {"W": "fail", "b": "pass"}
    assert result["W"].budget > 1 and result["W"].max_abs > 0
    assert "beyond allclose" in result["W"].message


def test_an_unpairable_name_is_reported_by_name() -> None:
    ns = layer()
    result = quiet(ns["loss"], namespace=ns)
    assert result["dpre"].status == "error"
    assert "there is no tensor 'pre'" in result["dpre"].message
    extra = quiet(ns["loss"], {"W": ns["W"]}, {"W": ns["dW"], "Wt": ns["dW"]})
    assert names(extra) == {"W": "pass", "Wt": "error"}
    assert "no tensor of that name" in extra["Wt"].message
    missing = quiet(ns["loss"], {"W": ns["W"], "b": ns["b"]}, {"W": ns["dW"]})
    assert missing["b"].message == "no manual gradient"


def test_a_tensor_that_does_not_require_grad_is_reported_by_name() -> None:
    ns = layer()
    result = quiet(ns["loss"], {"x": ns["x"], "W": ns["W"]}, {"x": ns["dW"], "W": ns["dW"]})
    assert result["x"].status == "error"
    assert result["x"].message == "'x' does not require grad: autograd has no gradient for it"
    assert result["W"].status == "pass"


def test_a_stale_tensor_outside_the_graph_is_an_error() -> None:
    ns, old = layer(), layer()
    result = quiet(ns["loss"], {"W": old["W"]}, {"W": old["dW"]})
    assert "not part of the loss's graph" in result["W"].message


def test_list_rows_are_named_by_the_callers_variables() -> None:
    """check(loss, [W, b], [dW, db]) names its rows W and b, as a notebook's cmp does by hand;
    a tensor given twice, or found under no name (as through a wrapper), keeps tensors[i]."""
    ns = layer()
    W, b, dW, db = ns["W"], ns["b"], ns["dW"], ns["db"]
    named = check(ns["loss"], [W, b], [dW, db], print_table=False)
    assert names(named) == {"W": "pass", "b": "pass"}
    twice = check(ns["loss"], [W, W], [dW, dW], print_table=False)
    assert names(twice) == {"tensors[0]": "pass", "tensors[1]": "pass"}


def test_positional_pairs_and_the_graph_is_kept() -> None:
    ns = layer()
    result = quiet(ns["loss"], [ns["W"], ns["b"]], [ns["dW"], ns["db"]])
    assert names(result) == {"tensors[0]": "pass", "tensors[1]": "pass"}
    ns["loss"].backward()  # retain_graph: the notebook can still call backward
    assert ns["W"].grad is not None


def test_raise_on_failure() -> None:
    ns = layer()
    quiet(ns["loss"], {"W": ns["W"]}, {"W": ns["dW"]}, raise_on_failure=True)
    with pytest.raises(AssertionError, match=r"W \[cpu, float32\]: fail"):
        quiet(ns["loss"], {"W": ns["W"]}, {"W": -ns["dW"]}, raise_on_failure=True)


def test_prints_the_table_and_repr_is_the_table() -> None:
    ns = layer()
    out = io.StringIO()
    result = check(ns["loss"], {"W": ns["W"]}, {"W": ns["dW"].T.contiguous()}, out=out)
    text = out.getvalue()
    assert text.startswith("device   dtype     tensor")
    assert "--- ERROR cpu/float32 W: gradient has shape (4, 3), autograd's is (3, 4)" in text
    assert "0 passed, 0 failed, 1 errors" in text
    assert repr(result) == text.rstrip("\n")


def test_junit_has_one_testcase_per_tensor(tmp_path: Path) -> None:
    ns = layer()
    path = tmp_path / "out" / "check.xml"
    grads = {"W": ns["dW"], "b": ns["db"].reshape(4), "h": -ns["dh"]}
    quiet(ns["loss"], {"W": ns["W"], "b": ns["b"], "h": ns["h"]}, grads, junit_xml=str(path))
    root = ET.parse(path).getroot()
    cases = {c.get("name"): c for c in root.iter("testcase")}
    assert set(cases) == {"W", "b", "h"}
    assert cases["W"].find("failure") is None and cases["W"].find("error") is None
    assert cases["b"].find("error") is not None
    assert cases["h"].find("failure") is not None
    assert root.get("tests") == "3" and root.get("failures") == "1" and root.get("errors") == "1"


def build_layer(dtype: torch.dtype) -> tuple[Any, Any]:
    ns = layer(dtype)
    return ns["loss"], {k: ns[k] for k in ("h", "W", "b", "dh", "dW", "db")}


def test_dtypes_rerun_build_against_a_float64_truth() -> None:
    result = quiet(build=build_layer, dtypes=[torch.float32, torch.bfloat16, torch.float16])
    assert result.ok, result
    assert {t.dtype for t in result.tensors} == {"float32", "bfloat16", "float16"}
    # auto: baseline against a float64 run of build in the low precisions
    assert result["W", "bfloat16"].tolerance.startswith("baseline")
    assert result["W", "float32"].tolerance.startswith("baseline")


def test_each_low_precision_case_has_its_own_truth_at_its_rounded_values() -> None:
    calls: list[torch.dtype] = []

    def counted(dtype: torch.dtype) -> tuple[Any, Any]:
        calls.append(dtype)
        return build_layer(dtype)

    result = quiet(build=counted, dtypes=[torch.bfloat16, torch.float64])
    assert result.ok, result
    # bfloat16, its truth (float64 at bfloat16's values: rounding.py), then float64 itself
    assert calls == [torch.bfloat16, torch.float64, torch.float64]


def test_dtypes_catch_a_bug_in_every_dtype() -> None:
    def wrong(dtype: torch.dtype) -> tuple[Any, Any]:
        loss, ns = build_layer(dtype)
        return loss, {**ns, "dW": ns["dW"] * 1.1}

    result = quiet(build=wrong, dtypes=["float32", "bfloat16"])
    assert {t.dtype: t.status for t in result.tensors if t.name == "W"} == {
        "float32": "fail",
        "bfloat16": "fail",
    }


def test_a_build_that_ignores_the_dtype_is_an_error() -> None:
    def stuck(dtype: torch.dtype) -> tuple[Any, Any]:
        return build_layer(torch.float32)

    result = quiet(build=stuck, dtypes=[torch.bfloat16], tolerance="allclose")
    assert result["W"].status == "error"
    assert "build(bfloat16) gave 'W' in float32" in result["W"].message


def test_float64_grads_for_float32_tensors_are_an_error() -> None:
    ns = layer()
    result = quiet(ns["loss"], {"W": ns["W"]}, {"W": ns["dW"].double()})
    assert result["W"].message == "gradient has dtype torch.float64, autograd's is torch.float32"


def test_numpy_array_gradients_record_their_dtype() -> None:
    ns = layer(torch.float64)
    assert quiet(ns["loss"], {"W": ns["W"]}, {"W": ns["dW"].numpy()}).ok
    ns = layer(torch.float32)
    result = quiet(ns["loss"], {"W": ns["W"]}, {"W": ns["dW"].double().numpy()})
    assert "computed in float64, not float32" in result["W"].message


def test_exact_mode_catches_a_one_ulp_difference() -> None:
    ns = layer()
    bumped = torch.nextafter(ns["dW"], torch.full_like(ns["dW"], 10.0))
    assert quiet(ns["loss"], {"W": ns["W"]}, {"W": bumped}).ok  # allclose
    assert not quiet(ns["loss"], {"W": ns["W"]}, {"W": bumped}, tolerance="exact").ok


def test_declared_clipping_applies_to_autograd_and_saturation_is_an_error() -> None:
    ns = layer()
    clipped = ns["dW"].clamp(-0.5, 0.5)
    assert not quiet(ns["loss"], {"W": ns["W"]}, {"W": clipped}).ok
    rules = [{"clip": 0.5, "tensors": ["W"]}]
    assert quiet(ns["loss"], {"W": ns["W"]}, {"W": clipped}, postprocess=rules).ok
    tiny = [{"clip": 1e-9}]
    result = quiet(ns["loss"], {"W": ns["W"]}, {"W": ns["dW"].clamp(-1e-9, 1e-9)}, postprocess=tiny)
    assert result["W"].status == "error"
    assert "only signs would be compared" in result["W"].message


@pytest.mark.parametrize(
    ("args", "kwargs", "message"),
    [
        ("", {}, "give a loss"),
        ("l", {}, "give tensors and grads"),
        ("ltg", {"tolerance": "baseline"}, "pass build=fn"),
        ("l", {"dtypes": ["float32"]}, "pass build= instead of loss"),
        ("ltg", {"tolerance": "roughly"}, "mode"),
        ("ltg", {"postprocess": [{"clip": 1, "scale": 2}]}, "exactly one"),
        ("ltg", {"postprocess": [{"scale": 0}]}, "non-zero"),
        ("", {"build": build_layer, "dtypes": ["int8"]}, "dtypes must be among"),
    ],
)
def test_usage_errors_raise_value_error(args: str, kwargs: dict[str, Any], message: str) -> None:
    ns = layer()
    given = {"l": ns["loss"], "t": {"W": ns["W"]}, "g": {"W": ns["dW"]}}
    with pytest.raises(ValueError, match=message):
        quiet(*(given[a] for a in args), **kwargs)


def test_check_is_exported_lazily_and_import_stays_torch_free() -> None:
    assert gradaudit.check is check
    code = "import sys, gradaudit, gradaudit.targets.values.check; print('torch' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False"


def _tanh_graph() -> tuple[torch.Tensor, dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """loss = sum(tanh(x @ w)^2) with h = x @ w kept, and the hand-written gradients."""
    x = torch.randn(4, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    w = torch.randn(3, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    x.requires_grad_()
    w.requires_grad_()
    h = x @ w
    loss = (h.tanh() ** 2).sum()
    dh = (2 * h.tanh() * (1 - h.tanh() ** 2)).detach()
    return loss, {"h": h, "w": w, "x": x}, {"h": dh, "w": x.detach().T @ dh, "x": dh @ w.T}


def test_check_after_loss_backward_uses_the_grads_it_left() -> None:
    """A notebook that already called loss.backward() (its `cmp` reads .grad): check compares
    with those .grad instead of autograd's raw "backward through the graph a second time"."""
    loss, tensors, grads = _tanh_graph()
    tensors["h"].retain_grad()
    loss.backward()  # type: ignore[no-untyped-call]
    assert check(loss, tensors, grads, print_table=False).ok
    wrong = {**grads, "w": grads["w"] * 1.01}
    result = check(loss, tensors, wrong, print_table=False)
    assert not result.ok and result["w"].status == "fail" and result["h"].status == "pass"


def test_check_after_loss_backward_without_a_grad_says_how_to_call_it() -> None:
    loss, tensors, grads = _tanh_graph()
    loss.backward()  # type: ignore[no-untyped-call]  # h (not a leaf) kept no .grad
    with pytest.raises(ValueError, match=r"left no \.grad on h: call gradaudit.check before"):
        check(loss, tensors, grads, print_table=False)
