# The Python base for air-gapped builds: Debian's own python3 (3.11 in bookworm) on the minbase root
# file system that deploy/docker/offline-base.sh makes and imports. It stands in for the official
# python:3.11-slim-bookworm, which the Dockerfile uses where a registry is reachable.
ARG DEBIAN_IMAGE=localhost/graft-debian:bookworm
FROM ${DEBIAN_IMAGE}
ENV LANG=C.UTF-8
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv python-is-python3 ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && python --version
CMD ["python3"]
