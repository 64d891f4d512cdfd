# Two entry points, each installing what it needs on a fresh Debian machine:
#   make demo   embedded broker + gateway + simulated cameras, events on the terminal
#   make test   lint, type-check and the whole test suite against real mosquitto
# (plus: make bench, make check-config CONFIG=...)

VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
PYTEST_ARGS ?=

.PHONY: demo test lint bench system-deps venv clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	touch $@

venv: $(BIN)/.installed

# mosquitto: the embedded broker of the demo and the broker of every test.
system-deps:
	@if ! command -v mosquitto >/dev/null 2>&1 && [ ! -x /usr/sbin/mosquitto ]; then \
		echo "installing mosquitto (apt-get)"; \
		$(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq mosquitto >/dev/null; \
	fi
	@# nats-server: the second broker of the contract tests (JetStream, MQTT listener)
	@if ! command -v nats-server >/dev/null 2>&1 && [ ! -x /usr/sbin/nats-server ]; then \
		echo "installing nats-server (apt-get)"; \
		$(SUDO) apt-get install -y -qq nats-server >/dev/null || \
		{ $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq nats-server >/dev/null; }; \
	fi
	@# rabbitmq-server: the third broker of the contract tests (rabbitmq_mqtt plugin);
	@# the tests start a private node, so the system service it brings is not used
	@if [ ! -x /usr/lib/rabbitmq/bin/rabbitmq-server ]; then \
		echo "installing rabbitmq-server (apt-get)"; \
		$(SUDO) apt-get install -y -qq rabbitmq-server >/dev/null || \
		{ $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq rabbitmq-server >/dev/null; }; \
	fi
	@# chromium + chromedriver: the web page's browser tests (headless, driven by selenium)
	@if ! command -v chromium >/dev/null 2>&1 || ! command -v chromedriver >/dev/null 2>&1; then \
		echo "installing chromium and chromium-driver (apt-get)"; \
		$(SUDO) apt-get install -y -qq chromium chromium-driver >/dev/null || \
		{ $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq chromium chromium-driver >/dev/null; }; \
	fi
	@# fonts-nanum: Hangul in the browser tests' screenshots (the simulators send Korean plates)
	@if [ ! -d /usr/share/fonts/truetype/nanum ]; then \
		$(SUDO) apt-get install -y -qq fonts-nanum >/dev/null || true; \
	fi
	@# docker-compose (v1, Debian) only so the tests can validate deploy/docker-compose.yml
	@if ! docker compose version >/dev/null 2>&1 && ! command -v docker-compose >/dev/null 2>&1; then \
		$(SUDO) apt-get install -y -qq --no-install-recommends docker-compose >/dev/null || true; \
	fi
	@[ ! -x tests/interop/install-deps.sh ] || tests/interop/install-deps.sh

demo: venv system-deps
	$(BIN)/lpr-gateway demo

lint: venv
	$(BIN)/ruff check gateway tests bench
	$(BIN)/ruff format --check gateway tests bench
	$(BIN)/mypy gateway tests bench

# Coverage of gateway/, the gateway processes the end-to-end tests start included.
test: venv system-deps lint
	$(BIN)/pytest -q --cov=gateway --cov-report=term $(PYTEST_ARGS)

# Bytecode first: a gateway compiling stale sources at start (PYTHONDONTWRITEBYTECODE
# is common on dev machines) holds ~1.7 MB more than an installed one (bench/RESULTS.md).
bench: venv system-deps
	$(BIN)/python -m compileall -q gateway >/dev/null
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
