"""The Triton plugin without triton: it imports and registers its ops (the registry imports
every plugin on every run), and only a call to a kernel asks for the extra."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.conftest import GRADAUDIT, REPO, cli_env

WITHOUT_TRITON = """
import sys
sys.modules["triton"] = None  # `import triton` now raises ModuleNotFoundError
import torch
import gradaudit_triton
from gradaudit.plugins import plugin_manager
from gradaudit_triton.gallery import BUGS

ops = plugin_manager().entries["op"]
print("registered", ops["triton-rmsnorm"].obj is gradaudit_triton.rmsnorm,
      ops["triton-rmsnorm-reference"].obj is gradaudit_triton.rmsnorm_reference)
x, w = torch.randn(2, 3, requires_grad=True), torch.ones(3)
for op in (gradaudit_triton.rmsnorm, BUGS["triton-rmsnorm-tail-mask"][0].apply):
    try:
        op(x, w)
    except ImportError as exc:
        print("ImportError:", exc)
print("reference", gradaudit_triton.rmsnorm_reference(x, w).shape)
"""


def test_the_plugin_registers_without_triton_and_a_call_names_the_extra() -> None:
    done = subprocess.run(
        [sys.executable, "-c", WITHOUT_TRITON],
        cwd=REPO,
        env=cli_env(),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == "registered True True"
    hint = "ImportError: gradaudit_triton's kernels need triton, which is not installed: "
    assert lines[1:3] == [hint + "pip install 'gradaudit[triton]'"] * 2
    assert lines[3] == "reference torch.Size([2, 3])"


def test_the_triton_spec_without_triton_exits_2_in_one_line_naming_the_extra(
    tmp_path: Path,
) -> None:
    """A `triton` that cannot be imported (first on PYTHONPATH): no case can run, so the
    run is a setup error, before any result; the requested report says why."""
    fake = tmp_path / "site" / "triton"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text(
        "raise ModuleNotFoundError(\"No module named 'triton'\", name='triton')\n"
    )
    report = tmp_path / "r.json"
    done = subprocess.run(
        [str(GRADAUDIT), "run", str(REPO / "specs" / "op-triton-rmsnorm.yaml")]
        + ["--json", str(report)],
        cwd=tmp_path,
        env=cli_env({"PYTHONPATH": str(tmp_path / "site")}),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 2, done.stdout + done.stderr
    (line,) = done.stderr.strip().splitlines()
    assert line.startswith("gradaudit: error: op.candidate cannot run here: ImportError: ")
    assert line.endswith("pip install 'gradaudit[triton]'"), line
    data = json.loads(report.read_text())
    assert data["totals"]["passed"] == 0 and "could not start" in json.dumps(data)
