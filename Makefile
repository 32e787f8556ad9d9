# Two commands on a fresh machine: `make train` and `make test`. Each creates or refreshes .venv
# first; the stamp makes a second run install nothing.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp
CONFIG ?= experiments/tiny.yaml

.PHONY: venv train test test-fast ui bench clean

$(STAMP): pyproject.toml requirements.lock
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -c requirements.lock -e '.[dev,gpu]'
	@touch $(STAMP)

venv: $(STAMP)

train: $(STAMP)
	$(VENV)/bin/attnrl train --config $(CONFIG)

test: $(STAMP)
	$(PY) -m pytest -q

test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow"

ui: $(STAMP)
	$(VENV)/bin/attnrl ui

bench: $(STAMP)
	$(PY) bench/fci.py --quick
	$(PY) bench/rollout.py
	$(PY) bench/verify.py

clean:
	rm -rf runs .pytest_cache
