# skygrade: make demo | make test | make lint | make bench
# Every target creates .venv and installs into it on a fresh machine.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
DEMO   := demo-output

.PHONY: demo test lint bench venv sysdeps clean

# Debian packages the tests run for real: SExtractor (sextractor backend, parity tests).
APT_PACKAGES := source-extractor
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

venv: $(STAMP)

# torch==2.13.0 resolves to the CPU wheel on this machine's disk; see README "Installing".
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -e '.[dev]'
	touch $(STAMP)

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

sysdeps:
	@command -v source-extractor >/dev/null || { \
	  $(SUDO) apt-get update -qq && \
	  $(SUDO) apt-get install -y -qq --no-install-recommends $(APT_PACKAGES); }

test: venv sysdeps lint
	$(BIN)/pytest -q

demo: venv
	@bash ops/demo.sh $(BIN) $(DEMO)

bench: venv
	@for b in benchmarks/*.py; do echo "== $$b"; $(BIN)/python $$b || exit 1; done

clean:
	rm -rf $(VENV) $(DEMO) build *.egg-info .pytest_cache .ruff_cache
