# heartml API image: the champion model baked in, served by `heartml serve`.
#
#   make export-model   # writes exported-model/ (model files + model.json) from the registry
#   make image          # docker build with the labels below filled from exported-model/model.json
#
# Stage 1 builds a virtualenv (dependencies in their own cached layer, then the package);
# stage 2 copies it into a clean python:3.11-slim with a non-root user and the exported model.
# The container runs with a read-only root filesystem; only /tmp needs to be writable.

# ---------------------------------------------------------------------------------------------
FROM python:3.11-slim AS builder

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH

WORKDIR /build
RUN python -m venv /opt/venv

# Dependencies only: this layer is rebuilt when pyproject.toml or constraints.txt change,
# not when the source does. The list comes from pyproject.toml, the versions from the lock.
COPY pyproject.toml constraints.txt ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" > requirements.txt \
    && pip install --no-cache-dir -c constraints.txt -r requirements.txt

# The package itself (no dependency resolution: everything is already pinned above).
COPY src ./src
RUN touch README.md \
    && pip install --no-cache-dir --no-deps . \
    && python -m compileall -q /opt/venv/lib

# ---------------------------------------------------------------------------------------------
FROM python:3.11-slim AS runtime

ARG GIT_COMMIT=unknown
ARG BUILD_DATE=unknown
ARG MODEL_NAME=unknown
ARG MODEL_VERSION=unknown
ARG MODEL_ROC_AUC=unknown
ARG MODEL_RUN_ID=unknown

LABEL org.opencontainers.image.title="heartml-api" \
      org.opencontainers.image.description="Heart-disease risk API serving the promoted champion model" \
      org.opencontainers.image.licenses="MIT" \
      org.opencontainers.image.revision="${GIT_COMMIT}" \
      org.opencontainers.image.created="${BUILD_DATE}" \
      io.heartml.git-commit="${GIT_COMMIT}" \
      io.heartml.model.name="${MODEL_NAME}" \
      io.heartml.model.version="${MODEL_VERSION}" \
      io.heartml.model.roc-auc="${MODEL_ROC_AUC}" \
      io.heartml.model.run-id="${MODEL_RUN_ID}"

# HOME, TMPDIR and MPLCONFIGDIR point at /tmp, the one writable place at run time.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp \
    TMPDIR=/tmp \
    MPLCONFIGDIR=/tmp/matplotlib \
    HEARTML_HOST=0.0.0.0 \
    HEARTML_PORT=8000 \
    HEARTML_WORKERS=1 \
    HEARTML_MODEL_DIR=/app/model \
    HEARTML_LOG_LEVEL=info \
    HEARTML_GIT_COMMIT=${GIT_COMMIT}

RUN groupadd --system --gid 10001 heartml \
    && useradd --system --uid 10001 --gid heartml --home-dir /nonexistent --no-create-home \
       --shell /usr/sbin/nologin heartml

WORKDIR /app
COPY --from=builder /opt/venv /opt/venv
# The exported champion (make export-model), owned by root and read-only for the app user.
COPY exported-model/ /app/model/

USER 10001:10001
EXPOSE 8000

HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/health' % os.environ.get('HEARTML_PORT', '8000'), timeout=4)"]

# Host, port, workers and model dir come from the HEARTML_* variables above (or a ConfigMap).
CMD ["heartml", "serve"]
