"""CI add-ons that work on the JSON report (docs/json-report.md) alone.

Every module here is torch-free and imports nothing of the engine, so each is as fast to load
as `json`, and works on any report the run, a shard or `gradaudit merge` wrote:

- `report`: reading a report defensively (every field may be null or missing);
- `diff`: `gradaudit diff BEFORE.json AFTER.json`, the budget growth between two runs;
- `html`: one self-contained HTML page of a report;
- `summary_chart`: Markdown with Mermaid bar charts for `$GITHUB_STEP_SUMMARY`;
- `environment`: `--shard auto`, the shard of this job from the CI's variables.

`python -m gradaudit.ci` runs each of them from the command line (docs/ci-native.md).
"""

# `gradaudit diff`'s defaults (gradaudit.ci.diff says why), here so that the CLI's options
# name them without importing the diff module (26 ms of every `gradaudit` start).
DEFAULT_MAX_GROWTH = 2.0
DEFAULT_FLOOR = 0.05
