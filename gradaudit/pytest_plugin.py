"""gradaudit's pytest plugin (the `pytest11` entry point): specs as test items, and fixtures.

pytest collects a gradaudit spec of any kind given on its command line, or matching the
`gradaudit_specs` ini globs, as one item per tensor check of the spec's plan, named like
`W.weight[cpu-float32]` (an op's `grad.x[cpu-float32-variant:lead2]`), plus an item per
gradients case for what the plan could not name (`gradients[cpu-float32]`: a gradient for a
tensor the model lacks), so -k, -x,
markers, --junitxml and xdist's -n work on them. A (device, dtype) pass runs once per pytest
process, when its first item runs, supervised as `gradaudit run` runs it: the verdicts are
the same, and plugin code that ends its process fails that pass, not pytest.

Loading this module imports neither torch nor yaml: they are imported in the hooks, only
when a gradaudit item is collected or a gradaudit fixture is used.
"""

from __future__ import annotations

import fnmatch
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from gradaudit.plan import PlannedCase
    from gradaudit.pytest_items import AuditResult, Store

SPEC_SUFFIXES = (".yaml", ".yml")
_STORE = pytest.StashKey["Store"]()


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addini(
        "gradaudit_specs",
        "globs of gradaudit spec files to collect as tests (e.g. specs/*.yaml); "
        "a spec given on the command line is always collected",
        type="args",
        default=[],
    )
    parser.addini(
        "gradaudit_timeout",
        "seconds a batch of a collected spec may take, as `gradaudit run --timeout`",
        default="",
    )
    parser.addoption(
        "--gradaudit-timeout",
        type=float,
        default=None,
        help="seconds a batch of a collected gradaudit spec may take (as gradaudit run "
        "--timeout); overrides the gradaudit_timeout ini value",
    )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "gradaudit: a tensor check collected from a gradaudit spec")


def store(config: pytest.Config) -> Store:
    """This session's loaded specs and finished passes (one per process: per xdist worker)."""
    found = config.stash.get(_STORE, None)
    if found is None:
        from gradaudit.pytest_items import Store

        found = config.stash[_STORE] = Store(timeout=_timeout(config))
    return found


def _timeout(config: pytest.Config) -> float | None:
    """--gradaudit-timeout, else the gradaudit_timeout ini value; None: no limit."""
    value: float | None = config.getoption("gradaudit_timeout")
    if value is None:
        text = str(config.getini("gradaudit_timeout") or "").strip()
        try:
            value = float(text) if text else None
        except ValueError:
            raise pytest.UsageError(f"gradaudit_timeout: not a number: {text!r}") from None
    if value is not None and not (0.0 < value < float("inf")):
        raise pytest.UsageError(f"gradaudit timeout: expected seconds above 0, got {value}")
    return value


def pytest_collect_file(file_path: Path, parent: pytest.Collector) -> pytest.Collector | None:
    if file_path.suffix not in SPEC_SUFFIXES:
        return None
    patterns: list[str] = parent.config.getini("gradaudit_specs")
    matched = _matches(file_path, patterns, parent.config.rootpath)
    if not matched and not parent.session.isinitpath(file_path):
        return None
    kind = _spec_kind(file_path)
    if kind is None and not matched:
        # Given on the command line but not a gradaudit spec: another plugin may own it.
        # A file the ini globs match is the user's word that it is one: the loader says why not.
        return None
    return SpecFile.from_parent(parent, path=file_path)


def _matches(path: Path, patterns: list[str], root: Path) -> bool:
    """A glob without a slash matches the file name; one with a slash, the path from rootdir."""
    try:
        relative = path.relative_to(root).as_posix()
    except ValueError:
        relative = path.as_posix()
    return any(
        fnmatch.fnmatchcase(relative if "/" in p else path.name, p.removeprefix("./"))
        for p in patterns
    )


def _spec_kind(path: Path) -> str | None:
    """The spec's kind, "broken" (unreadable or not YAML: the loader reports it with its
    line) or None (YAML that is not a gradaudit spec)."""
    import yaml

    try:
        data = yaml.load(path.read_text(encoding="utf-8"), Loader=yaml.SafeLoader)
    except Exception:
        return "broken"
    if not isinstance(data, dict):
        return None
    if {"op", "target"} & set(data) or {"model", "gradients"} & set(data):
        return "spec"
    return None


def _shown(path: Path) -> Path:
    """The spec path as errors print it: relative to the working directory when inside it."""
    relative = os.path.relpath(path)
    return path if relative.startswith("..") else Path(relative)


def _marks(item: pytest.Item, group: str) -> None:
    item.add_marker("gradaudit")
    if item.config.pluginmanager.hasplugin("xdist"):
        # `-n N --dist loadgroup` would keep a pass's items on one worker (not with pytest
        # 9.2 and xdist 3.8: docs/pytest.md); `--dist loadfile` keeps the spec's on one.
        item.add_marker(pytest.mark.xdist_group(name=group))


class GradauditWarning(UserWarning):
    """What the plan can already say is weak about a collected spec."""


def _skip(reason: str) -> None:
    """Skip, reported at the spec's location (not this module's), as a skip mark would be."""
    raise pytest.skip.Exception(reason, _use_item_location=True)


class SpecFile(pytest.File):
    """A spec of any kind: its plan's tensor checks, one item each, and an item per case for
    what the plan could not name."""

    def collect(self) -> Iterator[pytest.Item]:
        from gradaudit.errors import GradauditError

        try:
            found = store(self.config).get(_shown(self.path))
        except GradauditError as exc:
            raise self.CollectError(str(exc)) from None
        for warning in found.plan.warnings:  # what `gradaudit run` prints as "warning:"
            self.warn(GradauditWarning(f"{_shown(self.path)}: {warning}"))
        for case in found.plan.cases:
            group = f"{self.path.name}-{case.device}-{case.pass_key[1]}"
            for tensor in case.tensors:
                item = CheckItem.from_parent(
                    self, name=f"{tensor.name}[{case_id(case)}]", case=case, tensor=tensor.name
                )
                _marks(item, group)
                yield item
            if case.skip is None and case.check == "gradients":
                name = f"gradients[{case_id(case)}]"
                extra = CaseItem.from_parent(self, name=name, case=case)
                _marks(extra, group)
                yield extra


def case_id(case: PlannedCase) -> str:
    extra = "" if case.check == "gradients" else f"-{case.check}"
    return f"{case.device}-{case.dtype}{extra}"


class CheckItem(pytest.Item):
    """One tensor of one planned case. Its pass runs in setup, so that a tensor the audit
    could not compare (a plugin raised) is a pytest error, and a mismatch a failure."""

    def __init__(self, *, case: PlannedCase, tensor: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.case, self.tensor = case, tensor
        self.outcome: tuple[str, str] = ("error", "not run")

    def setup(self) -> None:
        from gradaudit.errors import GradauditError
        from gradaudit.pytest_items import verdict

        if self.case.skip:
            _skip(self.case.skip)
        found = store(self.config).get(_shown(self.path))
        try:
            summary = found.summary(self.case, self.tensor)
        except GradauditError as exc:
            pytest.fail(str(exc), pytrace=False)
        self.outcome = verdict(summary, self.case.rerun)
        if self.outcome[0] == "error":
            pytest.fail(self.outcome[1], pytrace=False)

    def runtest(self) -> None:
        status, text = self.outcome
        if status == "skip":
            _skip(text)
        if status != "pass":
            pytest.fail(text, pytrace=False)

    def reportinfo(self) -> tuple[Path, int, str]:
        return self.path, 0, f"gradaudit {self.case.check}: {self.tensor} {case_id(self.case)}"


class CaseItem(pytest.Item):
    """What a case reported beyond its planned tensors (a gradient for a tensor the model
    lacks is an error there, as in `gradaudit run`'s report); passes when there is none."""

    def __init__(self, *, case: PlannedCase, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.case = case

    def runtest(self) -> None:
        from gradaudit.errors import GradauditError
        from gradaudit.pytest_items import verdict

        found = store(self.config).get(_shown(self.path))
        try:
            extra = found.unplanned(self.case)
        except GradauditError as exc:
            pytest.fail(str(exc), pytrace=False)
        bad = [verdict(s)[1] for s in extra if s.status in ("fail", "error")]
        if bad:
            pytest.fail("\n".join(bad), pytrace=False)

    def reportinfo(self) -> tuple[Path, int, str]:
        return self.path, 0, f"gradaudit {self.case.check}: unplanned tensors {case_id(self.case)}"


@pytest.fixture
def gradaudit_check_op() -> Callable[..., Any]:
    """gradaudit.check_op: audit an op's backward against a reference (raises on failure)."""
    from gradaudit.targets.op.api import check_op

    return check_op


@pytest.fixture
def gradaudit_audit(request: pytest.FixtureRequest) -> Callable[..., AuditResult]:
    """audit(spec, devices=None, dtypes=None, tensors=None) -> AuditResult: run a model spec
    (each pass once per session) and raise AssertionError naming every tensor that did not
    pass; skip when nothing was compared (an absent device)."""
    config = request.config

    def audit(
        spec: str | Path,
        devices: list[str] | None = None,
        dtypes: list[str] | None = None,
        tensors: list[str] | None = None,
    ) -> AuditResult:
        from gradaudit.pytest_items import audit as run_audit

        result = run_audit(store(config), spec, devices, dtypes, tensors)
        if not result.ok:
            raise AssertionError(result.report())
        if not result.passed:
            pytest.skip("; ".join(result.skipped) or f"{spec}: nothing was compared")
        return result

    return audit
