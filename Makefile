# The front door: `make dev` runs the whole system, `make test` runs every check.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: install dev test lint typecheck pytest bench bench-full clean

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

dev: install  ## Redis, mail catcher, worker, Flower and API on this machine; Ctrl-C stops all
	$(VENV)/bin/neoforge dev

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

typecheck: install
	$(VENV)/bin/mypy

pytest: install
	./scripts/system-deps.sh
	$(VENV)/bin/pytest

test: lint typecheck pytest  ## everything CI runs

bench: install  ## the benchmark, quick mode (a few minutes): table on stdout, JSON in bench/results/
	$(PY) -m bench.run --quick

bench-full: install
	$(PY) -m bench.run --full

clean:
	rm -rf $(VENV) .dev .pytest_cache .mypy_cache .ruff_cache *.egg-info
