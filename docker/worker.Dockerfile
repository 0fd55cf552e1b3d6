# The ocrq GPU worker: one Celery worker process per GPU, the model loaded once per process.
# torch 2.13.0 comes from PyTorch's CUDA wheel index; the wheel bundles the CUDA runtime
# libraries, so the host needs only the NVIDIA driver and the NVIDIA container toolkit.
# Build from the repository root: docker build -f docker/worker.Dockerfile -t ocrq-worker .
# Another CUDA build: --build-arg TORCH_CUDA=cu128 (the tag must exist for torch 2.13.0).
FROM python:3.12-slim

ARG TORCH_CUDA=cu130

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# pypdfium2 and Pillow ship their native libraries in their wheels; libgl and glib are for
# onnxruntime and OpenCV, which the rapidocr engine pulls in.
RUN apt-get update \
    && apt-get install -y --no-install-recommends libgl1 libglib2.0-0 \
    && rm -rf /var/lib/apt/lists/*

RUN useradd --create-home --uid 10001 ocrq
WORKDIR /app

RUN pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/${TORCH_CUDA}

COPY pyproject.toml README.md ./
COPY api ./api
COPY cli ./cli
COPY client ./client
COPY core ./core
COPY migrations ./migrations
COPY models ./models
COPY worker ./worker
RUN pip install .

USER ocrq
# OCRQ_MODEL_PATH (set in compose.yaml) points at mounted weights; without it the worker uses
# the rapidocr CPU engine.
ENV OCRQ_DEVICE=cuda
CMD ["ocrq", "worker"]
