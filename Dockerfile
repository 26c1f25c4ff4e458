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
# The container runs as user ebr (uid and gid 10001): the workspace volume must be writable by
# it (chown -R 10001:10001 /data/ebr on the host, or a Kubernetes fsGroup of 10001).
# The environment is requirements.lock, the lock file `make test` installs too (with the dev
# tools of requirements-dev.lock on top): written by scripts/lock.py, checked in `make lint`.

# --- build: compilers and pip's work stay in this stage ----------------------------------------
FROM python:3.11-slim AS build

# Debian's current packages on purpose (security fixes): the archive drops old versions.
# hadolint ignore=DL3008
RUN apt-get update && apt-get install -y --no-install-recommends build-essential \
    && rm -rf /var/lib/apt/lists/*

ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
RUN python -m venv /opt/ebr
ENV PATH=/opt/ebr/bin:$PATH

# Dependencies first (a cached layer): the closed, pinned list, so --no-deps and no resolver;
# torch 2.13.0+cpu comes from the PyTorch CPU index.
COPY requirements.lock ./
RUN pip install --no-cache-dir --no-deps \
        --extra-index-url https://download.pytorch.org/whl/cpu -r requirements.lock

COPY pyproject.toml README.md ./
COPY ebr ebr
COPY pipelines pipelines
COPY tasks tasks
COPY workflows workflows
COPY serving serving
COPY cli cli
RUN pip install --no-cache-dir --no-deps .

# --- runtime: the venv, the code, what runs it; no compilers -----------------------------------
FROM python:3.11-slim

# hadolint ignore=DL3008
RUN apt-get update && apt-get install -y --no-install-recommends redis-server libgomp1 \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --gid 10001 ebr \
    && useradd --create-home --uid 10001 --gid 10001 ebr \
    && mkdir -p /data/ebr && chown ebr:ebr /data/ebr

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 RAY_USAGE_STATS_ENABLED=0 \
    PATH=/opt/ebr/bin:$PATH PYTHONPATH=/app
COPY --from=build /opt/ebr /opt/ebr
WORKDIR /app
COPY --chown=ebr:ebr ebr ebr
COPY --chown=ebr:ebr pipelines pipelines
COPY --chown=ebr:ebr tasks tasks
COPY --chown=ebr:ebr workflows workflows
COPY --chown=ebr:ebr serving serving
COPY --chown=ebr:ebr cli cli
COPY --chown=ebr:ebr feature_repo feature_repo
COPY --chown=ebr:ebr scripts scripts

USER 10001:10001
EXPOSE 8000
# Liveness of the Serve app on the default command's port (GET /livez: 200 while it runs;
# readiness, "serves what it served before", is GET /healthz).
HEALTHCHECK --interval=30s --timeout=5s --start-period=180s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/livez', timeout=4)"]
CMD ["python", "-m", "serving.app", "--workspace", "/data/ebr", "--host", "0.0.0.0", "--port", "8000"]
