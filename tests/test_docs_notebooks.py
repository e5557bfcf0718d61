"""docs/notebooks.md runs: every ```python block, section by section, and the output shown.

Each `## ` section (with its `###` subsections) is one notebook: its python blocks run in
order in one namespace. A ```text block right after a python block is what that block
prints; times, floating-point figures, percentages and the table's exact/max abs/max
rel/budget cells may differ (they depend on the machine's BLAS),
everything else (names, shapes, verdicts, counts, messages) must match.

`python -m tests.test_docs_notebooks` rewrites the text blocks from a fresh run.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

DOC = Path(__file__).resolve().parents[1] / "docs" / "notebooks.md"
FENCE = re.compile(r"^```(\w+)\n(.*?)^```\n", re.M | re.S)
DTYPE = re.compile(r"^b?float\d+$")
FIGURES = [
    (re.compile(r"\bin \d+\.\d+s\b"), "in <t>s"),
    (re.compile(r"-?\d\.\d+e[-+]\d\d"), "<f>"),
    (re.compile(r"(<0\.01|\d+(\.\d+)?)%"), "<p>"),
]


@dataclass
class Block:
    line: int
    code: str
    shown: str | None  # the ```text block right after it, if any
    shown_span: tuple[int, int] | None


def sections(text: str) -> dict[str, list[Block]]:
    """Python blocks per `## ` section, each with the output block that follows it."""
    result: dict[str, list[Block]] = {}
    title = "(top)"
    fences = list(FENCE.finditer(text))
    headings = [(m.start(), m.group(1)) for m in re.finditer(r"^## (.+)$", text, re.M)]
    for i, fence in enumerate(fences):
        for start, heading in headings:
            if start < fence.start():
                title = heading
        if fence.group(1) != "python":
            continue
        after = fences[i + 1] if i + 1 < len(fences) else None
        if after is not None and (
            after.group(1) != "text" or text[fence.end() : after.start()].strip()
        ):
            after = None  # only a text block right after the code is its output
        result.setdefault(title, []).append(
            Block(
                line=text.count("\n", 0, fence.start()) + 2,
                code=fence.group(2),
                shown=after.group(2) if after else None,
                shown_span=after.span(2) if after else None,
            )
        )
    return result


def run(blocks: list[Block]) -> list[str]:
    """What each block printed, run in one namespace like a notebook's cells."""
    namespace: dict[str, Any] = {"__name__": "__notebook__"}
    printed = []
    for block in blocks:
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            exec(compile(block.code, f"{DOC}:{block.line}", "exec"), namespace)
        printed.append(out.getvalue())
    return printed


def normal(text: str) -> str:
    """Whitespace collapsed; in table rows the exact, max abs, max rel and budget cells
    become `<x>`; elsewhere times, e-notation figures and percentages become tokens."""
    lines = []
    for line in text.strip().splitlines():
        cells = line.split()
        if len(cells) >= 10 and DTYPE.match(cells[1]):
            cells[3], cells[5], cells[6], cells[7] = "<x>", "<x>", "<x>", "<x>"
            lines.append(" ".join(cells))
            continue
        for pattern, token in FIGURES:
            line = pattern.sub(token, line)
        lines.append(" ".join(line.split()))
    return "\n".join(lines)


SECTIONS = sections(DOC.read_text())


def test_the_doc_has_the_examples_it_promises() -> None:
    assert {
        "The one-liner",
        "Pairing by prefix: makemore's manual backprop",
        "Several dtypes: `build=` and `dtypes=`",
        "numpy gradients: min-char-rnn",
    } <= set(SECTIONS)
    assert all(b.shown is not None for b in SECTIONS["Several dtypes: `build=` and `dtypes=`"])
    numpy = SECTIONS["numpy gradients: min-char-rnn"]
    assert any("computed in float64, not bfloat16" in (b.shown or "") for b in numpy)
    assert any("[('by', 'fail')]" in (b.shown or "") for b in numpy)  # clipping undeclared
    makemore = SECTIONS["Pairing by prefix: makemore's manual backprop"]
    assert "gradient has shape (64,), autograd's is (1, 64)" in (makemore[-1].shown or "")


@pytest.mark.parametrize("title", list(SECTIONS))
def test_section_runs_and_prints_what_it_shows(
    title: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    blocks = SECTIONS[title]
    for block, printed in zip(blocks, run(blocks), strict=True):
        if block.shown is not None:
            assert normal(printed) == normal(block.shown), f"docs/notebooks.md:{block.line}"


def test_the_comparison_ignores_figures_but_not_verdicts() -> None:
    row = "cpu  float32  W   False  True  2.38e-07  1.45e-07  2.68%  0/12  PASS"
    assert normal(row) == normal(row.replace("2.38e-07", "9.99e-08").replace("False", "True"))
    assert normal(row) != normal(row.replace("PASS", "FAIL"))
    assert normal(row) != normal(row.replace("0/12", "1/12"))
    assert normal("shape (64,) in 0.01s") != normal("shape (1, 64) in 0.02s")


def update() -> None:
    """Rewrite every shown output from a fresh run (keeping the doc's other text)."""
    text = DOC.read_text()
    edits = []
    for blocks in sections(text).values():
        for block, printed in zip(blocks, run(blocks), strict=True):
            if block.shown_span is not None:
                edits.append((block.shown_span, printed))
    for (start, end), printed in sorted(edits, reverse=True):
        text = text[:start] + printed.rstrip("\n") + "\n" + text[end:]
    DOC.write_text(text)


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    sys.path.insert(0, str(DOC.parents[1]))
    update()
