# Two commands do all set-up on a fresh machine: `make serve` and `make test`.
VENV   ?= .venv
PY     := $(VENV)/bin/python
comma  := ,
EXTRAS ?= cpu,serve,jobs,client,langchain,llama-index,test,demo,bench
STAMP  := $(VENV)/.installed-$(subst $(comma),-,$(EXTRAS))
INDEX  ?= data/glove-index

.PHONY: serve demo test lint bench bench-peers soak clean

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q -U pip
	$(PY) -m pip install -q -e ".[$(EXTRAS)]"
	touch $@

# Throughput-optimised Serve: HAProxy on port 8000 in front of the router replicas' direct
# ingress (HAProxy starts slower than Serve's Python proxy: 30 s for its readiness check).
RAY_ENV := RAY_AUTH_MODE=disabled RAY_USAGE_STATS_ENABLED=0 RAY_SERVE_THROUGHPUT_OPTIMIZED=1 \
           RAY_SERVE_ENABLE_HA_PROXY=1 RAY_SERVE_PROXY_READY_CHECK_TIMEOUT_S=30

# The main job: build the demo index from the bundled GloVe vectors if missing, then serve it
# on a local Ray in the foreground (HTTP on 127.0.0.1:8000; Ctrl-C stops it).
serve: $(STAMP)
	$(PY) scripts/demo.py --index $(INDEX) --build-only
	$(RAY_ENV) $(VENV)/bin/serve run serve_config.yaml

# The CLI demo without Ray: nearest words of a few GloVe words.
demo: $(STAMP)
	$(PY) scripts/demo.py --index $(INDEX)

test: $(STAMP) lint
	$(PY) -m pytest

lint: $(STAMP)
	$(PY) -m ruff check shards deployments jobs vsearch tests bench scripts
	$(PY) -m ruff format --check shards deployments jobs vsearch tests bench scripts
	$(PY) -m mypy shards deployments jobs vsearch

# Every CPU benchmark (core, compare, scaling, cold start, capacity); ARGS=--quick: a short run.
bench: $(STAMP)
	$(PY) -m bench $(ARGS)

# The same with the peers installed first (the `peers` extra; hnswlib compiles from source).
bench-peers: $(STAMP)
	$(PY) -m pip install -q -e ".[$(EXTRAS),peers]"
	$(PY) -m bench $(ARGS)

# A bounded load run (60 s at concurrency 16 over loopback HTTP): errors, p50/p99, Serve RSS.
soak: $(STAMP)
	$(RAY_ENV) $(PY) -m bench.soak $(ARGS)

clean:
	rm -rf $(VENV) data .pytest_cache .mypy_cache .ruff_cache
