# One image for the gateway, the replica simulator and the load generator:
#   kvgate serve --config /etc/kvgate/config.yaml | kvgate sim ... | kvgate swarm ...
# Runs as a numeric non-root user and needs no writable path but /tmp, so it works with
# readOnlyRootFilesystem and an emptyDir mounted at /tmp.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# Build the kvgate wheel, then install it (and only it, with its dependencies) into a virtualenv
# that the runtime stage copies whole: no sources, compilers or pip caches reach the runtime image.
FROM ${PYTHON_IMAGE} AS builder
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
# gcc and xxhash.h build the block-hashing C extension; the runtime stage needs neither (xxhash is
# compiled into it). Unpinned: the builder's packages never reach the image, and bookworm's move only
# with security updates.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends gcc libc6-dev libxxhash-dev \
    && rm -rf /var/lib/apt/lists/*
COPY pyproject.toml setup.py README.md ./
COPY gateway/ gateway/
COPY loadtest/ loadtest/
RUN python -m pip wheel --no-deps --wheel-dir /dist . \
    && python -m venv /opt/kvgate \
    && /opt/kvgate/bin/pip install /dist/kvgate-*.whl \
    && /opt/kvgate/bin/kvgate --help > /dev/null

FROM ${PYTHON_IMAGE} AS runtime
LABEL org.opencontainers.image.title="kvgate" \
      org.opencontainers.image.description="KV-cache-aware routing gateway for LLM inference, with a vLLM replica simulator and a load generator" \
      org.opencontainers.image.licenses="Apache-2.0"
ENV PATH=/opt/kvgate/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    HOME=/tmp \
    XDG_CACHE_HOME=/tmp/.cache \
    MPLCONFIGDIR=/tmp/matplotlib
COPY --from=builder /opt/kvgate /opt/kvgate
USER 65532:65532
WORKDIR /tmp
EXPOSE 8080
ENTRYPOINT ["kvgate"]
CMD ["--help"]
