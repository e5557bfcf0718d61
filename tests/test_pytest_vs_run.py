"""pytest collecting a spec gives the verdicts `gradaudit run` gives, over gallery bugs of
every built-in kind and over plugins that misbehave (one table): each tensor check is green,
red or skipped in both, never green in one and red in the other."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import REPO, run_gradaudit, small_spec
from tests.test_pytest_plugin import cli_verdicts, junit_verdicts, run_pytest

MISBEHAVING = textwrap.dedent(
    """
    import os, signal, sys
    from gradaudit import hookimpl
    from gradaudit_charrnn.bptt import charrnn_bptt

    def exits(model, batch, forward):
        os._exit(0)

    def sys_exit(model, batch, forward):
        sys.exit(0)

    def segfault(model, batch, forward):
        os.kill(os.getpid(), signal.SIGSEGV)

    def interrupts(model, batch, forward):
        raise KeyboardInterrupt

    def wrong_shape(model, batch, forward):
        return {k: v[..., :1] for k, v in charrnn_bptt(model, batch, forward).items()}

    @hookimpl
    def register_gradients(register):
        for name, fn in [("exits", exits), ("sys-exit", sys_exit), ("segfault", segfault),
                         ("interrupts", interrupts), ("wrong-shape", wrong_shape)]:
            register(name, fn)
    """
)
RMSNORM_IN_PLACE = {
    "name": "rmsnorm-in-place",
    "op": {
        "candidate": "gradaudit_ops.gallery:RMSNormInPlace",
        "reference": "rmsnorm-reference",
        "dims": {"N": 6, "D": 16},
        "inputs": {"x": {"shape": ["N", "D"]}, "weight": {"shape": ["D"]}},
        "args": {"eps": 1.0e-6},
    },
    "dtypes": ["float64", "float32"],
}


def _model(gradients: str, **more: Any) -> dict[str, Any]:
    return small_spec(gradients={"plugin": gradients}, **more)


TABLE: dict[str, dict[str, Any]] = {
    "charrnn-gallery": _model(
        "charrnn-bptt-bug-dW-misses-h0",
        plugins=["gradaudit_charrnn.gallery"],
        checks={"repeat": {}},
    ),
    "op-gallery": RMSNORM_IN_PLACE,
    "tp-gallery": yaml.safe_load(
        (REPO / "specs" / "tp-mlp.yaml")
        .read_text()
        .replace("tp-mlp-manual", "tp-mlp-bug-no-allreduce")
    )
    | {"plugins": ["gradaudit_tp.gallery"], "dtypes": ["float64"]},
    **{
        f"plugin-{name}": _model(name, plugins=["misbehaving_gradients.py"])
        for name in ("exits", "sys-exit", "segfault", "interrupts", "wrong-shape")
    },
}


def _red(status: str) -> str:
    return "red" if status in ("fail", "error") else status


@pytest.mark.parametrize("name", list(TABLE))
def test_pytest_and_gradaudit_run_agree(tmp_path: Path, name: str) -> None:
    (tmp_path / "misbehaving_gradients.py").write_text(MISBEHAVING)
    spec = tmp_path / f"{name}.yaml"
    spec.write_text(yaml.safe_dump(TABLE[name], sort_keys=False))
    ran = run_gradaudit("run", spec, "--json", tmp_path / "run.json", "-q", cwd=tmp_path)
    assert ran.returncode == 1, ran.stdout + ran.stderr  # every row has a red tensor
    expected = {k: _red(v) for k, v in cli_verdicts(tmp_path / "run.json").items()}
    done = run_pytest(tmp_path, spec.name, "--junitxml", "py.xml", "-q")
    assert done.returncode == 1, done.stdout[-2000:] + done.stderr[-2000:]
    got = {k: _red(v) for k, v in junit_verdicts(tmp_path / "py.xml").items()}
    got = {k: v for k, v in got.items() if not (k.startswith("gradients[") and k not in expected)}
    assert got == expected
    assert "red" in expected.values()
