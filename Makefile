# ModelYard: `make run` installs everything into .venv and starts the server with a demo model;
# `make test` installs the test extras (and Chromium, for the browser tests) and runs the whole suite.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip -q --disable-pip-version-check
PORT   ?= 8000

.PHONY: install install-test run test bench clean

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: $(VENV)/bin/python pyproject.toml
	$(PIP) install "torch==2.13.0"
	$(PIP) install -e .
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed
	$(PIP) install -e ".[test]"
	touch $@

# The browser tests (tests/browser) drive Debian's Chromium; installed once, as root or through sudo.
CHROMIUM := /usr/bin/chromium
$(CHROMIUM):
	@if [ "$$(id -u)" = 0 ]; then APT="apt-get"; elif command -v sudo >/dev/null; then APT="sudo apt-get"; \
	else echo "The browser tests need Chromium at $(CHROMIUM): install Debian's chromium package"; exit 1; fi; \
	export DEBIAN_FRONTEND=noninteractive; \
	$$APT install -y -q chromium >/dev/null 2>&1 || { $$APT update -q >/dev/null && $$APT install -y -q chromium >/dev/null; }

install: $(VENV)/.installed

install-test: $(VENV)/.installed-test

run: install
	$(VENV)/bin/modelyard serve --demo --port $(PORT)

test: install-test $(CHROMIUM)
	$(PY) -m pytest -q

bench: install-test
	$(PY) bench/serving_rest.py

clean:
	rm -rf $(VENV) modelyard-data
