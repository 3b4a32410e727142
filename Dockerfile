# syntax=docker/dockerfile:1
# edge-agent image: a venv built in one stage, copied into a slim runtime without build tools.
#   docker build -t edge-agent:0.1.0 .
#   deploy/build-image.sh          # podman, on a fresh machine or one without a registry
# BASE is the pinned upstream image. deploy/build-image.sh substitutes a Python base made from
# Debian's packages when it cannot pull this one. Both stages take the same BASE, so the venv's
# interpreter path is the same in each (tests/deploy/test_deploy_policy.py checks they agree).
# tests/deploy/test_pod.py runs the built image as the DaemonSet's pod.
# checkov:skip=CKV_DOCKER_7:FROM names ARG BASE, whose default is this pinned tag; checkov does not read ARG defaults
ARG BASE=python:3.11.13-slim-bookworm

FROM ${BASE} AS build
# pip's index and trust as on the build host (deploy/build-image.sh passes the host's settings
# and mounts its CA bundle); left unset, pip's defaults apply. Build arguments are not kept in
# the runtime stage.
ARG PIP_INDEX_URL
ARG PIP_EXTRA_INDEX_URL
ARG PIP_TRUSTED_HOST
ARG PIP_CERT
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
# Dependencies first, from the lock alone: this layer is rebuilt only when the lock changes.
COPY requirements.lock ./
RUN python -m venv /opt/venv && /opt/venv/bin/pip install --no-cache-dir -r requirements.lock
COPY pyproject.toml README.md ./
COPY edge_agent ./edge_agent
COPY drivers ./drivers
# The core and the drivers only: simulators, the demo and the test broker helper
# (edge-agent-simulators) are test tooling and stay out of the production image.
# pip and setuptools only install: the shipped venv carries neither. pip's compiled .pyc files
# stay: on the read-only root Python could not cache them, and would compile at every start.
RUN /opt/venv/bin/pip install --no-cache-dir --no-deps . ./drivers \
    && /opt/venv/bin/pip uninstall --yes setuptools pip

FROM ${BASE} AS runtime
LABEL org.opencontainers.image.title="edge-agent" \
      org.opencontainers.image.description="Edge IoT gateway agent: USB and serial industrial devices to MQTT" \
      org.opencontainers.image.licenses="Apache-2.0"
# libusb for pyusb (driver: usb); tini as PID 1 forwards SIGTERM so the agent flushes on stop.
RUN apt-get update \
    && apt-get install -y --no-install-recommends libusb-1.0-0=2:1.0.26-1 tini=0.19.0-1+b3 \
    && rm -rf /var/lib/apt/lists/*
COPY --from=build /opt/venv /opt/venv
# The buffer directory exists for `docker run` too; in Kubernetes a hostPath is mounted over it.
RUN install -d -o 10001 -g 10001 -m 0750 /var/lib/edge-agent \
    && install -d -m 0755 /etc/edge-agent
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
USER 10001:10001
EXPOSE 7070
# Asks /healthz where the agent listens: EDGE_AGENT_HTTP__LISTEN when set (the DaemonSet sets the
# node's address, where 127.0.0.1 is not served), else the default port on the loopback.
HEALTHCHECK --interval=30s --timeout=3s --start-period=20s --retries=3 \
    CMD ["/opt/venv/bin/python", "-c", "import os, urllib.request; host, _, port = os.environ.get('EDGE_AGENT_HTTP__LISTEN', ':7070').rpartition(':'); host = '127.0.0.1' if host in ('', '0.0.0.0', '[::]') else host; urllib.request.urlopen(f'http://{host}:{port}/healthz', timeout=2)"]
ENTRYPOINT ["/usr/bin/tini", "--", "/opt/venv/bin/edge-agent"]
CMD ["run", "-c", "/etc/edge-agent/config.yaml"]
