# cxrlab serve on CPU. The run directory (model.safetensors, config.yaml, summary.json, metrics, and
# model.onnx when exported) is mounted at start; the data file is not needed to serve.
#
#   docker build -t cxrlab .
#   docker run --rm -p 8000:8000 -v "$PWD/runs/demo/runs/efficientnet_b0-seed0:/run:ro" cxrlab
#
# Not built on the development machine (it has no Docker engine); see README.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
WORKDIR /app

# CPU wheels of the pinned torch/torchvision first, so no dependency pulls a CUDA build.
RUN pip install --index-url https://download.pytorch.org/whl/cpu torch==2.14.1 torchvision==0.29.1

COPY pyproject.toml README.md ./
COPY src ./src
RUN pip install . && useradd --create-home cxrlab

USER cxrlab
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/health')"
ENTRYPOINT ["cxrlab", "serve", "/run", "--host", "0.0.0.0", "--port", "8000"]
