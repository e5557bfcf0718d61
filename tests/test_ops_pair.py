"""A hand-written forward/backward pair (llm.c style: `forward(...) -> (out, cache)`,
`backward(dout, cache) -> gradients`) audited without writing an autograd.Function: from
check_op as a tuple, from a spec as `candidate: {forward:, backward:}`."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F

from gradaudit.targets.op.api import check_op
from tests.conftest import run_gradaudit

PAIR = """
import torch


def forward(x, w, b, eps=1e-5):
    mean = x.mean(-1, keepdim=True)
    rstd = ((x - mean) ** 2).mean(-1, keepdim=True).add(eps).rsqrt()
    xhat = (x - mean) * rstd
    return xhat * w + b, (xhat, w, rstd)


def backward(dout, cache):
    xhat, w, rstd = cache
    g = dout * w
    dx = rstd * (g - g.mean(-1, keepdim=True) - xhat * (g * xhat).mean(-1, keepdim=True))
    rows = xhat.shape[-1]
    return dx, (dout * xhat).reshape(-1, rows).sum(0), dout.reshape(-1, rows).sum(0)


def backward_half_db(dout, cache):
    dx, dw, db = backward(dout, cache)
    return dx, dw, db * 0.5


def reference(x, w, b, eps=1e-5):
    return torch.nn.functional.layer_norm(x, (x.shape[-1],), w, b, eps)
"""
INPUTS = {"x": (8, 16), "w": (16,), "b": (16,)}


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The module above, imported from its file as a user's would be."""
    path = tmp_path_factory.mktemp("pair") / "ln_pair.py"
    path.write_text(PAIR, "utf-8")
    spec = importlib.util.spec_from_file_location("ln_pair", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return vars(module)


def reference(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor, eps: float = 1e-5) -> Any:
    return F.layer_norm(x, (x.shape[-1],), w, b, eps)


def test_a_correct_pair_is_green_and_a_wrong_gradient_is_red(pair: dict[str, Any]) -> None:
    good = check_op((pair["forward"], pair["backward"]), reference, inputs=INPUTS)
    assert good.ok and good.plan is not None
    assert good.plan.header.startswith("op forward + backward, 14 variants")
    bad = check_op(
        (pair["forward"], pair["backward_half_db"]), reference, inputs=INPUTS,
        raise_on_failure=False,
    )  # fmt: skip
    red = {s.tensor for g in bad.groups for s in g.tensors if s.status != "pass"}
    assert red == {"grad.b"}


@pytest.mark.parametrize(
    ("backward", "says"),
    [
        (lambda dout, cache: (dout, dout), "backward returned 2 gradients for forward's 3"),
        (lambda dout, cache: dout, "backward returned 1 gradients for forward's 3"),
    ],
)
def test_a_pair_that_breaks_its_contract_is_an_error_saying_how(
    pair: dict[str, Any], backward: Any, says: str
) -> None:
    result = check_op((pair["forward"], backward), reference, inputs=INPUTS, variants=False,
                      dtypes=["float64"], raise_on_failure=False)  # fmt: skip
    errors = [s.errors[0] for g in result.groups for s in g.tensors if s.status == "error"]
    assert errors and all(says in e for e in errors)
    only_out = check_op(
        (lambda x, w, b: x * w + b, pair["backward"]), reference, inputs=INPUTS,
        variants=False, dtypes=["float64"], raise_on_failure=False,
    )  # fmt: skip
    assert "forward must return (out, cache), not a Tensor" in only_out.report()


def test_a_spec_names_the_pair(tmp_path: Path) -> None:
    (tmp_path / "ln_pair.py").write_text(PAIR, "utf-8")
    spec = """\
name: ln-pair
op:
  candidate: {forward: ln_pair:forward, backward: ln_pair:BACKWARD}
  reference: ln_pair:reference
  inputs: {x: {shape: [8, 16]}, w: {shape: [16]}, b: {shape: [16]}}
dtypes: [float64, float32]
"""
    (tmp_path / "good.yaml").write_text(spec.replace("BACKWARD", "backward"), "utf-8")
    (tmp_path / "bad.yaml").write_text(spec.replace("BACKWARD", "backward_half_db"), "utf-8")
    (tmp_path / "typo.yaml").write_text(spec.replace("BACKWARD", "backwards"), "utf-8")
    good = run_gradaudit("run", "good.yaml", "-q", cwd=tmp_path)
    assert good.returncode == 0, good.stdout + good.stderr
    bad = run_gradaudit("run", "bad.yaml", "--json", "bad.json", cwd=tmp_path)
    assert bad.returncode == 1, bad.stdout + bad.stderr
    assert "op ln_pair:forward + ln_pair:backward_half_db" in bad.stdout.splitlines()[0]
    typo = run_gradaudit("run", "typo.yaml", cwd=tmp_path)
    assert typo.returncode == 2
    assert "typo.yaml:3: op.candidate.backward: 'ln_pair:backwards' has no attribute" in typo.stderr
