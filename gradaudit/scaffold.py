"""`gradaudit new-plugin NAME`: a plugin package that installs with pip and passes its own audit.

The model is the smallest language model with a non-trivial backward (embedding,
linear layer, cross-entropy over every position), so the files show the whole
contract: a model factory, a manual gradient, the hooks, a spec and a test.
"""

from __future__ import annotations

import re
from pathlib import Path
from string import Template

import click

from gradaudit.errors import EXIT_OK, UsageError

PYPROJECT = """\
[build-system]
requires = ["setuptools>=61"]
build-backend = "setuptools.build_meta"

[project]
name = "gradaudit-$dist"
version = "0.1.0"
description = "gradaudit plugins: the $name model and its hand-written gradient"
requires-python = ">=3.10"
dependencies = ["gradaudit", "torch"]

# This is how gradaudit finds the plugin once the package is installed.
[project.entry-points.gradaudit]
$name = "$package"

[tool.setuptools]
packages = ["$package"]
"""

INIT = '''\
"""gradaudit plugins: the `$name` model and its manual gradient `$name-manual`."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from gradaudit import hookimpl


@hookimpl
def register_models(register: Callable[[str, Any], None]) -> None:
    from $package.model import build

    register("$name", build)


@hookimpl
def register_gradients(register: Callable[[str, Any], None]) -> None:
    from $package.backward import manual_gradients

    register("$name-manual", manual_gradients)
'''

MODEL = '''\
"""The `$name` model: logits = C[x] @ W + b, cross-entropy averaged over all B*T positions."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from gradaudit import Forward


class Model(nn.Module):
    def __init__(self, vocab_size: int, n_embd: int = 16) -> None:
        super().__init__()
        self.C = nn.Parameter(torch.randn(vocab_size, n_embd))
        self.W = nn.Parameter(torch.randn(n_embd, vocab_size) / n_embd**0.5)
        self.b = nn.Parameter(torch.zeros(vocab_size))

    def forward(self, inputs: torch.Tensor, targets: torch.Tensor) -> Forward:
        emb = self.C[inputs]  # (B, T, n_embd)
        logits = emb @ self.W + self.b  # (B, T, vocab)
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))
        # Every intermediate named here is audited too (gradaudit asks autograd for dL/d it).
        return Forward(loss=loss, intermediates={"emb": emb, "logits": logits})


def build(vocab_size: int, block_size: int | None = None, **options: int) -> Model:
    """Model factory: gradaudit seeds torch before calling it, so weights are reproducible.

    `vocab_size` (and `block_size`, unused: any length works) come from the text data;
    `options` are the spec's `model.options`."""
    unknown = set(options) - {"n_embd"}
    if unknown:
        raise ValueError(f"unknown option(s) {sorted(unknown)}; allowed: ['n_embd']")
    return Model(vocab_size, **options)
'''

BACKWARD = '''\
"""The hand-written backward of the `$name` model, checked by gradaudit against autograd.

dlogits = (softmax(logits) - onehot(y)) / (B*T);  dW = emb^T dlogits;  db = sum dlogits;
demb = dlogits W^T;  dC[id] += demb for every position holding id (index_add: ids repeat).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from gradaudit import Batch, Forward


def manual_gradients(
    model: nn.Module, batch: Batch, forward: Forward
) -> Mapping[str, torch.Tensor]:
    emb, logits = forward.intermediates["emb"], forward.intermediates["logits"]
    n = batch.targets.numel()
    one_hot = F.one_hot(batch.targets, logits.shape[-1]).to(logits.dtype)
    dlogits = (torch.softmax(logits, dim=-1) - one_hot) / n
    flat = dlogits.reshape(n, -1)
    W = model.get_parameter("W")
    demb = dlogits @ W.T
    dC = torch.zeros_like(model.get_parameter("C"))
    dC.index_add_(0, batch.inputs.reshape(-1), demb.reshape(n, -1))
    return {
        "logits": dlogits,
        "emb": demb,
        "W": emb.reshape(n, -1).T @ flat,
        "b": flat.sum(dim=0),
        "C": dC,
    }
'''

SPEC = """\
# Editor completion: `gradaudit schema > specs/schema.json`, then put
# `# yaml-language-server: $$schema=schema.json` on the first line.
name: $name
model: {plugin: $name, options: {n_embd: 16}}
gradients: {plugin: $name-manual}
data: {plugin: text, options: {source: builtin, block_size: 8}}
batches: {split: train, count: 4, size: 16, seed: 0}
devices: [cpu, cuda]
dtypes: [float32, float64]
tensors: ["*"]
# No `tolerance:`: the default (auto) holds every dtype to its own precision, so adding
# bfloat16 or float16 above needs no other change. See the README's Tolerances section.
"""

TEST = '''\
"""Run this package's gradaudit spec end to end: the gate CI will use."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

SPEC = Path(__file__).resolve().parents[1] / "specs" / "$name.yaml"


def test_manual_gradients_match_autograd() -> None:
    gradaudit = shutil.which("gradaudit") or str(Path(sys.executable).with_name("gradaudit"))
    result = subprocess.run([gradaudit, "run", str(SPEC)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
'''

README = """\
# gradaudit-$dist

A [gradaudit](https://github.com/gradaudit/gradaudit) plugin package: the `$name` model and
its hand-written gradient `$name-manual`.

```sh
pip install -e .                   # registers the plugins through the `gradaudit` entry point
gradaudit plugins                  # lists $name and $name-manual
gradaudit run specs/$name.yaml     # the audit: exit 0 when every gradient matches autograd
pytest                             # the same, as a test
```

Edit `$package/model.py` and `$package/backward.py` to audit your own model.
"""


def new_plugin(name: str, parent: str | None = None) -> int:
    """Write the package into PARENT/NAME; refuse to overwrite anything."""
    if not re.fullmatch(r"[a-z][a-z0-9_]*", name):
        raise UsageError(f"plugin name {name!r}: use lowercase letters, digits and _")
    root = Path(parent or ".") / name
    if root.exists():
        raise UsageError(f"{root} already exists; choose another name or --dir")
    values = {"name": name, "dist": name.replace("_", "-"), "package": f"gradaudit_{name}"}
    files = {
        "pyproject.toml": PYPROJECT,
        "README.md": README,
        f"gradaudit_{name}/__init__.py": INIT,
        f"gradaudit_{name}/model.py": MODEL,
        f"gradaudit_{name}/backward.py": BACKWARD,
        f"specs/{name}.yaml": SPEC,
        f"tests/test_{name}.py": TEST,
    }
    for relative, template in files.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(Template(template).substitute(values), encoding="utf-8")
    click.echo(f"created {root} ({len(files)} files); next: pip install -e {root}")
    return EXIT_OK
