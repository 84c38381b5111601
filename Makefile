# graft: two commands set everything up (`make setup`) and test it (`make test`).
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# root installs system packages directly; anyone else through sudo
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: setup system-deps venv test test-fast lint demo bench clean

setup: system-deps venv ## create the environment from nothing

system-deps: ## Java 17 for TorchServe, Fashion-MNIST for the demo, Chromium for the console's browser tests (Debian)
	@need=""; \
	if ! java -version 2>&1 | grep -qE 'version "(1[7-9]|2[0-9])'; then need="$$need openjdk-17-jre-headless"; fi; \
	if [ ! -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ]; then need="$$need dataset-fashion-mnist"; fi; \
	if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then need="$$need chromium chromium-driver"; fi; \
	if [ -n "$$need" ]; then \
		echo "installing:$$need"; \
		$(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends $$need; \
	fi

venv:
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'

lint: ## ruff, mypy on the packages, and the layer rules (import-linter)
	$(BIN)/ruff check graft training handlers admin tests bench
	$(BIN)/mypy
	$(BIN)/lint-imports

test: ## the whole suite (real TorchServe included)
	$(BIN)/python -m pytest -q

test-fast: ## everything but the slow trainings and the TorchServe integration tests
	$(BIN)/python -m pytest -q -m "not slow and not torchserve"

demo: ## train + export (+ serve + retrain) on Fashion-MNIST, offline
	$(BIN)/graft demo --workdir demo

bench: ## the training benchmark (full ants/bees set; minutes)
	$(BIN)/python bench/train_hymenoptera.py

clean:
	rm -rf demo .pytest_cache .mypy_cache .ruff_cache
