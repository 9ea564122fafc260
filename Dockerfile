# One image for every role of Pulse recursive training (design.md section 6):
#   operator     pulse-operator                        (the ENTRYPOINT)
#   driver       pulse-train --dask-scheduler-address tcp://SCHEDULER:8786 ...
#   scheduler    dask scheduler
#   worker       dask worker tcp://SCHEDULER:8786 ...
# Other roles replace the entrypoint (`docker run --entrypoint dask ...`, or `command:` in
# a pod spec). Build with hack/build-image.sh; docs/image.md has roles and figures.
#
# The base comes from a build argument because this project's machines have no image
# registry: hack/docker-setup.sh makes local/bookworm:min with debootstrap (no Python in
# it). Any Debian bookworm image works, e.g. --build-arg BASE_IMAGE=debian:bookworm-slim.
ARG BASE_IMAGE=local/bookworm:min

# ---------------------------------------------------------------------------------------
# python-base: Debian's Python 3.11 (bookworm's python3, the project's Python), shared by
# the build and runtime stages so the venv's interpreter path is the same in both.
FROM ${BASE_IMAGE} AS python-base

# Debian package pins; bump together with the base image's release.
ARG PYTHON3_DEB_VERSION=3.11.2-1+b1
ARG TINI_DEB_VERSION=0.19.0-1+b3

# Build-time only (an ARG, not ENV): apt never prompts, and the runtime image keeps no
# installer setting in its environment.
ARG DEBIAN_FRONTEND=noninteractive

ENV LANG=C.UTF-8 \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# No package lists, apt caches or dpkg logs are left in the layer.
RUN apt-get update \
    && apt-get install -y --no-install-recommends "python3=${PYTHON3_DEB_VERSION}" \
        "tini=${TINI_DEB_VERSION}" \
    && apt-get clean \
    && rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin /var/log/apt /var/log/dpkg.log

# ---------------------------------------------------------------------------------------
# deps: a venv at /opt/venv holding exactly the pinned runtime closure, nothing else.
FROM python-base AS deps

ARG DEBIAN_FRONTEND=noninteractive
ARG PYTHON3_DEB_VERSION=3.11.2-1+b1
RUN apt-get update \
    && apt-get install -y --no-install-recommends "python3-venv=${PYTHON3_DEB_VERSION}" \
    && apt-get clean \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /src

# Build tools live in their own venv; the runtime venv is made --without-pip and filled
# through `pip --python`, so neither pip nor setuptools ends up in the final image.
#
# Machines whose egress goes through a TLS-inspecting proxy trust an extra CA; the build
# gets the host's CA bundle as a BuildKit secret (hack/build-image.sh passes it), used by
# pip only and never stored in a layer. Without the secret pip uses its own bundle.
COPY docker/build-constraints.txt docker/constraints.txt docker/
RUN --mount=type=secret,id=ca-bundle,target=/run/secrets/ca-bundle \
    if [ -s /run/secrets/ca-bundle ]; then export PIP_CERT=/run/secrets/ca-bundle; fi \
    && python3 -m venv /opt/build-venv \
    && /opt/build-venv/bin/pip install --quiet -r docker/build-constraints.txt \
    && python3 -m venv --without-pip /opt/venv

# Binary wheels only: no compiler in the image, and a dependency without a wheel fails
# here loudly instead of building from source. Reused until docker/constraints.txt changes.
RUN --mount=type=secret,id=ca-bundle,target=/run/secrets/ca-bundle \
    if [ -s /run/secrets/ca-bundle ]; then export PIP_CERT=/run/secrets/ca-bundle; fi \
    && /opt/build-venv/bin/pip --python /opt/venv/bin/python install --quiet \
        --only-binary=:all: --no-deps -r docker/constraints.txt

# Test suites shipped inside dependencies are never imported at run time (~100 MB).
RUN find /opt/venv/lib/python3.11/site-packages -depth -type d -name tests \
        -path '*/site-packages/*/*' -exec rm -rf {} +

# ---------------------------------------------------------------------------------------
# build: the project's wheel, checked and staged for the runtime venv.
FROM deps AS build

# The whole context: .dockerignore lets in only pyproject.toml, README.md, the pins and the
# two package folders, so this copies operator/ when the tree has it and works without it.
COPY . ./
# 1. Build the wheel. 2. Install it with its operator extra resolved against the same pins
# (all already installed, so this fetches nothing) and check the venv's consistency.
# 3. Stage the same install under /opt/stage, so the runtime stage adds only the project's
# own files on top of the dependency layer: a code change then rebuilds and ships a few
# hundred KB instead of the whole 830 MB venv.
RUN --mount=type=secret,id=ca-bundle,target=/run/secrets/ca-bundle \
    if [ -s /run/secrets/ca-bundle ]; then export PIP_CERT=/run/secrets/ca-bundle; fi \
    && /opt/build-venv/bin/pip wheel --quiet --no-deps --no-build-isolation -w /wheels . \
    && wheel="$(echo /wheels/pulse_recursive_training-*.whl)" \
    && /opt/build-venv/bin/pip --python /opt/venv/bin/python install --quiet \
        --constraint docker/constraints.txt "${wheel}[operator]" \
    && /opt/build-venv/bin/pip --python /opt/venv/bin/python check \
    && /opt/build-venv/bin/pip --python /opt/venv/bin/python install --quiet --no-deps \
        --ignore-installed --root /opt/stage --prefix /opt/venv "${wheel}"

# ---------------------------------------------------------------------------------------
# runtime: Python, the venv and an unprivileged user; nothing else.
FROM python-base AS runtime

# uid/gid 10001 (the operator's pod specs run as 10001): no login shell, no home, and it
# owns no file of the image; everything it writes goes to /tmp (an emptyDir in Kubernetes,
# `--tmpfs /tmp` with docker), so the root filesystem can be mounted read-only.
RUN groupadd --gid 10001 pulse \
    && useradd --uid 10001 --gid 10001 --no-create-home --no-log-init \
        --home-dir /nonexistent --shell /usr/sbin/nologin pulse

COPY --from=deps /opt/venv /opt/venv
COPY --from=build /opt/stage/opt/venv/ /opt/venv/

# HOME, matplotlib's and dask's scratch all point into /tmp for a read-only root.
ENV PATH=/opt/venv/bin:${PATH} \
    VIRTUAL_ENV=/opt/venv \
    HOME=/tmp \
    MPLCONFIGDIR=/tmp/matplotlib \
    MPLBACKEND=Agg \
    DASK_TEMPORARY_DIRECTORY=/tmp

USER 10001:10001
WORKDIR /tmp

# 8080: operator liveness probe; 8786/8787: Dask scheduler and dashboard.
EXPOSE 8080 8786 8787

# tini as PID 1 in every role (the operator's pods call it in their commands too): the
# kernel drops SIGTERM for a PID 1 without a handler, so a Python process that is still
# importing, or never installs one, would sit out the whole termination grace period.
ENTRYPOINT ["tini", "--", "pulse-operator"]

# Labels last: a new commit changes only this metadata, not the cached layers above.
# hack/build-image.sh passes the version from pyproject.toml, the commit and the remote.
ARG VERSION=0.0.0-dev
ARG VCS_REF=unknown
ARG SOURCE=unknown
LABEL org.opencontainers.image.title="pulse-recursive-training" \
      org.opencontainers.image.description="Pulse retrodiction training: TrainingRun operator, driver and Dask scheduler/workers" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${VCS_REF}" \
      org.opencontainers.image.source="${SOURCE}" \
      org.opencontainers.image.licenses="Apache-2.0"
