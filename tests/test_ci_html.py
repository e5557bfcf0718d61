"""The HTML report (gradaudit.ci.html): parsed with the standard library's html.parser, it is
well-formed, self-contained, escapes what plugins name, puts failures first and has a budget
bar per tensor; a slow test renders it in headless Chromium at a phone's size."""

from __future__ import annotations

import json
import re
import shutil
import struct
import subprocess
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest

from gradaudit.ci.html import render
from gradaudit.ci.report import ReportError
from tests.ci_reports import budgets, group, report, tensor
from tests.conftest import REPO, run_gradaudit

VOID = {"meta", "br", "link", "img", "hr", "input", "col", "source", "wbr"}


class Page(HTMLParser):
    """Collects elements (tag, attrs, classes, text) and checks that tags nest."""

    def __init__(self, text: str) -> None:
        super().__init__(convert_charrefs=True)
        self.stack: list[str] = []
        self.elements: list[tuple[str, dict[str, str], list[str]]] = []
        self.errors: list[str] = []
        self.text: list[str] = []
        self.doctype = ""
        self.feed(text)
        self.close()
        if self.stack:
            self.errors.append(f"unclosed: {self.stack}")

    def handle_decl(self, decl: str) -> None:
        self.doctype = decl

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = {k: v or "" for k, v in attrs}
        self.elements.append((tag, values, values.get("class", "").split()))
        if tag not in VOID:
            self.stack.append(tag)

    def handle_endtag(self, tag: str) -> None:
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"</{tag}> closes {self.stack[-1:] or 'nothing'}")
            return
        self.stack.pop()

    def handle_data(self, data: str) -> None:
        self.text.append(data)

    def having(self, tag: str, cls: str | None = None) -> list[dict[str, str]]:
        return [a for t, a, c in self.elements if t == tag and (cls is None or cls in c)]


def parse(text: str) -> Page:
    page = Page(text)
    assert page.errors == [], page.errors
    assert page.doctype.lower() == "doctype html"
    return page


def widths(page: Page) -> list[float]:
    return [float(re.fullmatch(r"width:([\d.]+)%", a["style"])[1])  # type: ignore[index]
            for a in page.having("span", "fill")]  # fmt: skip


def mixed() -> dict[str, Any]:
    return report(
        group([tensor("ok", "pass", 0.75), tensor("bad", "fail", 3.0), tensor("zero", "pass", 0)]),
        group([tensor("crash", "error", None)], dtype="float64"),
        group([tensor("ok", "skipped", None)], device="cuda", skipped="cuda is absent"),
    )


def test_the_page_is_well_formed_and_self_contained() -> None:
    page = parse(render(mixed()))
    assert page.having("meta", None)[0] == {"charset": "utf-8"}
    viewport = [a for a in page.having("meta") if a.get("name") == "viewport"]
    assert viewport and "width=device-width" in viewport[0]["content"]
    assert not page.having("script") and not page.having("link") and not page.having("img")
    for _, attrs, _ in page.elements:
        for name in ("src", "href", "action"):
            assert not attrs.get(name), attrs
    text = render(mixed())
    assert "http://" not in text and "https://" not in text and "@import" not in text


def test_a_bar_per_tensor_sized_by_budget_and_coloured_by_status() -> None:
    page = parse(render(mixed()))
    rows = page.having("li", "t")
    assert len(rows) == 5 == len(page.having("span", "bar"))  # skipped tensors too
    assert [r["class"].split()[1] for r in rows] == ["pass", "fail", "pass", "error", "skipped"]
    assert widths(page) == [50.0, 100.0, 0.0, 0.0, 0.0]  # min(b, 1.5) / 1.5; none: empty
    labels = [a["aria-label"] for a in page.having("span", "bar")]
    assert labels[0] == "budget 75% of the allowance, pass"
    assert labels[3] == "budget no budget, error"
    assert "left:66.6667%" in render(mixed())  # the 100% mark


def test_failures_come_first_with_their_worst_element() -> None:
    text = render(mixed())
    page = parse(text)
    assert text.index("<h2>Failures") < text.index("<h2>Cases")
    blocks = page.having("article", "failure")
    assert len(blocks) == 2  # the failure, then the error
    body = " ".join(page.text)
    for fact in ("worst element", "[1, 2] in batch 1 (seed 65)", "0.5000001", "allowed",
                 "1e-07", "budget used", "300%", "batches: {seed: 65, count: 1}",
                 "RuntimeError: boom"):  # fmt: skip
        assert fact in body, fact
    green = render(budgets(a=0.1))
    assert "Failures" not in green and "badge pass" in green


def test_every_string_is_escaped() -> None:
    evil = '<script>alert("x")</script>&"'
    text = render(
        report(
            group([tensor(evil, "fail", 2.0, errors=[evil], error_count=1)], check=evil),
            spec_name=evil,
            stopped=evil,
        )
    )
    page = parse(text)
    assert not page.having("script")
    assert "<script>" not in text and "&lt;script&gt;" in text
    assert evil in " ".join(page.text)  # shown as text, exactly


def test_skipped_groups_stopped_runs_and_merged_reports() -> None:
    stopped = dict(mixed(), stopped="interrupted by SIGTERM")
    stopped["groups"][0]["complete"] = False
    stopped["run"]["merged_from"] = ["s1.json", "s2.json"]
    text = render(stopped)
    page = parse(text)
    body = " ".join(page.text)
    assert "The run stopped early:" in body and "interrupted by SIGTERM" in body
    assert "cut short" in body and "skipped: cuda is absent" in body
    assert "s1.json, s2.json" in body
    assert page.having("details")  # the skipped case's tensors are folded
    assert page.having("header", "fail")


def test_reports_without_the_optional_fields() -> None:
    tensors = [{"tensor": "w", "status": "fail"}, {"tensor": "v", "worst": {"budget": "inf"}}]
    case = {"device": "cpu", "dtype": "float32", "check": "gradients", "tensors": tensors}
    bare = {"schema": "gradaudit-run", "schema_version": 1, "groups": [case]}
    page = parse(render(bare))
    assert widths(page) == [0.0, 100.0]
    assert "? of ? elements" in " ".join(page.text)
    with pytest.raises(ReportError):
        render({"schema": "x"})


def test_real_reports(tmp_path: Path) -> None:
    """A real failing run (cpu and an absent cuda) and an op spec's report render."""
    spec = tmp_path / "red.yaml"
    spec.write_text(
        f"name: red\nplugins: [{REPO / 'tests' / 'negative_controls.py'}]\n"
        "model: {plugin: charrnn, options: {d_model: 8, n_hidden: 16, h0: 0.1}}\n"
        "gradients: {plugin: bptt-W-transposed}\n"
        "data: {plugin: text, options: {source: builtin, block_size: 5}}\n"
        "batches: {split: train, count: 2, size: 4, seed: 3}\n"
        "devices: [cpu, cuda]\ndtypes: [float32]\ntensors: ['*']\n",
        "utf-8",
    )
    out = tmp_path / "red.json"
    result = run_gradaudit("run", spec, "--json", out, "-q")
    assert result.returncode == 1, result.stdout + result.stderr
    data = json.loads(out.read_text("utf-8"))
    text = render(data)
    page = parse(text)
    failed = sum(t["status"] == "fail" for g in data["groups"] for t in g["tensors"])
    assert len(page.having("article", "failure")) == failed > 0
    assert len(page.having("li", "t")) == sum(len(g["tensors"]) for g in data["groups"])
    assert text.index("Failures") < text.index("Cases")


def png_size(path: Path) -> tuple[int, int]:
    header = path.read_bytes()[:24]
    assert header[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", header[16:24])
    return width, height


@pytest.mark.slow
def test_the_page_in_a_headless_browser_at_phone_size(tmp_path: Path) -> None:
    """Chromium (Debian's `chromium`) renders the page at 390x844 CSS pixels (a phone) into a
    PNG: docs/images/html-report.png is one such screenshot, checked by eye."""
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        pytest.skip("no chromium (apt-get install chromium)")
    page = tmp_path / "report.html"
    page.write_text(render(mixed()), "utf-8")
    shot = tmp_path / "report.png"
    subprocess.run(
        [browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
         f"--screenshot={shot}", "--window-size=390,844", page.as_uri()],
        capture_output=True, timeout=120, check=True,
    )  # fmt: skip
    assert png_size(shot) == (390, 844)
    assert shot.stat().st_size > 10_000  # a rendered page, not a blank one
