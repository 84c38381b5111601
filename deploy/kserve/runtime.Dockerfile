# syntax=docker/dockerfile:1
# KServe's stock TorchServe runtime image plus graft's handler dependencies, pinned
# (deploy/kserve/requirements.txt): pods start without running pip. Build and push it, then name it in
# deploy/kserve/servingruntime.yaml:
#   docker build -f deploy/kserve/runtime.Dockerfile -t registry.example.com/graft-kserve-torchserve:0.12.0-gpu .
ARG KSERVE_TORCHSERVE_IMAGE=pytorch/torchserve-kfs:0.12.0-gpu
FROM ${KSERVE_TORCHSERVE_IMAGE}
COPY deploy/kserve/requirements.txt /tmp/graft-requirements.txt
RUN python -m pip install --no-cache-dir -r /tmp/graft-requirements.txt
