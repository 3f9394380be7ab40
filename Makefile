# Two commands for a new user:  make run  (serve the demo)  and  make test  (run the tests).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-$(shell cat requirements.txt requirements-dev.txt pyproject.toml | cksum | cut -d' ' -f1)

export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export PYTHONDONTWRITEBYTECODE := 1

.PHONY: install browser run test test-fast test-postgres bench bench-consortium bench-schedule bench-load bench-txtai bench-speed clean

# The pinned requirements, then the project itself in editable mode (pyproject.toml), so that models, matcher
# and service import from the checkout in every script run with the venv's python (bench/ included).
$(STAMP): requirements.txt requirements-dev.txt pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --disable-pip-version-check -q -r requirements-dev.txt
	$(BIN)/pip install --disable-pip-version-check -q --no-deps -e .
	rm -f $(VENV)/.installed-* && touch $@

install: $(STAMP)

## Serve the API with gunicorn on MATCHER_HOST:MATCHER_PORT (default 127.0.0.1:8000), demo data loaded
## into an empty store unless MATCHER_LOAD_DEMO=0.
run: install
	$(BIN)/python -m matcher init
	exec $(BIN)/gunicorn -c service/gunicorn_conf.py "service:create_app()"

## Headless Chromium for the digest rendering test: the Debian package, installed when missing and apt-get can
## (as root); otherwise that one test is skipped with the reason.
browser:
	@test -x /usr/bin/chromium || { command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ] && apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null; } || \
	  echo "note: /usr/bin/chromium is missing and could not be installed: the digest rendering test will be skipped"

## Run the test suite.
test: install browser
	$(BIN)/python -m pytest -q tests

## The tests not marked slow (no gunicorn, kill -9, CLI processes, Chromium, Ray, fuzzing or CORDIS data).
test-fast: install
	$(BIN)/python -m pytest -q -m "not slow" tests

## The storage, engine and API tests again on a throwaway local PostgreSQL server (installs the Debian package
## postgresql when missing); pytest options pass through ARGS, e.g. make test-postgres ARGS=-x
test-postgres: install browser
	TEST_PYTHON=$(BIN)/python tests/postgres.sh $(ARGS)

## Latency and indexing throughput at 1k and 10k organisations (needs ../shared/data/cordis).
bench: install
	$(BIN)/python bench/latency.py

## Proposed consortia against real Horizon Europe consortia; a 200-participant brokerage event.
bench-consortium: install
	$(BIN)/python bench/consortium.py

bench-schedule: install
	$(BIN)/python bench/schedule.py

## Load: locust against gunicorn (2 workers, loopback) at 10k organisations with a concurrent writer, 60 s per
## scenario. The store is imported once into var/bench-load/ and reused.
bench-load: install
	$(BIN)/python bench/load.py

## This product beside txtai 9.14 (hybrid BM25 + dense, its own venv in var/txtai-venv) on the same model and 10k
## organisations: one-line matches over HTTP with 4 clients, and recall@10 / nDCG@10 on the call texts.
bench-txtai: install
	$(BIN)/python bench/txtai_compare.py

## Issue 26's speed targets (HTTP at 10k, in process at 10k/14.8k/100k, worker start at 14.8k/100k) beside the
## bare torch encode; stores of N organisations made once from var/eval/pool by bench/stores.py (~8 min).
bench-speed: install
	$(BIN)/python bench/speed.py

clean:
	rm -rf $(VENV) var .pytest_cache *.egg-info
