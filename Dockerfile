# syntax=docker/dockerfile:1
# One file, three run-time images (targets embedder, cache_server, gateway) that hold no
# PyTorch: torch and optimum live only in the `export` build stage, which writes the ONNX model.
#   docker build --target embedder -t semcache-embedder .
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# -- run-time dependencies (hnswlib compiles, so this stage has a compiler) --------------------
FROM ${PYTHON_IMAGE} AS deps
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN apt-get update && apt-get install -y --no-install-recommends build-essential \
    && rm -rf /var/lib/apt/lists/*
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
COPY pyproject.toml README.md ./
COPY protos protos
COPY embedder embedder
COPY cache_server cache_server
COPY gateway gateway
COPY service_runtime service_runtime
# Run-time dependencies only (no extras): onnxruntime, tokenizers, grpc, fastapi, hnswlib...
RUN pip install --upgrade pip && pip install .

# -- export: stubs and the ONNX model (PyTorch stays in this stage) ---------------------------
FROM deps AS export
ARG MODEL=
ARG PRECISION=fp32
RUN pip install ".[export,dev]"
RUN python -m grpc_tools.protoc -I. --python_out=. --grpc_python_out=. \
      $(find protos -name '*.proto') \
    && python -m embedder.export --output /models/default --precision ${PRECISION} \
       ${MODEL:+--model ${MODEL}}

# -- the image every service runs from ---------------------------------------------------------
FROM ${PYTHON_IMAGE} AS runtime
ENV PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 PATH=/opt/venv/bin:$PATH
RUN useradd --create-home --uid 10001 semcache
COPY --from=deps /opt/venv /opt/venv
# The venv installed the project itself; replace its copy with the one holding generated stubs.
WORKDIR /app
COPY --from=export /src/protos protos
COPY embedder embedder
COPY cache_server cache_server
COPY gateway gateway
COPY service_runtime service_runtime
RUN if python -c "import torch" 2>/dev/null; then echo "torch must not be in the run-time image"; exit 1; fi
USER semcache

FROM runtime AS embedder
COPY --from=export --chown=semcache /models /models
ENV EMBEDDER_MODEL_DIR=/models/default
EXPOSE 50052
HEALTHCHECK --interval=10s --timeout=5s --start-period=60s \
  CMD python -m service_runtime.healthcheck grpc localhost:50052
CMD ["python", "-m", "embedder"]

FROM runtime AS cache_server
USER root
RUN mkdir -p /data && chown semcache /data
USER semcache
ENV CACHE_DATA_DIR=/data
VOLUME /data
EXPOSE 50051
HEALTHCHECK --interval=10s --timeout=5s --start-period=20s \
  CMD python -m service_runtime.healthcheck grpc localhost:50051
CMD ["python", "-m", "cache_server"]

FROM runtime AS gateway
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=5s --start-period=10s \
  CMD python -m service_runtime.healthcheck http http://localhost:8000/health
CMD ["python", "-m", "gateway"]
