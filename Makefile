# ModelYard: `make run` installs everything into .venv and starts the server with a demo model;
# `make test` installs the test extras and runs the whole suite.
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

install: $(VENV)/.installed

install-test: $(VENV)/.installed-test

run: install
	$(VENV)/bin/modelyard serve --demo --port $(PORT)

test: install-test
	$(PY) -m pytest -q

bench: install-test
	$(PY) bench/serving_rest.py

clean:
	rm -rf $(VENV) modelyard-data
