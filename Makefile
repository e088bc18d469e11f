# Two commands do everything on a fresh machine (both are safe to re-run):
#   make run    start the service under gunicorn on the shipped model
#   make test   run the whole test suite (installs what the tests need first)
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
PORT ?= 8000
MODEL_PATH ?= saved_models/ham10000_mobilenetv2.h5

.PHONY: run test test-fast install install-test browser lint train evaluate bench clean

$(VENV)/.installed: setup.cfg pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -e .
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed setup.cfg
	$(PIP) install -q -e '.[test,dev]'
	touch $@

install: $(VENV)/.installed

install-test: $(VENV)/.installed-test browser

# The browser tests drive Debian's Chromium through Playwright (its own browser download fails offline).
browser:
	@if [ ! -x /usr/bin/chromium ]; then \
	  echo "installing Debian chromium for the browser tests"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && $$SUDO DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium poppler-utils >/dev/null; \
	fi

run: $(VENV)/.installed
	@if [ ! -f "$(MODEL_PATH)" ]; then \
	  echo "error: no model at $(MODEL_PATH). Train one: make train (see README 'Training'), or set MODEL_PATH."; exit 1; fi
	SECRET_KEY=$${SECRET_KEY:-$$($(PY) -c 'import secrets; print(secrets.token_hex(32))')} \
	MODEL_PATH=$(MODEL_PATH) PORT=$(PORT) $(VENV)/bin/gunicorn -c gunicorn.conf.py wsgi:app

test: install-test
	$(PY) -m pytest

test-fast: install-test
	$(PY) -m pytest -m "not slow"

lint: install-test
	$(VENV)/bin/flake8 server training tests bench wsgi.py gunicorn.conf.py

train: $(VENV)/.installed
	$(PY) -m training.train --data-dir ../shared/data/ham10000 \
	  --weights ../shared/weights/mobilenet_v2_1.0_224_imagenet_no_top.h5 --out-dir runs/latest

bench: $(VENV)/.installed
	$(PY) bench/bench_predict.py --start --model $(MODEL_PATH)

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
