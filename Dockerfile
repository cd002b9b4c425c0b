# syntax=docker/dockerfile:1
# The reward service with the bundled default model (model_store/).
#
# CPU (default):  docker build -t reward-service:cpu .
# CUDA:           docker build -t reward-service:cuda \
#                   --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128 .
# CUDA torch wheels carry their own CUDA runtime, so the slim base serves both; the host needs only the
# NVIDIA driver and the NVIDIA container toolkit (see docs/operations.md).

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS builder
# The torch build: its wheel index picks CPU or a CUDA flavour, the version matches scripts/setup.sh.
ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH=/opt/venv/bin:$PATH
RUN python -m venv /opt/venv
# torch first and from its own index: `pip install .` then finds it satisfied instead of pulling the
# default (CUDA, several GiB) wheel from PyPI.
RUN pip install --index-url "${TORCH_INDEX_URL}" "torch==${TORCH_VERSION}"
WORKDIR /src
COPY pyproject.toml README.md requirements.lock ./
COPY app ./app
# A regular (non-editable) install of the runtime dependencies only: no dev extra in the image. Their
# versions are the audited ones of requirements.lock (as constraints); its torch line pins the CPU
# build, so it is left out and the torch installed above stays.
RUN grep -v '^torch==' requirements.lock > /tmp/constraints.txt \
    && pip install . -c /tmp/constraints.txt && rm -rf /src /tmp/constraints.txt

FROM ${PYTHON_IMAGE} AS runtime
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PATH=/opt/venv/bin:$PATH \
    REWARD_STATS_PATH=/app/state/running_stats.json
RUN groupadd --system --gid 10001 reward \
    && useradd --system --uid 10001 --gid reward --home-dir /app --no-create-home \
       --shell /usr/sbin/nologin reward
COPY --from=builder /opt/venv /opt/venv
WORKDIR /app
# The default model. Owned by the service user so that a named volume seeded from it can take publishes
# and rollbacks; compose mounts the host's store read-only instead.
COPY --chown=reward:reward model_store/ /app/model_store/
# Running-statistics snapshots: one volume per container, never shared between replicas.
RUN install -d -o reward -g reward /app/state
USER reward
VOLUME ["/app/model_store", "/app/state"]
EXPOSE 8000
# Ready only once a model is loaded and warmed up (/readyz answers 503 until then; urlopen raises on it).
HEALTHCHECK --interval=10s --timeout=3s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/readyz', timeout=2)"]
# The app binds 127.0.0.1 by default; a container must listen on all its interfaces.
CMD ["reward-serve", "--host", "0.0.0.0", "--port", "8000", "--model-store", "/app/model_store"]
