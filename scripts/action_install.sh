#!/usr/bin/env bash
# The GitHub Action's install step (action.yml): torch from its index first, so that pip
# never pulls a multi-GB CUDA build onto a CPU runner, then gradaudit from the action's own
# checkout, then the workflow's extra packages (its plugins). An empty torch version keeps
# the torch already installed (a self-hosted GPU runner's own CUDA build).
#
# Reads (set by action.yml from its inputs; composite actions get no INPUT_* variables):
#   GITHUB_ACTION_PATH               the action's checkout (set by the runner)
#   GRADAUDIT_ACTION_TORCH_VERSION   e.g. 2.13.0, or empty
#   GRADAUDIT_ACTION_TORCH_INDEX_URL e.g. https://download.pytorch.org/whl/cpu, or empty
#   GRADAUDIT_ACTION_EXTRA_PACKAGES  pip requirement specifiers, space-separated
set -euo pipefail

python -m pip install --disable-pip-version-check --quiet --upgrade pip
if [ -n "${GRADAUDIT_ACTION_TORCH_VERSION:-}" ]; then
  index=()
  if [ -n "${GRADAUDIT_ACTION_TORCH_INDEX_URL:-}" ]; then
    index=(--index-url "$GRADAUDIT_ACTION_TORCH_INDEX_URL")
  fi
  python -m pip install --disable-pip-version-check --quiet \
    "torch==${GRADAUDIT_ACTION_TORCH_VERSION}" "${index[@]}"
fi
python -m pip install --disable-pip-version-check --quiet "${GITHUB_ACTION_PATH:?}"
if [ -n "${GRADAUDIT_ACTION_EXTRA_PACKAGES:-}" ]; then
  read -r -a extra <<< "$GRADAUDIT_ACTION_EXTRA_PACKAGES"
  python -m pip install --disable-pip-version-check --quiet "${extra[@]}"
fi
gradaudit --version
python -c "import torch; print('torch', torch.__version__)"
