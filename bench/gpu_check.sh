#!/usr/bin/env bash
# GPU check, in-process (no Java): (1) the serving handler — CUDA vs CPU answers, throughput for batch
# sizes 1/8/32/128 with GPU vs CPU JPEG decoding, GPU peak memory; (2) the training engine on CUDA
# (bf16 autocast, channels_last) vs the CPU. Runs from anywhere; under 5 minutes (hard limits below).
# Without CUDA it runs only the CPU parts and says so.
#
#   bench/gpu_check.sh [DATA_DIR] [gpu_check.py options]
#       DATA_DIR: ants/bees-style folder of JPEGs; default ../shared/data/hymenoptera (synthetic
#       images when absent). The training part needs DATA_DIR/{train,val}/<label> and the MobileNetV2
#       weights at ../shared/weights/mobilenet_v2_imagenet.pth (skipped without them).
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-.venv/bin/python}"
[ -x "$PY" ] || PY=python3
DATA="${1:-../shared/data/hymenoptera}"
WEIGHTS=../shared/weights/mobilenet_v2_imagenet.pth
status=0
timeout 200 "$PY" bench/gpu_check.py "$@" || status=$?
if [ -d "$DATA/train" ] && [ -f "$WEIGHTS" ]; then
    timeout 90 "$PY" bench/gpu_train_check.py "$DATA" "$WEIGHTS" --epochs 5 || status=$?
else
    echo "training check skipped: needs $DATA/train and $WEIGHTS"
fi
exit "$status"
