# Every target creates .venv and installs the project into it when missing.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
SYSDEPS := $(VENV)/.system-packages
# Debian packages the apps read at run time (WordNet for KeNet's knowledge retriever, espeak-ng for
# the HuBERTopic speech corpus).
SYSTEM_PACKAGES := wordnet-base espeak-ng
APP ?= ptrnet
ARGS ?=
CKPT ?=
FORMAT ?= both
BENCH_OUT ?= bench/results

export PYTHONUNBUFFERED := 1
export HYDRA_FULL_ERROR := 1

.PHONY: setup train sweep export eval bench test test-all lint clean

$(SYSDEPS): Makefile
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@missing=""; for p in $(SYSTEM_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
		echo "installing Debian packages:$$missing"; \
		if [ "$$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi; \
		$$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing \
			|| { echo "could not install:$$missing (apt-get failed)" >&2; exit 1; }; \
	fi
	@touch $(SYSDEPS)

$(STAMP): pyproject.toml $(SYSDEPS)
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check --upgrade "pip>=24" setuptools wheel
	$(PY) -m pip install -q --disable-pip-version-check -e '.[dev,lkh]'
	@touch $(STAMP)

setup: $(STAMP)

train: $(STAMP)
	$(PY) -m apps.train app=$(APP) $(ARGS)

sweep: $(STAMP)
	$(PY) -m apps.train --multirun app=$(APP) $(ARGS)

export: $(STAMP)
	@test -n "$(CKPT)" || { echo "make export needs CKPT=path/to/checkpoint.ckpt" >&2; exit 2; }
	$(PY) -m apps.export app=$(APP) ckpt_path=$(abspath $(CKPT)) export.format=$(FORMAT) $(ARGS)

eval: $(STAMP)
	@test -n "$(CKPT)" || { echo "make eval needs CKPT=path/to/checkpoint.ckpt" >&2; exit 2; }
	$(PY) -m apps.eval app=$(APP) ckpt_path=$(abspath $(CKPT)) $(ARGS)

# `make bench`: attention backends and mechanisms; `make bench APP=<app>`: that app's benchmark.
bench: $(STAMP)
ifeq ($(origin APP),command line)
	$(PY) -m bench.$(APP) --out $(BENCH_OUT) $(ARGS)
else
	$(PY) -m bench.run --out $(BENCH_OUT) $(ARGS)
	$(PY) -m bench.mechanisms --out $(BENCH_OUT)
	$(PY) -m bench.kernels --out $(BENCH_OUT)
endif

test: $(STAMP)
	$(PY) -m pytest -q

test-all: $(STAMP)
	$(PY) -m pytest -q -m "not gpu or gpu"

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check --diff . >/dev/null || { echo "run: .venv/bin/ruff format ." >&2; exit 1; }

clean:
	rm -rf outputs multirun .pytest_cache .ruff_cache build *.egg-info
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
