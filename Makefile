# `make demo` and `make test` set everything up on a fresh machine, then run.
VENV ?= .venv
PYTHON := $(VENV)/bin/python
INSTALLED := $(VENV)/.installed
FMNIST_DIR := /usr/share/datasets/fashion-mnist

.PHONY: setup data demo test clean

$(PYTHON):
	python3 -m venv $(VENV)

$(INSTALLED): pyproject.toml | $(PYTHON)
	$(PYTHON) -m pip install --quiet --upgrade pip
	$(PYTHON) -m pip install --quiet -e '.[dev,deploy]'
	touch $(INSTALLED)

# Fashion-MNIST from Debian's dataset-fashion-mnist where we can install it (root + apt).
data:
	@if [ ! -e $(FMNIST_DIR)/t10k-images-idx3-ubyte.gz ] && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist; \
	fi

setup: $(INSTALLED) data

demo: setup
	$(VENV)/bin/starfish run

test: setup
	$(PYTHON) -m pytest -q

clean:
	rm -rf outputs multirun .pytest_cache
