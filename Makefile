# Two commands do everything on a fresh machine (both are safe to re-run):
#   make run    start the service under gunicorn on the shipped model
#   make test   run the whole test suite (installs what the tests need first)
# Both install the versions pinned in constraints.txt; `make lock` refreshes it from setup.cfg.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
PORT ?= 8000
MODEL_PATH ?= saved_models/ham10000_mobilenetv2.h5
# The browser tests need these two (Debian's chromium and poppler-utils); `make browser` installs them when missing.
CHROMIUM ?= /usr/bin/chromium
PDFTOPPM ?= /usr/bin/pdftoppm
BROWSER_PACKAGES := chromium poppler-utils
# The scale-out test (tests/test_scale_out.py) runs Debian's nginx and redis-server; `make services` installs them when missing.
NGINX ?= /usr/sbin/nginx
REDIS_SERVER ?= /usr/bin/redis-server
SERVICE_PACKAGES := nginx redis-server
# The everyday corpus of the non-skin check (training/nonskin_everyday.py) reads the photographs these Debian
# packages ship (OpenCV's sample photos, Tux Paint's photographed stamps, KDE's wallpapers); `make corpus`
# installs them when missing. Without them the corpus tests skip and the corpus is PyPI's 27 photos.
OPENCV_PHOTOS ?= /usr/share/doc/opencv-doc/examples/data/fruits.jpg
TUXPAINT_STAMPS ?= /usr/share/tuxpaint/stamps/food/pizza.png
KDE_WALLPAPERS ?= /usr/share/wallpapers/Path/contents/images/640x480.jpg
CORPUS_PACKAGES := opencv-doc tuxpaint-stamps-default plasma-workspace-wallpapers
# Each step that can fail says in one line what failed and what to run by hand.
fail = { echo "error: $(1)" >&2; exit 1; }

.PHONY: run test test-fast install install-test browser services corpus lock lint train chain evaluate bench quantize clean

$(PY):
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null \
	  || $(call fail,this service needs Python 3.11 or newer and '$(PYTHON)' is $$($(PYTHON) -V 2>&1); install python3.11+ and run: make PYTHON=python3.11 $(MAKECMDGOALS))
	@$(PYTHON) -m venv $(VENV) \
	  || { rm -rf $(VENV); $(call fail,could not create $(VENV) with $(PYTHON); on Debian/Ubuntu run: apt-get install -y python3-venv; then re-run make); }

$(VENV)/.installed: setup.cfg pyproject.toml constraints.txt | $(PY)
	@$(PIP) install -q --upgrade pip && $(PIP) install -q -c constraints.txt -e . \
	  || $(call fail,installing the service into $(VENV) failed (see above); by hand: $(PIP) install -c constraints.txt -e .)
	@touch $@

# The tests hold the non-skin check to the corpus training fits it on, so they install the train extra too.
$(VENV)/.installed-test: $(VENV)/.installed setup.cfg constraints.txt
	@$(PIP) install -q -c constraints.txt -e '.[train,test,dev]' \
	  || $(call fail,installing the test extras failed (see above); by hand: $(PIP) install -c constraints.txt -e '.[train,test,dev]')
	@touch $@

# Training fits the non-skin check on the everyday corpus, whose first photographs come from scikit-image:
# without it the check would be fitted on 24 fewer photos than the tests hold it to, with no error.
$(VENV)/.installed-train: $(VENV)/.installed setup.cfg constraints.txt
	@$(PIP) install -q -c constraints.txt -e '.[train]' \
	  || $(call fail,installing the training extras failed (see above); by hand: $(PIP) install -c constraints.txt -e '.[train]')
	@touch $@

install: $(VENV)/.installed

install-test: $(VENV)/.installed-test browser services corpus

# Installs Debian packages $(1) when any of the files $(2) fails the test $(4) (default -x: programs; -f for data
# files), as root or through sudo, for $(3).
define apt_install
@if ! (for f in $(2); do [ $(or $(4),-x) "$$f" ] || exit 1; done); then \
	  if [ "$$(id -u)" = 0 ]; then SUDO=; \
	  elif command -v sudo >/dev/null; then SUDO=sudo; \
	  else $(call fail,$(1) are missing and installing them needs root or sudo; as root run: apt-get install -y $(1)); fi; \
	  echo "installing Debian's $(1) for $(3)"; \
	  $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -qq \
	    && $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(1) >/dev/null \
	    || $(call fail,apt-get could not install $(1) (see above); by hand: $${SUDO:+sudo }apt-get update && $${SUDO:+sudo }apt-get install -y $(1)); \
	fi
endef

# The browser tests drive Debian's Chromium through Playwright (its own browser download fails offline);
# the PDF checks render pages with poppler's pdftoppm. Installs both when either is missing.
browser:
	$(call apt_install,$(BROWSER_PACKAGES),$(CHROMIUM) $(PDFTOPPM),the browser tests)

# nginx in front of several gunicorn instances, Redis for their shared rate limit (deploy/stack.py).
services:
	$(call apt_install,$(SERVICE_PACKAGES),$(NGINX) $(REDIS_SERVER),the scale-out test)

# Photographs from Debian's packages for the non-skin check's everyday corpus (none is copied into the repo).
corpus:
	$(call apt_install,$(CORPUS_PACKAGES),$(OPENCV_PHOTOS) $(TUXPAINT_STAMPS) $(KDE_WALLPAPERS),the non-skin corpus,-f)

# Refresh constraints.txt: the newest versions setup.cfg allows, pinned for the Python that runs it
# (3.11 on x86-64 Linux here). Then `make test`, and commit constraints.txt with what it changed.
lock: | $(PY)
	$(PIP) install -q pip-tools
	$(VENV)/bin/pip-compile -q --upgrade --extra train --extra test --extra dev --strip-extras --allow-unsafe \
	  --no-emit-index-url --no-emit-find-links -o constraints.txt setup.cfg

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

# Where the data and the ImageNet weights are, and where a run goes: `make train DATA_DIR=~/photos` trains on
# another folder of the same layout (README "Your own photos").
DATA_DIR ?= ../shared/data/ham10000
WEIGHTS_DIR ?= ../shared/weights
TRAIN_DIR ?= runs/latest
# Without that folder's files, Keras downloads its own ImageNet weights (needs the internet).
IMAGENET = $(if $(wildcard $(WEIGHTS_DIR)/mobilenet_v2_1.0_224_imagenet_no_top.h5),\
	  --weights $(WEIGHTS_DIR)/mobilenet_v2_1.0_224_imagenet_no_top.h5 \
	  --imagenet-weights $(WEIGHTS_DIR)/mobilenet_v2_1.0_224_imagenet_with_top.h5 \
	  --imagenet-labels $(WEIGHTS_DIR)/imagenet_labels.txt,\
	  --weights imagenet --imagenet-weights imagenet --imagenet-labels imagenet)
# A run cut off before it exported (its head trained, no card yet) is resumed, as make chain does.
RESUME = $(if $(wildcard $(TRAIN_DIR)/head.weights.h5),$(if $(wildcard $(TRAIN_DIR)/model_card.json),,--resume))
train: $(VENV)/.installed-train corpus
	$(PY) -m training.train --data-dir $(DATA_DIR) $(IMAGENET) --out-dir $(TRAIN_DIR) $(RESUME)

# The model chain (README "The model chain"): five lesion-grouped folds, their ensemble distilled into one
# student, its int8 graphs. Hours on 2 cores; resumable: rerun the same command after a cut.
CHAIN_DIR ?= ../runs/chain
chain: $(VENV)/.installed-train corpus
	$(PY) -m training.chain --data-dir $(DATA_DIR) $(IMAGENET) --out-dir $(CHAIN_DIR) --publish-dir saved_models/folds

# Int8 graphs of the model in RUN_DIR, beside its .h5 and tied to it by sha256 in the card (training/quantize.py),
# then the accuracy bar against float32 on the test split, recorded in the card (INFERENCE_PRECISION=auto reads it).
RUN_DIR ?= saved_models
quantize: $(VENV)/.installed-train corpus
	$(PY) -m training.quantize --run-dir $(RUN_DIR) --data-dir $(DATA_DIR)
	$(PY) -m training.int8_bar --run-dir $(RUN_DIR) --data-dir $(DATA_DIR) --record

bench: $(VENV)/.installed
	$(PY) bench/bench_predict.py --start --model $(MODEL_PATH)

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
