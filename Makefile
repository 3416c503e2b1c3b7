# `make demo` and `make test` set everything up on a fresh machine, then run.
VENV ?= .venv
PYTHON := $(VENV)/bin/python
INSTALLED := $(VENV)/.installed
FMNIST_DIR := /usr/share/datasets/fashion-mnist
FORTUNES_DIR := /usr/share/games/fortunes
JARGON_FILE := /usr/share/doc/jargon-text/jargon.txt.gz
WORDNET_DIR := /usr/share/wordnet

.PHONY: setup data demo test test-fast clean

$(PYTHON):
	python3 -m venv $(VENV)

$(INSTALLED): pyproject.toml | $(PYTHON)
	$(PYTHON) -m pip install --quiet --upgrade pip
	$(PYTHON) -m pip install --quiet -e '.[dev,deploy,lm,track,tasks]'
	touch $(INSTALLED)

# Fashion-MNIST (dataset-fashion-mnist), the reference LMs' English corpora (fortunes; jargon-text for
# lm_medium) and WordNet (wordnet-base: eval.tasks=[wordnet_definitions]) from Debian where we can install
# them (root + apt).
data:
	@missing=""; \
	[ -e $(FMNIST_DIR)/t10k-images-idx3-ubyte.gz ] || missing="$$missing dataset-fashion-mnist"; \
	[ -e $(FORTUNES_DIR)/fortunes ] || missing="$$missing fortunes"; \
	[ -e $(JARGON_FILE) ] || missing="$$missing jargon-text"; \
	[ -e $(WORDNET_DIR)/data.noun ] || missing="$$missing wordnet-base"; \
	if [ -n "$$missing" ] && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	fi

setup: $(INSTALLED) data

demo: setup
	$(VENV)/bin/starfish run

test: setup
	$(PYTHON) -m pytest -q -n auto --maxprocesses=4 --dist worksteal  # a worker per core; idle ones take queued tests

# the pure functions and in-process tests, without the slow ones (a CLI subprocess, a whole stage)
test-fast: setup
	$(PYTHON) -m pytest -q -n auto --maxprocesses=4 --dist worksteal -m "not slow"

clean:
	rm -rf outputs multirun .pytest_cache
