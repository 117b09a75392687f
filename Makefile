# ModelYard: `make run` installs everything into .venv and starts the server with a demo model;
# `make test` installs the test extras (and Chromium and Prometheus, for the browser and monitoring
# tests) and runs the whole suite.
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

# Debian packages the tests drive, installed once, as root or through sudo: Chromium for the browser
# tests (tests/browser); Prometheus (promtool and the server) for the monitoring tests. On a machine
# with systemd, Debian's prometheus package also enables its own service on :9090
# (`systemctl disable --now prometheus` if you do not want it).
define apt_install
	@if [ "$$(id -u)" = 0 ]; then APT="apt-get"; elif command -v sudo >/dev/null; then APT="sudo apt-get"; \
	else echo "The tests need $@: install Debian's $(1) package"; exit 1; fi; \
	export DEBIAN_FRONTEND=noninteractive; \
	$$APT install -y -q $(2) $(1) >/dev/null 2>&1 || \
	{ $$APT update -q >/dev/null && $$APT install -y -q $(2) $(1) >/dev/null; }
endef
CHROMIUM := /usr/bin/chromium
PROMTOOL := /usr/bin/promtool
$(CHROMIUM):
	$(call apt_install,chromium)
$(PROMTOOL):
	$(call apt_install,prometheus,--no-install-recommends)

install: $(VENV)/.installed

install-test: $(VENV)/.installed-test

run: install
	$(VENV)/bin/modelyard serve --demo --port $(PORT)

test: install-test $(CHROMIUM) $(PROMTOOL)
	$(PY) -m pytest -q

bench: install-test
	$(PY) bench/serving_rest.py

clean:
	rm -rf $(VENV) modelyard-data
