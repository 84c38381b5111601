#!/usr/bin/env bash
# Make a container engine usable for `make image` / `make image-test` on a Debian machine.
#
#   deploy/docker/podman-setup.sh          # as root, or a user with sudo; idempotent
#
# A working Docker (or an already configured podman) is left alone. Otherwise Debian's podman is
# installed from apt, with what it needs to build (buildah), run (runc), network (netavark,
# aardvark-dns, slirp4netns) and to make a base image without a registry (mmdebstrap, see
# deploy/docker/offline-base.sh), and configured through a drop-in that only this script writes:
#   - runc as the OCI runtime: crun fails on kernels whose cgroups are mounted in hybrid mode
#     ("cgroups in hybrid mode not supported");
#   - default ulimits no higher than this machine's hard limits: a container cannot raise them
#     ("setrlimit RLIMIT_NOFILE: Operation not permitted"), and podman's default asks for 1048576.
# Exit status: 0 ready, 3 no engine can be installed here (not Debian/Ubuntu, or neither root nor sudo),
# anything else a real failure.
set -euo pipefail

DROPIN=/etc/containers/containers.conf.d/50-graft.conf
PACKAGES=(podman buildah runc uidmap slirp4netns netavark aardvark-dns fuse-overlayfs
          containernetworking-plugins catatonit mmdebstrap)

say() { echo "podman-setup: $*" >&2; }

if docker info >/dev/null 2>&1; then
    say "docker works here; nothing to do"
    exit 0
fi

if [ "$(id -u)" = 0 ]; then
    SUDO=()
elif command -v sudo >/dev/null && sudo -n true 2>/dev/null; then
    SUDO=(sudo -n)
else
    say "neither root nor passwordless sudo: cannot install podman"
    exit 3
fi
if ! command -v apt-get >/dev/null || ! command -v dpkg-query >/dev/null; then
    say "no apt-get/dpkg here (not Debian or Ubuntu): install podman or Docker yourself"
    exit 3
fi

missing=()
for pkg in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q '^install ok installed$' || missing+=("$pkg")
done
if [ "${#missing[@]}" -gt 0 ]; then
    say "installing ${missing[*]}"
    "${SUDO[@]}" apt-get update -qq
    DEBIAN_FRONTEND=noninteractive "${SUDO[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

nofile=$(ulimit -Hn)
nproc=$(ulimit -Hu)
[ "$nofile" = unlimited ] && nofile=1048576
[ "$nproc" = unlimited ] && nproc=1048576
# podman's own processes (conmon, the runtime) run with at most kernel.pid_max processes: above it the
# container's setrlimit fails too (measured: pid_max 32768, host hard limit 96363, 32769 refused).
pid_max=$(cat /proc/sys/kernel/pid_max 2>/dev/null || echo "$nproc")
[ "$pid_max" -lt "$nproc" ] && nproc=$pid_max
want=$(cat <<CONF
# Written by graft's deploy/docker/podman-setup.sh; rerun it to rewrite.
[containers]
# Containers cannot raise their limits above the hard limits of podman's own processes here.
default_ulimits = ["nofile=${nofile}:${nofile}", "nproc=${nproc}:${nproc}"]

[engine]
# crun fails where cgroups are mounted in hybrid mode; runc works on v1, hybrid and v2.
runtime = "runc"
CONF
)
if [ "$(cat "$DROPIN" 2>/dev/null)" != "$want" ]; then
    "${SUDO[@]}" mkdir -p "$(dirname "$DROPIN")"
    printf '%s\n' "$want" | "${SUDO[@]}" tee "$DROPIN" >/dev/null
    say "wrote $DROPIN"
fi

# What podman will use now (the first container of `make image` proves the rest).
runtime=$("${SUDO[@]}" podman info --format '{{.Host.OCIRuntime.Name}}')
if [ "$runtime" != runc ]; then
    say "podman uses the OCI runtime '$runtime', not runc: is $DROPIN overridden?"
    exit 1
fi
say "podman $("${SUDO[@]}" podman version --format '{{.Client.Version}}') ready (runtime runc, nofile ${nofile}, nproc ${nproc})"
