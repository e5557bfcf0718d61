"""OpInfo's samples as an opt-in variant source (issue 28 item 3): `variants: {opinfo: NAME}`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from gradaudit import check_op
from gradaudit.targets.op.errors import OpSpecError
from tests.conftest import run_gradaudit
from tests.test_op_arguments import _failing

pytest.importorskip("expecttest")  # torch's OpInfo database needs it (the dev extras)
OPINFO = {"opinfo": "cumprod", "zeros": False, "sizes": False, "leading": 0,
          "layouts": False, "long": False, "arguments": False}  # fmt: skip


def cumprod(x: torch.Tensor, dim: int = -1) -> torch.Tensor:
    return torch.cumprod(x, dim)


class DividingCumProd(torch.autograd.Function):
    """The bug: d y_k / d x_i = y_k / x_i, inf or NaN at an exact zero."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, dim: int = -1) -> torch.Tensor:
        y = torch.cumprod(x, dim)
        ctx.save_for_backward(x, y)
        ctx.dim = dim
        return y

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor) -> tuple[torch.Tensor, None]:
        x: torch.Tensor
        y: torch.Tensor
        x, y = ctx.saved_tensors
        d = ctx.dim
        return (g * y).flip(d).cumsum(d).flip(d) / x, None


def test_opinfo_samples_run_as_variants_and_catch_what_their_values_reach() -> None:
    """cumprod's OpInfo samples carry exact zeros on purpose: a backward dividing by x is
    red on those samples only; the correct op is green on every sample it takes."""
    good = check_op(cumprod, cumprod, inputs={"x": (3, 6)},
                    variants=OPINFO, dtypes=["float64"], raise_on_failure=False)  # fmt: skip
    bad = check_op(DividingCumProd, cumprod, inputs={"x": (3, 6)},
                   variants=OPINFO, dtypes=["float64"], raise_on_failure=False)  # fmt: skip
    ran = {g.check for g in good.groups}
    assert good.ok and {c for c in ran if c.startswith("variant:opinfo")}
    assert _failing(bad) and all(c.startswith("variant:opinfo") for c in _failing(bad))
    assert _failing(bad) < ran  # the samples without a zero pass


def test_an_unknown_entry_is_one_line() -> None:
    with pytest.raises(OpSpecError, match="torch has no OpInfo entry 'no_such_op'"):
        check_op(cumprod, cumprod, inputs={"x": (3, 6)},
                 variants={"opinfo": "no_such_op"})  # fmt: skip


def test_a_spec_plans_opinfo_variants(tmp_path: Path) -> None:
    (tmp_path / "scan.py").write_text(
        "import torch\ndef cumprod(x, dim=0):\n    return torch.cumprod(x, dim)\n"
    )
    spec = tmp_path / "s.yaml"
    spec.write_text(
        "name: cumprod-opinfo\nop:\n  candidate: scan:cumprod\n  reference: scan:cumprod\n"
        "  args: {dim: 0}\n  inputs: {x: {shape: [4, 5]}}\n"
        "  variants: {opinfo: cumprod, sizes: false, leading: 0, layouts: false}\n"
        "dtypes: [float64]\n"
    )
    done = run_gradaudit("plan", spec, "--json", cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    checks = {c["check"] for c in json.loads(done.stdout)["cases"]}
    assert "variant:opinfo0" in checks


def test_the_reproduce_line_reruns_one_opinfo_sample_alone() -> None:
    """A list of names derives no OpInfo samples; the reproduce line of one names the entry
    and selects the sample with `only`, and pasted, it reruns that sample alone, red again
    at the same element."""
    bad = check_op(DividingCumProd, cumprod, inputs={"x": (3, 6)},
                   variants=OPINFO, dtypes=["float64"], raise_on_failure=False)  # fmt: skip
    line = next(t for t in bad.report().splitlines() if "reproduce:" in t)
    group, worst = max(bad.failures, key=lambda f: (f[1].status == "fail", f[1].budget))
    name = group.check.removeprefix("variant:")
    assert f"variants={{'opinfo': 'cumprod', 'only': [{name!r}]}}" in line
    again = check_op(DividingCumProd, cumprod, inputs={"x": (3, 6)}, dtypes=["float64"],
                     variants={"opinfo": "cumprod", "only": [name]},
                     raise_on_failure=False)  # fmt: skip
    assert {g.check for g in again.groups if g.check.startswith("variant:")} == {group.check}
    w2 = next(s for _, s in again.failures if s.tensor == worst.tensor)
    assert w2.worst is not None and worst.worst is not None
    assert w2.worst.worst_index == worst.worst.worst_index
    # a derived variant's line is a list of its name, as before
    zeros = check_op(DividingCumProd, cumprod, inputs={"x": (3, 6)}, dtypes=["float64"],
                     variants=["zeros"], raise_on_failure=False)  # fmt: skip
    assert "variants=['zeros']" in zeros.report()
    with pytest.raises(OpSpecError, match="unknown variant opinfo99"):
        check_op(cumprod, cumprod, inputs={"x": (3, 6)},
                 variants={"opinfo": "cumprod", "only": ["opinfo99"]})  # fmt: skip
