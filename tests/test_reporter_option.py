"""A reporter plugin with its own `gradaudit run` option, one module registered through the
`register_reporters` and `register_report_options` hooks and installed as a `gradaudit.report`
entry point (a dist-info folder on PYTHONPATH is what pip would leave)."""

from __future__ import annotations

import csv
from pathlib import Path

from tests.conftest import SpecWriter, run_gradaudit

REPORTER = '''
"""Writes one CSV row per tensor of each case: --csv PATH; --csv-all also lists passes."""
import csv

from gradaudit import hookimpl
from gradaudit.report.base import EndOfRunReporter, ReportOption


class CsvReporter(EndOfRunReporter):
    def __init__(self, path, everything):
        self.path, self.everything = path, everything

    def finish(self, summary):
        with open(self.path, "w", newline="") as f:
            out = csv.writer(f)
            out.writerow(["device", "dtype", "check", "tensor", "status"])
            for g in summary.groups:
                for t in g.tensors:
                    if self.everything or t.status != "pass":
                        out.writerow([g.device, g.dtype, g.check, t.tensor, t.status])


def factory(options):
    path = options.extra.get("csv")
    return CsvReporter(path, options.extra.get("csv-all", False)) if path else None


@hookimpl
def register_reporters(register):
    register("csv", factory)


@hookimpl
def register_report_options(register):
    register("csv", ReportOption("Write a CSV of the tensors here.", metavar="PATH", path=True))
    register("csv-all", ReportOption("List passing tensors in the CSV too.", is_flag=True))
'''


def install(site: Path, source: str = REPORTER, name: str = "csv_reporter") -> dict[str, str]:
    """The module and its dist-info (an entry point of group gradaudit.report)."""
    site.mkdir(exist_ok=True)
    (site / f"{name}.py").write_text(source)
    info = site / f"{name}-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[gradaudit.report]\n{name} = {name}\n")
    return {"PYTHONPATH": str(site)}


def test_a_reporter_plugin_adds_its_option_to_run(tmp_path: Path, write_spec: SpecWriter) -> None:
    env = install(tmp_path / "site")
    helped = run_gradaudit("run", "--help", env=env)
    assert "--csv PATH" in helped.stdout and "--csv-all" in helped.stdout, helped.stdout
    spec = write_spec(gradients={"plugin": "charrnn-bptt"})
    out = tmp_path / "t.csv"
    done = run_gradaudit("run", spec, "--csv", out, "--csv-all", env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    rows = list(csv.reader(out.open()))
    assert rows[0] == ["device", "dtype", "check", "tensor", "status"]
    assert len(rows) > 10 and {r[4] for r in rows[1:]} == {"pass"}
    # without --csv-all a green run lists no tensor; without --csv nothing is written
    again = run_gradaudit("run", spec, "--csv", out, env=env)
    assert again.returncode == 0 and len(list(csv.reader(out.open()))) == 1
    out.unlink()
    assert run_gradaudit("run", spec, env=env).returncode == 0 and not out.exists()


def test_a_reporter_options_path_is_guarded_like_the_built_in_reports(
    tmp_path: Path, write_spec: SpecWriter
) -> None:
    env = install(tmp_path / "site")
    spec = write_spec()
    done = run_gradaudit("run", spec, "--csv", spec, env=env)
    assert done.returncode == 2, done.stdout + done.stderr
    (line,) = done.stderr.strip().splitlines()
    assert "--csv" in line, line


def test_a_reporter_option_that_shadows_gradauditS_own_is_refused_in_one_line(
    tmp_path: Path, write_spec: SpecWriter
) -> None:
    source = REPORTER.replace('register("csv", ReportOption', 'register("json", ReportOption')
    env = install(tmp_path / "site", source)
    done = run_gradaudit("run", write_spec(), env=env)
    assert done.returncode == 2, done.stdout + done.stderr
    (line,) = done.stderr.strip().splitlines()
    assert line == "gradaudit: error: a reporter plugin's option --json is taken by gradaudit run"
