# syntax=docker/dockerfile:1.7
# llmi images. Targets:
#   control-plane  router + operator, no torch (Kubernetes: `llmi router --kubernetes`, `llmi operator`)
#   runtime        `llmi runtime` / `llmi serve` on NVIDIA's CUDA PyTorch image (GPU or CPU)
#   vllm-runtime   vLLM's own OpenAI server image, with llmi beside it, for chat models with engine vllm
# Build: docker build --target runtime -t llmi-runtime .
ARG PYTHON_IMAGE=python:3.11-slim-bookworm
ARG TORCH_IMAGE=pytorch/pytorch:2.7.1-cuda12.8-cudnn9-runtime
ARG VLLM_IMAGE=vllm/vllm-openai:v0.10.1.1

# ---- build: one wheel of llmi, made once, installed by every target --------------------------
FROM ${PYTHON_IMAGE} AS build
WORKDIR /src
COPY pyproject.toml README.md constraints.txt ./
COPY llmi ./llmi
COPY router ./router
COPY runtime ./runtime
COPY operator ./operator
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /wheels . \
 && mv /wheels/llmi-*.whl /wheels/llmi-0-py3-none-any.whl

# ---- control plane: small, no torch ------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS control-plane
ENV PYTHONUNBUFFERED=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN useradd --uid 10001 --create-home --shell /usr/sbin/nologin llmi
COPY --from=build /wheels/llmi-0-py3-none-any.whl /tmp/
RUN pip install --no-cache-dir "/tmp/llmi-0-py3-none-any.whl[kube]" && rm /tmp/llmi-0-py3-none-any.whl
USER 10001
EXPOSE 15530
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s \
  CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:15530/healthz', timeout=4)"]
ENTRYPOINT ["llmi"]
CMD ["router", "--kubernetes"]

# ---- runtime: transformers engine on CUDA (also the embedded `llmi serve` image) --------------
FROM ${TORCH_IMAGE} AS runtime
ENV PYTHONUNBUFFERED=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HF_HOME=/tmp/hf HF_HUB_DISABLE_TELEMETRY=1 \
    LLM_MODELS_DIR=/models LLM_HOST=0.0.0.0 LLM_PORT=15530
RUN useradd --uid 10001 --create-home --shell /usr/sbin/nologin llmi
COPY --from=build /wheels/llmi-0-py3-none-any.whl /tmp/
# Keep the base image's torch: pin whatever version it ships while installing the rest.
RUN python -c "import torch; print('torch==' + torch.__version__)" > /tmp/torch-pin.txt \
 && pip install --no-cache-dir -c /tmp/torch-pin.txt "/tmp/llmi-0-py3-none-any.whl[runtime]" \
 && rm /tmp/llmi-0-py3-none-any.whl /tmp/torch-pin.txt
USER 10001
EXPOSE 15530 8000
VOLUME ["/models"]
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s \
  CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('LLM_PORT', '15530'), timeout=4)"]
ENTRYPOINT ["llmi"]
CMD ["serve"]

# ---- vLLM runtime: vLLM's own server for chat models (engine: vllm) ---------------------------
FROM ${VLLM_IMAGE} AS vllm-runtime
ENV PYTHONUNBUFFERED=1 PIP_DISABLE_PIP_VERSION_CHECK=1 HF_HOME=/tmp/hf HF_HUB_DISABLE_TELEMETRY=1
RUN useradd --uid 10001 --create-home --shell /usr/sbin/nologin llmi
USER 10001
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s --start-period=300s \
  CMD ["python3", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/health', timeout=4)"]
ENTRYPOINT ["vllm", "serve"]
