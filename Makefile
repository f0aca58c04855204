# Developer tasks. `make demo` and `make test` work on a fresh machine with Python 3 and make:
# they create .venv and install rnnkit with the extras they need when missing or stale.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.rnnkit-installed

.PHONY: demo test lint typecheck bench clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m rnnkit_cli demo

lint: $(STAMP)
	$(PY) -m ruff check rnnkit rnnkit_cli export serving tests bench

typecheck: $(STAMP)
	$(PY) -m mypy export serving rnnkit_cli

test: lint typecheck
	$(PY) -m pytest -q

bench: $(STAMP)
	$(PY) bench/train_step.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
