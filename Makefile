# `make run` (the main job) and `make test` (the tests) from a fresh clone with nothing but Python and make.
# Each sets up .venv first and installs only what is missing, or what pyproject.toml or the lock changed since:
# a second call installs nothing. `make lock` refreshes the lock file; `make lint` runs ruff.
#
#   make run CONFIG=configs/b128.yaml        another config
#   make test PYTEST_ARGS="-m slow"          the slow tests
#   make test TEST_EXTRAS=dev,ray            with the Ray extra too, so that the Ray executor's tests run
#   make run TORCH="torch==2.13.0 --extra-index-url https://download.pytorch.org/whl/cpu"   the CPU build from its index

PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch==2.13.0
CONFIG ?= configs/b16.yaml
TEST_EXTRAS ?= dev
PYTEST_ARGS ?=

BIN := $(VENV)/bin
# The lock holds the versions of one Python minor version: that of the venv, or of the Python that will make it.
PYVER := $(shell $(if $(wildcard $(BIN)/python),$(BIN)/python,$(PYTHON)) -c 'import sys; print("%d.%d" % sys.version_info[:2])')
LOCK := requirements/lock-py$(PYVER).txt
CONSTRAIN := $(if $(wildcard $(LOCK)),-c $(LOCK))
PINNED := $(if $(CONSTRAIN),the versions in $(LOCK),the newest releases pyproject.toml allows (no $(LOCK)))
PIP := $(BIN)/python -m pip --quiet --disable-pip-version-check

.PHONY: run test lint lock

run: $(VENV)/.installed
	$(BIN)/python -m batchsize_lit fit --config $(CONFIG)

# pytest's exit status 5, no test collected, is a failure here: a filter that selects nothing tests nothing.
test: $(VENV)/.installed-$(TEST_EXTRAS)
	@echo "$(BIN)/python -m pytest $(PYTEST_ARGS)"
	@$(BIN)/python -m pytest $(PYTEST_ARGS) || { status=$$?; [ $$status -ne 5 ] || echo "pytest collected no tests: failing" >&2; exit $$status; }

lint: $(VENV)/.installed-$(TEST_EXTRAS)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

$(BIN)/python:
	@echo "make: creating $(VENV) with $(PYTHON) ($(PYVER))"
	@$(PYTHON) -m venv $(VENV)

# torch on its own and first: a bare torch requirement resolved together with the project picks the multi-GB CUDA
# build. A torch already in the venv, CPU or CUDA, is kept.
$(VENV)/.torch: | $(BIN)/python
	@if $(BIN)/python -c 'import importlib.util, sys; sys.exit(importlib.util.find_spec("torch") is None)'; then \
		echo "make: keeping the torch already in $(VENV)"; \
	else \
		echo "make: installing $(TORCH) (the CPU build where pip's index offers one)"; \
		$(PIP) install $(CONSTRAIN) $(TORCH); \
	fi
	@touch $@

$(VENV)/.installed: pyproject.toml $(wildcard $(LOCK)) | $(VENV)/.torch
	@echo "make: installing the project into $(VENV) with $(PINNED)"
	@$(PIP) install $(CONSTRAIN) -e .
	@touch $@

# The project with extras, e.g. .installed-dev; it covers the plain install too.
$(VENV)/.installed-%: pyproject.toml $(wildcard $(LOCK)) | $(VENV)/.torch
	@echo "make: installing the project with its $* extras into $(VENV) with $(PINNED)"
	@$(PIP) install $(CONSTRAIN) -e ".[$*]"
	@touch $@ $(VENV)/.installed

# The newest releases pyproject.toml allows (torch kept as it is), the fast tests against them, and the lock written
# from that environment only when they pass. The stamps go first: the venv no longer matches the old lock.
lock: $(VENV)/.installed-dev,ray
	@rm -f $(VENV)/.installed*
	@echo "make: upgrading $(VENV) to the newest releases pyproject.toml allows"
	@$(PIP) install --upgrade --upgrade-strategy eager -e ".[dev,ray]" \
		"torch==$$($(BIN)/python -c 'from importlib.metadata import version; print(version("torch"))')"
	@echo "make: running the tests against them"
	@$(BIN)/python -m pytest -q $(PYTEST_ARGS)
	@$(BIN)/python requirements/write_lock.py > $(LOCK).new && mv $(LOCK).new $(LOCK)
	@echo "make: wrote $(LOCK); commit it"
