#!/usr/bin/env bash
# The base image for machines that reach a Debian mirror and a Python package index, but no image
# registry (air-gapped CI, this project's build machines): a Debian bookworm minbase root file system
# made with mmdebstrap (or debootstrap) from the mirror apt already uses, imported into the engine,
# and Debian's python3 on top (deploy/docker/python-base.Dockerfile).
#
#   deploy/docker/offline-base.sh                      # podman (ENGINE=docker works the same)
#   make image OFFLINE=1                               # builds the Dockerfile FROM it
#
# Prints the Python base image's name on stdout. Nothing is made again when it exists (FORCE=1 remakes).
# Environment: ENGINE, DEBIAN_MIRROR / DEBIAN_SECURITY_MIRROR (default: what apt on this machine uses),
# DEBIAN_IMAGE, PYTHON_BASE_IMAGE (the names of the two images).
set -euo pipefail
cd "$(dirname "$0")"

ENGINE=${ENGINE:-podman}
SUITE=bookworm
DEBIAN_IMAGE=${DEBIAN_IMAGE:-localhost/graft-debian:$SUITE}
PYTHON_BASE_IMAGE=${PYTHON_BASE_IMAGE:-localhost/graft-python:3.11-$SUITE}
say() { echo "offline-base: $*" >&2; }

if [ -z "${FORCE:-}" ] && "$ENGINE" image inspect "$PYTHON_BASE_IMAGE" >/dev/null 2>&1; then
    echo "$PYTHON_BASE_IMAGE"
    exit 0
fi

# The mirrors apt uses here, unless given.
mirror_of() {  # suite -> the URI apt fetches its main component from
    # shellcheck disable=SC2016  # apt's own $(FIELD) syntax, not the shell's
    apt-get indextargets --format '$(RELEASE) $(COMPONENT) $(REPO_URI)' 2>/dev/null \
        | awk -v s="$1" '$1 == s && $2 == "main" { print $3; exit }'
}
DEBIAN_MIRROR=${DEBIAN_MIRROR:-$(mirror_of "$SUITE")}
DEBIAN_MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
DEBIAN_SECURITY_MIRROR=${DEBIAN_SECURITY_MIRROR:-$(mirror_of "$SUITE-security")}
DEBIAN_SECURITY_MIRROR=${DEBIAN_SECURITY_MIRROR:-http://deb.debian.org/debian-security}
SOURCES=(
    "deb ${DEBIAN_MIRROR%/} $SUITE main"
    "deb ${DEBIAN_MIRROR%/} $SUITE-updates main"
    "deb ${DEBIAN_SECURITY_MIRROR%/} $SUITE-security main"
)

if [ -n "${FORCE:-}" ] || ! "$ENGINE" image inspect "$DEBIAN_IMAGE" >/dev/null 2>&1; then
    work=$(mktemp -d)
    trap 'rm -rf "$work"' EXIT
    say "minbase $SUITE from ${DEBIAN_MIRROR} (and ${DEBIAN_SECURITY_MIRROR})"
    if command -v mmdebstrap >/dev/null; then
        # Like the official slim images: no manuals, docs (but copyrights), locales or info pages, and
        # apt keeps neither the downloaded packages nor its binary caches in the image's layers.
        mmdebstrap --quiet --variant=minbase --format=tar \
            --aptopt='DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; }' \
            --aptopt='APT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; }' \
            --aptopt='Dir::Cache::pkgcache ""' \
            --aptopt='Dir::Cache::srcpkgcache ""' \
            --aptopt='Acquire::Languages "none"' \
            --dpkgopt='path-exclude=/usr/share/man/*' \
            --dpkgopt='path-exclude=/usr/share/doc/*' \
            --dpkgopt='path-include=/usr/share/doc/*/copyright' \
            --dpkgopt='path-exclude=/usr/share/info/*' \
            --dpkgopt='path-exclude=/usr/share/locale/*' \
            --dpkgopt='path-exclude=/usr/share/groff/*' \
            --dpkgopt='path-exclude=/usr/share/lintian/*' \
            "$SUITE" "$work/rootfs.tar" "${SOURCES[@]}"
    elif command -v debootstrap >/dev/null; then
        debootstrap --variant=minbase "$SUITE" "$work/rootfs" "${DEBIAN_MIRROR%/}" >&2
        printf '%s\n' "${SOURCES[@]}" > "$work/rootfs/etc/apt/sources.list"
        rm -rf "$work/rootfs/var/cache/apt/archives/"*.deb "$work/rootfs/var/lib/apt/lists/"*
        tar -C "$work/rootfs" -cf "$work/rootfs.tar" .
    else
        say "neither mmdebstrap nor debootstrap is installed (deploy/docker/podman-setup.sh installs mmdebstrap)"
        exit 1
    fi
    "$ENGINE" import --change 'CMD ["bash"]' "$work/rootfs.tar" "$DEBIAN_IMAGE" >/dev/null
    say "imported $DEBIAN_IMAGE"
fi

build=("$ENGINE" build --tag "$PYTHON_BASE_IMAGE" --build-arg "DEBIAN_IMAGE=$DEBIAN_IMAGE" --file python-base.Dockerfile)
[ "$(basename "$ENGINE")" = podman ] && build+=(--format docker)
"${build[@]}" . >&2
say "built $PYTHON_BASE_IMAGE"
echo "$PYTHON_BASE_IMAGE"
