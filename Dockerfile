# One image for every taxi-job command: the manifests pick one with `args:`
# (["train"], ["infer"], ["sample-data", ...]).
#
#   docker build -t taxi-job:0.1.0 .
#   docker run --rm taxi-job:0.1.0 --help
#
# BASE_IMAGE must provide `python3` with the venv module; both stages use it, so the
# venv copied into the final stage finds the same interpreter.
ARG BASE_IMAGE=python:3.11-slim-bookworm

FROM ${BASE_IMAGE} AS builder
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_NO_INPUT=1
RUN python3 -m venv /opt/taxi-job
# Dependencies first, in a layer of their own: a code change does not reinstall them.
# Binary wheels only: nothing is compiled, so no build tools are needed.
COPY requirements.lock /tmp/requirements.lock
RUN /opt/taxi-job/bin/pip install --require-hashes --only-binary=:all: --no-deps \
        -r /tmp/requirements.lock
COPY pyproject.toml /src/
COPY job /src/job
RUN /opt/taxi-job/bin/pip install --no-deps /src \
    && /opt/taxi-job/bin/pip uninstall --yes pip setuptools \
    && /opt/taxi-job/bin/taxi-job --version

FROM ${BASE_IMAGE}
LABEL org.opencontainers.image.title="taxi-job" \
      org.opencontainers.image.description="Train and serve the NYC-taxi trip-duration model as Kubernetes batch Jobs" \
      org.opencontainers.image.licenses="Apache-2.0"
# Only the venv comes from the builder. The data volume's mount point belongs to the
# numeric user, so a fresh docker or podman named volume mounted there is writable too
# (on Kubernetes the pod's fsGroup does that).
COPY --from=builder /opt/taxi-job /opt/taxi-job
RUN mkdir -p /var/lib/taxi-job && chown 10001:10001 /var/lib/taxi-job
ENV PATH=/opt/taxi-job/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PYTHONFAULTHANDLER=1 \
    HOME=/tmp \
    TMPDIR=/tmp
# The root filesystem can be read-only: bytecode was compiled at install time, and
# everything the commands write goes to /tmp or the data volume.
USER 10001:10001
WORKDIR /var/lib/taxi-job
ENTRYPOINT ["taxi-job"]
CMD ["--help"]
