# heartml API image: `heartml serve` with only what serving imports.
#
#   make export-model   # writes exported-model/ (model files + model.json) from the registry
#   make image          # the champion baked in, labels filled from exported-model/model.json
#   make image-registry # --target registry: no model; follows the registry's champion
#
# The builder makes a virtualenv with the package's core dependencies (pyproject.toml: no
# training, plotting, MLflow server or SQL stack), in their own cached layer, then the package.
# The registry stage copies it into a clean python:3.11-slim with a non-root user; the last
# stage (the default) adds the exported model. The container runs with a read-only root filesystem;
# only /tmp needs to be writable.

# ---------------------------------------------------------------------------------------------
# The dependency list, from pyproject.toml: the layers below depend on the list, not on the rest
# of pyproject.toml (tool settings), so editing those does not reinstall everything.
FROM python:3.11-slim AS requirements
WORKDIR /build
COPY pyproject.toml ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" > requirements.txt

# ---------------------------------------------------------------------------------------------
FROM python:3.11-slim AS builder

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH

WORKDIR /build
RUN python -m venv /opt/venv

# Dependencies only, rebuilt when the list or the lock changes, not when the source does. The
# versions come from the lock. Libraries' own test suites (a fifth of the size: pandas, scipy,
# numpy) are never imported. Compiled once the tests are gone, on every core (pip's own
# compilation uses one): with a read-only root, the container could not write bytecode itself.
COPY --from=requirements /build/requirements.txt ./
COPY constraints.txt ./
RUN pip install --no-cache-dir --no-compile -c constraints.txt -r requirements.txt \
    && find /opt/venv/lib -depth -type d -name tests -exec rm -rf {} + \
    && python -m compileall -q -j 0 /opt/venv/lib

# The package itself (no dependency resolution: everything is already pinned above), and then
# the installers, which nothing runs in the container.
COPY pyproject.toml ./
COPY src ./src
RUN touch README.md \
    && pip install --no-cache-dir --no-deps . \
    && pip uninstall -q -y pip setuptools

# ---------------------------------------------------------------------------------------------
FROM python:3.11-slim AS registry

ARG GIT_COMMIT=unknown
ARG BUILD_DATE=unknown

LABEL org.opencontainers.image.title="heartml-api" \
      org.opencontainers.image.description="Heart-disease risk API serving the promoted champion model" \
      org.opencontainers.image.licenses="MIT" \
      org.opencontainers.image.revision="${GIT_COMMIT}" \
      org.opencontainers.image.created="${BUILD_DATE}" \
      io.heartml.git-commit="${GIT_COMMIT}"

# HOME and TMPDIR point at /tmp, the one writable place at run time. Without HEARTML_MODEL_DIR
# the API serves the registry's champion (MLFLOW_TRACKING_URI, an http(s) tracking server).
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp \
    TMPDIR=/tmp \
    HEARTML_HOST=0.0.0.0 \
    HEARTML_PORT=8000 \
    HEARTML_WORKERS=1 \
    HEARTML_LOG_LEVEL=info \
    HEARTML_GIT_COMMIT=${GIT_COMMIT}

RUN groupadd --system --gid 10001 heartml \
    && useradd --system --uid 10001 --gid heartml --home-dir /nonexistent --no-create-home \
       --shell /usr/sbin/nologin heartml

WORKDIR /app
COPY --from=builder /opt/venv /opt/venv

USER 10001:10001
EXPOSE 8000

# Kubernetes uses its own probes; this one is for Docker and compose.
HEALTHCHECK --interval=10s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/health' % os.environ.get('HEARTML_PORT', '8000'), timeout=4)"]

# Host, port, workers and model dir come from the HEARTML_* variables above (or a ConfigMap).
CMD ["heartml", "serve"]

# ---------------------------------------------------------------------------------------------
FROM registry AS model

ARG MODEL_NAME=unknown
ARG MODEL_VERSION=unknown
ARG MODEL_ROC_AUC=unknown
ARG MODEL_RUN_ID=unknown

LABEL io.heartml.model.name="${MODEL_NAME}" \
      io.heartml.model.version="${MODEL_VERSION}" \
      io.heartml.model.roc-auc="${MODEL_ROC_AUC}" \
      io.heartml.model.run-id="${MODEL_RUN_ID}"

ENV HEARTML_MODEL_DIR=/app/model

# The exported champion (make export-model), owned by root and read-only for the app user.
COPY exported-model/ /app/model/
