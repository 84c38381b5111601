#!/usr/bin/env bash
# Print the container engine to build and run graft's image with: $ENGINE when set, else podman when
# it works, else docker when its daemon answers. Exit 3, with the reason on stderr, when there is none
# (deploy/docker/podman-setup.sh installs podman on Debian).
set -euo pipefail
if [ -n "${ENGINE:-}" ]; then
    echo "$ENGINE"
    exit 0
fi
for engine in podman docker; do
    if command -v "$engine" >/dev/null && "$engine" info >/dev/null 2>&1; then
        echo "$engine"
        exit 0
    fi
done
echo "no container engine: neither podman nor a Docker daemon answers here (deploy/docker/podman-setup.sh installs podman on Debian)" >&2
exit 3
