# `make run` and `make test` each set up .venv on first use (torch first, so pip
# never pulls a multi-GB CUDA build on a CPU machine), then do their job.
PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch==2.13.0
BIN := $(VENV)/bin

.PHONY: run test lint pytest setup clean

$(BIN)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/python -m pip install -q "$(TORCH)"
	$(BIN)/python -m pip install -q -e ".[dev]"
	touch $@

setup: $(BIN)/.installed

run: setup
	$(BIN)/gradaudit run specs/charrnn.yaml

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

# Lint and pytest side by side: mypy's cold start (~25 s on one core) overlaps the tests.
test: setup
	$(MAKE) --no-print-directory -j2 lint pytest

# --max-worker-restart 0: a worker that dies fails the run at once (xdist's loadfile
# scheduling can hang forever replacing a crashed worker: pytest-xdist issue 784).
pytest: setup
	$(BIN)/python -m pytest -m "not slow" -n auto --dist loadfile --max-worker-restart 0

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache reports
