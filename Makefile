# skygrade: make demo | make test | make lint | make bench
# Every target creates .venv and installs into it on a fresh machine.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
DEMO   := demo-output

.PHONY: demo test lint bench venv sysdeps model model-holdout clean

# Debian packages the tests run for real, and the command each one provides:
# SExtractor (sextractor backend, parity tests), Prometheus + promtool (rules tests, scrape test),
# Chromium + chromedriver (observer page in a headless browser).
APT_PACKAGES := source-extractor prometheus chromium chromium-driver
APT_COMMANDS := source-extractor prometheus promtool chromium chromedriver
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
	@for c in $(APT_COMMANDS); do command -v $$c >/dev/null || missing=1; done; \
	if [ -n "$$missing" ]; then \
	  $(SUDO) apt-get update -qq && \
	  $(SUDO) apt-get install -y -qq --no-install-recommends $(APT_PACKAGES); fi

test: venv sysdeps lint
	$(BIN)/pytest -q

demo: venv
	@bash ops/demo.sh $(BIN) $(DEMO)

# The shipped bundle: simulate 10 nights x 30 exposures (8 CCDs of 1024x2306), train on them.
# ~40 min on 2 cores. Features are cached in build/, so a retrain with new settings is faster.
MODEL_ARCHIVE := build/model-archive
model: venv
	$(BIN)/skygrade -q --config models/training.yaml simulate --out $(MODEL_ARCHIVE) \
	  --nights 2026-09-01..2026-09-10 --exposures 30 --n-ccd 8 --ccd-shape 1024x2306 --seed 2026
	$(BIN)/skygrade --config models/training.yaml train $(MODEL_ARCHIVE) --out models/default \
	  --work build/model-work --workers 2
	$(BIN)/skygrade --config models/training.yaml evaluate $(MODEL_ARCHIVE) \
	  --bundle models/default --out models/default-report --work build/model-work --workers 2

# An independent check of the shipped bundle: other nights and another seed (~6 min on 2 cores).
HOLDOUT_ARCHIVE := build/holdout-seed7
model-holdout: venv
	$(BIN)/skygrade -q --config models/training.yaml simulate --out $(HOLDOUT_ARCHIVE) \
	  --nights 2026-10-01..2026-10-02 --exposures 25 --n-ccd 8 --ccd-shape 1024x2306 --seed 7
	$(BIN)/skygrade --config models/training.yaml evaluate $(HOLDOUT_ARCHIVE) \
	  --bundle models/default --out build/holdout-seed7-report --work build/holdout7-work --workers 2

bench: venv
	@for b in benchmarks/*.py; do echo "== $$b"; $(BIN)/python $$b || exit 1; done

clean:
	rm -rf $(VENV) $(DEMO) *.egg-info .pytest_cache .ruff_cache
