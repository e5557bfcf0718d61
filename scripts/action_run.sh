#!/usr/bin/env bash
# The GitHub Action's run step (action.yml), a script so that tests/test_action.py runs it
# locally with the environment GitHub gives a step.
#
# Runs `gradaudit run SPEC... [ARGS] --junit-xml J --json S`, renders the HTML report and
# the Mermaid budget charts from the JSON (python -m gradaudit.ci), writes the step's outputs
# and exits with gradaudit run's own status (0 green, 1 red, 2 bad input, 5 nothing
# compared, ...), so the job fails exactly when the audit does. gradaudit run appends its own
# table to $GITHUB_STEP_SUMMARY when that is set.
#
# Reads (set by action.yml from its inputs; composite actions get no INPUT_* variables):
#   GRADAUDIT_ACTION_SPECS    spec paths, separated by spaces or newlines; globs expand
#   GRADAUDIT_ACTION_ARGS     more `gradaudit run` arguments, split like a shell (quotes work)
#   GRADAUDIT_ACTION_JUNIT    report paths, each '' for none; relative to GITHUB_WORKSPACE
#   GRADAUDIT_ACTION_JSON
#   GRADAUDIT_ACTION_HTML
#   GRADAUDIT_ACTION_CHART    'true': append the budget charts to $GITHUB_STEP_SUMMARY
#   GITHUB_WORKSPACE, GITHUB_OUTPUT, GITHUB_STEP_SUMMARY, RUNNER_TEMP (set by the runner)
set -uo pipefail

cd "${GITHUB_WORKSPACE:-$PWD}" || exit 2
output="${GITHUB_OUTPUT:-/dev/null}"

# Specs: whitespace-separated words, shell globs expanded (a pattern matching nothing stays
# as it is, and gradaudit reports the missing file).
IFS=$' \t\n' read -r -d '' -a specs <<< "${GRADAUDIT_ACTION_SPECS:-}" || true
expanded=()
for pattern in ${specs[@]+"${specs[@]}"}; do  # (the +: bash < 4.4 and set -u)
  # shellcheck disable=SC2206  # globbing is the point; words were split above
  matches=( $pattern )
  expanded+=("${matches[@]}")
done
if [ "${#expanded[@]}" -eq 0 ]; then
  echo "::error title=gradaudit::the 'specs' input names no spec file"
  echo "exit-code=2" >> "$output"
  exit 2
fi

# Extra arguments, split as a shell would (without running one).
split=$(mktemp)
if ! python -c 'import shlex, sys; sys.stdout.write("".join(a + "\0" for a in shlex.split(sys.argv[1])))' \
    "${GRADAUDIT_ACTION_ARGS:-}" > "$split"; then
  echo "::error title=gradaudit::cannot split the 'args' input: ${GRADAUDIT_ACTION_ARGS:-}"
  rm -f "$split"
  echo "exit-code=2" >> "$output"
  exit 2
fi
extra=()
while IFS= read -r -d '' word; do extra+=("$word"); done < "$split"  # bash 3.2 has no mapfile
rm -f "$split"

junit="${GRADAUDIT_ACTION_JUNIT:-}"
json="${GRADAUDIT_ACTION_JSON:-}"
html="${GRADAUDIT_ACTION_HTML:-}"
chart="${GRADAUDIT_ACTION_CHART:-false}"
if [ -z "$json" ] && { [ -n "$html" ] || [ "$chart" = "true" ]; }; then
  json="$(mktemp -d "${RUNNER_TEMP:-/tmp}/gradaudit.XXXXXX")/gradaudit.json"  # HTML's source
  keep_json=false
else
  keep_json=true
fi
for path in "$junit" "$json" "$html"; do
  if [ -n "$path" ]; then mkdir -p "$(dirname "$path")"; fi
done

command=(gradaudit run "${expanded[@]}" ${extra[@]+"${extra[@]}"})
if [ -n "$junit" ]; then command+=(--junit-xml "$junit"); fi
if [ -n "$json" ]; then command+=(--json "$json"); fi
echo "+ ${command[*]}"
"${command[@]}"
status=$?

# The HTML report and the charts come from the JSON, when the run wrote one (exit 2 stops
# before it does). A report that was asked for and cannot be written fails a green run.
if [ -n "$json" ] && [ -s "$json" ]; then
  if [ -n "$html" ] && ! python -m gradaudit.ci html "$json" "$html"; then
    echo "::error title=gradaudit::could not write the HTML report $html"
    if [ "$status" -eq 0 ]; then status=2; fi
  fi
  if [ "$chart" = "true" ] && [ -n "${GITHUB_STEP_SUMMARY:-}" ]; then
    python -m gradaudit.ci chart "$json" --no-failures --append "$GITHUB_STEP_SUMMARY" \
      || echo "::warning title=gradaudit::could not append the budget charts to the job summary"
  fi
fi

files=()
{
  echo "exit-code=$status"
  for name in junit json html; do
    path="${!name}"
    if [ "$name" = json ] && [ "$keep_json" = false ]; then path=""; fi
    if [ -n "$path" ] && [ -f "$path" ]; then
      echo "$name=$path"
      files+=("$path")
    else
      echo "$name="
    fi
  done
  echo "files<<GRADAUDIT_FILES_END"
  if [ "${#files[@]}" -gt 0 ]; then printf '%s\n' "${files[@]}"; fi
  echo "GRADAUDIT_FILES_END"
} >> "$output"

exit "$status"
