# graft: two commands set everything up (`make setup`) and test it (`make test`).
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# root installs system packages directly; anyone else through sudo
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

# The container image (deploy/docker/build.sh): VARIANT cpu|gpu, OFFLINE auto|1|0 (1: no image registry).
VARIANT ?= cpu
IMAGE ?= graft:0.1.0-$(VARIANT)
OFFLINE ?= auto

.PHONY: setup system-deps venv test test-fast lint docs demo bench clean engine image image-test

setup: system-deps venv ## create the environment from nothing

# Debian's prometheus package (for promtool) also starts a Prometheus server where systemd runs: disabled again.
system-deps: ## Java 17 for TorchServe, Fashion-MNIST for the demo, Chromium for the console's browser tests, promtool for the alert tests (Debian)
	@need=""; \
	if ! java -version 2>&1 | grep -qE 'version "(1[7-9]|2[0-9])'; then need="$$need openjdk-17-jre-headless"; fi; \
	if [ ! -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ]; then need="$$need dataset-fashion-mnist"; fi; \
	if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then need="$$need chromium chromium-driver"; fi; \
	if ! command -v promtool >/dev/null; then need="$$need prometheus"; fi; \
	if [ -n "$$need" ]; then \
		echo "installing:$$need"; \
		$(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends $$need || exit 1; \
		case "$$need" in *prometheus*) $(SUDO) systemctl disable --now prometheus >/dev/null 2>&1 || true;; esac; \
	fi

venv:
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -c constraints.txt -e '.[dev,docs]'

lint: ## ruff, mypy on the packages, the layer rules (import-linter), and the docs site built strictly
	$(BIN)/ruff check graft training handlers admin tests bench deploy/docker deploy/monitoring deploy/kubeflow docs/hooks
	$(BIN)/mypy
	$(BIN)/mypy docs/hooks/reference.py
	$(BIN)/lint-imports
	$(MAKE) docs

docs: ## the documentation site (MkDocs, offline); a broken link or anchor fails; DOCS_DIR=... to keep it
	@out=$${DOCS_DIR:-$$(mktemp -d)}; NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict -d "$$out"; rc=$$?; \
	if [ -z "$$DOCS_DIR" ]; then rm -rf "$$out"; else echo "docs built in $$out"; fi; exit $$rc

test: ## the whole suite (real TorchServe included), but not the container image (make image-test)
	$(BIN)/python -m pytest -q -m "not image"

test-fast: ## everything but the slow trainings, the TorchServe integration tests and the image
	$(BIN)/python -m pytest -q -m "not slow and not torchserve and not image"

engine: ## podman from apt, configured for this kind of machine, unless podman or Docker already works
	deploy/docker/podman-setup.sh

image: ## build the container image with podman or Docker (VARIANT=cpu|gpu, IMAGE=..., OFFLINE=auto|1|0)
	VARIANT=$(VARIANT) IMAGE=$(IMAGE) OFFLINE=$(OFFLINE) PYTHON=$(PYTHON) deploy/docker/build.sh

image-test: image ## build the image, then run it as a user and as Kubernetes would (tests/container; minutes)
	GRAFT_IMAGE=$(IMAGE) GRAFT_IMAGE_REQUIRED=1 $(BIN)/python -m pytest -q -m image tests/container

demo: ## train + export (+ serve + retrain) on Fashion-MNIST, offline (PORT_BASE=N: serve on ports N..N+4 and N+10)
	$(BIN)/graft demo --workdir demo $(if $(PORT_BASE),--port-base $(PORT_BASE))

bench: ## the training benchmark (full ants/bees set; minutes)
	$(BIN)/python bench/train_hymenoptera.py

clean:
	rm -rf demo .pytest_cache .mypy_cache .ruff_cache
