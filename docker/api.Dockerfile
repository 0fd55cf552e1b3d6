# The ocrq HTTP API. It never imports torch, but torch is a dependency of the ocrq package,
# so the small CPU build is installed first to keep the image far below the CUDA build's size.
# Build from the repository root: docker build -f docker/api.Dockerfile -t ocrq-api .
FROM python:3.12-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

RUN useradd --create-home --uid 10001 ocrq
WORKDIR /app

RUN pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu

# Dependencies resolve from pyproject.toml alone, so this layer is reused until it changes.
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
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
    CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=2)"
CMD ["ocrq", "api", "--host", "0.0.0.0", "--port", "8000"]
