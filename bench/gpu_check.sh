#!/usr/bin/env bash
# GPU check of the serving handler, in-process (no Java): CUDA vs CPU answers, throughput for batch
# sizes 1/8/32/128 with GPU vs CPU JPEG decoding, GPU peak memory. Runs from anywhere; finishes in
# under 5 minutes (hard limit below). Without CUDA it runs only the CPU parts and says so.
#
#   bench/gpu_check.sh [DATA_DIR]    # DATA_DIR: a folder of JPEGs; default ../shared/data/hymenoptera,
#                                    # synthetic images when that is absent
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-.venv/bin/python}"
[ -x "$PY" ] || PY=python3
exec timeout 290 "$PY" bench/gpu_check.py "$@"
