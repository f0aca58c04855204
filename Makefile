# Developer tasks. `make demo` and `make test` work on a fresh machine with Python 3 and make:
# they create .venv and install rnnkit with the extras they need when missing or stale.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.rnnkit-installed

.PHONY: demo test lint typecheck imports docs bench bench-peers clean haproxy browser

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m rnnkit_cli demo

lint: $(STAMP)
	$(PY) -m ruff check rnnkit rnnkit_cli export serving tests bench

# mypy finds packages by folder name; the boxes' folders carry other names than their import names
# (pyproject's package-dir), so it reads them through links named as they are imported.
typecheck: $(STAMP)
	mkdir -p .typecheck && ln -sfn ../export .typecheck/rnnkit_export && ln -sfn ../serving .typecheck/rnnkit_serving
	MYPYPATH=.typecheck $(PY) -m mypy -p rnnkit_export -p rnnkit_serving -p rnnkit_cli

# The documentation site (mkdocs.yml, docs/) into site/, offline; --strict fails on a broken link or a missing page.
# mkdocstrings reads rnnkit_serving / rnnkit_export through the same import-named links as mypy; the hook
# docs/hooks/reference.py generates the CLI, REST, gRPC, limits and API references from the code.
docs: $(STAMP)
	mkdir -p .typecheck && ln -sfn ../export .typecheck/rnnkit_export && ln -sfn ../serving .typecheck/rnnkit_serving
	NO_MKDOCS_2_WARNING=1 TF_CPP_MIN_LOG_LEVEL=2 $(VENV)/bin/mkdocs build --strict

# The layer and dependency contracts of pyproject.toml ([tool.importlinter]).
imports: $(STAMP)
	$(VENV)/bin/lint-imports

# tests/test_scale_out.py runs replicas behind a real HAProxy: install it when missing and we are root
# (CI); elsewhere that test is skipped and says how to install it.
haproxy:
	@command -v haproxy >/dev/null 2>&1 || test -x /usr/sbin/haproxy || [ "$$(id -u)" != 0 ] || \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq haproxy) || true

# tests/test_browser.py opens the landing page and /docs in headless Chromium: install Debian's chromium and
# its driver when missing and we are root (CI); elsewhere those tests are skipped and say how to install them.
browser:
	@command -v chromedriver >/dev/null 2>&1 || [ "$$(id -u)" != 0 ] || \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver) || true

test: lint typecheck imports docs haproxy browser
	$(PY) -m pytest -q

bench: $(STAMP)
	$(PY) bench/train_step.py

# rnnkit vs MLServer vs KServe's Python server on one ONNX file, one client (bench/peers.py). The first run installs
# the peers into bench/out/peers-venv-* (package index, cached); PEERS_ARGS=--quick for a smoke run.
bench-peers: $(STAMP)
	nice -n 10 $(PY) bench/peers.py --install_only
	$(PY) bench/peers.py $(PEERS_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .typecheck site
