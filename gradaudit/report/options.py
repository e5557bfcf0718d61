"""Reporter plugins' command-line options: what the `register_report_options` hook
registers becomes an option of `gradaudit run` (as pytest's `pytest_addoption`), and its
value reaches every reporter factory as `ReportOptions.extra[NAME]`."""

from __future__ import annotations

from typing import Any

import click

from gradaudit.errors import UsageError

PLUGIN_OPTION = "plugin_option_"  # the prefix of reporter plugins' options' click names


def _dest(name: str) -> str:
    """The click parameter name of the reporter option `--NAME`."""
    return PLUGIN_OPTION + name.replace("-", "_")


def add_report_options(command: click.Command, argv: list[str]) -> None:
    """Reporter plugins' options (the `register_report_options` hook) as options of `run`,
    when `argv` runs it (other commands load no plugin)."""
    if argv[1:2] != ["run"]:
        return
    from gradaudit.plugins import report_registry

    taken = {flag for param in command.params for flag in param.opts}
    for name, option in report_registry().objects("report-option").items():
        flag = f"--{name}"
        if flag in taken:
            raise UsageError(f"a reporter plugin's option {flag} is taken by gradaudit run")
        command.params.append(
            click.Option(
                [flag, _dest(name)],
                is_flag=option.is_flag,
                default=None,
                metavar=None if option.is_flag else option.metavar,
                help=option.help,
            )
        )


def given_options(given: dict[str, Any]) -> dict[str, Any]:
    """{NAME: value} of the reporter options given, converted by their ReportOption."""
    from gradaudit.plugins import report_registry

    options = report_registry().objects("report-option")
    found = {}
    for name, option in options.items():
        value = given.get(_dest(name))
        if value is not None and value is not False:
            found[name] = option(value)
    return found
