# Two commands do all set-up on a fresh machine: `make serve` and `make test`.
VENV   ?= .venv
PY     := $(VENV)/bin/python
comma  := ,
EXTRAS ?= cpu,serve,test,demo,bench
STAMP  := $(VENV)/.installed-$(subst $(comma),-,$(EXTRAS))
INDEX  ?= data/glove-index

.PHONY: serve test lint bench clean

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q -U pip
	$(PY) -m pip install -q -e ".[$(EXTRAS)]"
	touch $@

# The main job: build the demo index from the bundled GloVe vectors if missing, then query it.
serve: $(STAMP)
	$(PY) scripts/demo.py --index $(INDEX)

test: $(STAMP) lint
	$(PY) -m pytest

lint: $(STAMP)
	$(PY) -m ruff check shards deployments tests bench scripts
	$(PY) -m ruff format --check shards deployments tests bench scripts
	$(PY) -m mypy shards deployments

bench: $(STAMP)
	$(PY) -m bench.core $(ARGS)

clean:
	rm -rf $(VENV) data .pytest_cache .mypy_cache .ruff_cache
