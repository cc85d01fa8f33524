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

# lint-imports: the import rules of pyproject.toml's [tool.importlinter] (no cycles, the layers)
lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports

sysdeps:
	@for c in $(APT_COMMANDS); do command -v $$c >/dev/null || missing=1; done; \
	if [ -n "$$missing" ]; then \
	  $(SUDO) apt-get update -qq && \
	  $(SUDO) apt-get install -y -qq --no-install-recommends $(APT_PACKAGES); fi

test: venv sysdeps lint
	$(BIN)/pytest -q

demo: venv
	@bash ops/demo.sh $(BIN) $(DEMO)

# The shipped bundle: simulate 30 nights x 30 exposures (8 CCDs of 1024x2306) as three blocks of
# 10 nights, each with its own simulator seed (a seed fixes the electronics of its CCDs: a model
# trained on one seed's 8 CCDs sees only 8 gains, read noises and saturation levels), then train
# on them and evaluate the bundle on the held-out nights. One exposure in two is also turned
# into a SExtractor catalog the way archives make them, with a configuration drawn per exposure
# (1.5-5 sigma, filter on/off, DEBLEND_MINCONT 0-0.005, sky kept/subtracted, eight columns or
# all, EXPTIME kept or not: skygrade.streamer.archive_catalogs --extraction random) and trained on beside
# the pixels, so catalog mode knows real catalogs; the held-out catalogs get their own report.
# 58 min on 2 cores measured (with other work beside it; docs/model.md).
# Features are cached in build/model-work, so a retrain with new settings is faster.
MODEL_ARCHIVE := build/model-archive
MODEL_CATALOGS := build/model-catalogs
MODEL_BLOCKS := 2026-09-01..2026-09-10:2026 2026-09-11..2026-09-20:2027 2026-09-21..2026-09-30:2028
model: venv
	@for block in $(MODEL_BLOCKS); do \
	  $(BIN)/skygrade -q --config models/training.yaml simulate --out $(MODEL_ARCHIVE) \
	    --nights $${block%%:*} --exposures 30 --n-ccd 8 --ccd-shape 1024x2306 \
	    --seed $${block##*:} || exit 1; done
	$(BIN)/python -m skygrade.streamer.archive_catalogs $(MODEL_ARCHIVE) $(MODEL_CATALOGS) \
	  --sky mixed --extraction random --every 2 --workers 2
	$(BIN)/skygrade --config models/training.yaml train $(MODEL_ARCHIVE) --out models/default \
	  --catalogs $(MODEL_CATALOGS) --work build/model-work --workers 2
	$(BIN)/skygrade --config models/training.yaml evaluate $(MODEL_ARCHIVE) \
	  --bundle models/default --out models/default-report --work build/model-work --workers 2
	$(BIN)/skygrade --config models/training.yaml evaluate $(MODEL_CATALOGS) --backend catalog \
	  --bundle models/default --out models/default-report-catalogs --work build/model-work

# Independent checks of the shipped bundle: three archives of other nights and other seeds than
# any training block (450 exposures), from pixels and from SExtractor catalogs made four ways
# (stock default.sex with the sky kept and subtracted; the real catalogs' configuration: 5 sigma,
# no filter, DEBLEND_MINCONT 0, eight columns, no EXPTIME; one configuration drawn per
# exposure); narrow-band nights (models/holdout-narrow-band.yaml: every exposure through CaHK, Ha
# or OIII, pixels and two catalog configurations); the evaluation-only GalSim renderer
# (skygrade.streamer.galsim_render, 5 per class, never trained on): 25 exposures of 8
# quarter-size CCDs and 25 of 4 full-size 2048x4612 CCDs; then the real graded catalogs of
# ../shared/real-catalogs (never trained on) and the calibration table beside them (~100 min on
# 2 cores). Reports in build/holdout-seed*-report*, build/holdout-seed*-catalogs-*-report,
# build/holdout-narrow-band*-report, build/galsim-*-report and build/real-catalogs-report.
# A block is nights:seed:exposures-per-night.
REAL_CATALOGS ?= ../shared/real-catalogs
HOLDOUT_BLOCKS := 2026-10-01..2026-10-02:7:25 2026-10-10..2026-10-13:11:25 \
  2026-11-01..2026-11-10:17:30
model-holdout: venv
	@for block in $(HOLDOUT_BLOCKS); do set -- $$(echo $$block | tr : ' '); \
	  h=build/holdout-seed$$2; \
	  $(BIN)/skygrade -q --config models/training.yaml simulate --out $$h \
	    --nights $$1 --exposures $$3 --n-ccd 8 --ccd-shape 1024x2306 --seed $$2 \
	  && $(BIN)/skygrade --config models/training.yaml evaluate $$h --bundle models/default \
	    --out $$h-report --work $$h-work --workers 2 || exit 1; \
	  for ex in stock:kept stock:subtracted archive:kept random:mixed; do \
	    c=$$h-catalogs-$${ex%%:*}-$${ex##*:}; \
	    $(BIN)/python -m skygrade.streamer.archive_catalogs $$h $$c --extraction $${ex%%:*} \
	      --sky $${ex##*:} --workers 2 \
	    && $(BIN)/skygrade --config models/training.yaml evaluate $$c \
	      --backend catalog --bundle models/default --out $$c-report \
	      --work $$c-work || exit 1; done; done
	$(BIN)/skygrade -q --config models/holdout-narrow-band.yaml simulate \
	  --out build/holdout-narrow-band --nights 2026-11-10,2026-11-11 --exposures 25 --n-ccd 8 \
	  --ccd-shape 1024x2306 --seed 13
	$(BIN)/skygrade --config models/training.yaml evaluate build/holdout-narrow-band \
	  --bundle models/default --out build/holdout-narrow-band-report \
	  --work build/holdout-narrow-band-work --workers 2
	@for ex in archive:kept random:mixed; do c=build/holdout-narrow-band-catalogs-$${ex%%:*}-$${ex##*:}; \
	  $(BIN)/python -m skygrade.streamer.archive_catalogs build/holdout-narrow-band $$c \
	    --extraction $${ex%%:*} --sky $${ex##*:} --workers 2 \
	  && $(BIN)/skygrade --config models/training.yaml evaluate $$c --backend catalog \
	    --bundle models/default --out $$c-report --work $$c-work || exit 1; done
	$(BIN)/python -m skygrade.streamer.galsim_render --out build/galsim-quarter --exposures 5 --nights 1 \
	  --n-ccd 8 --ccd-shape 1024x2306 --seed 2020
	$(BIN)/skygrade --config models/training.yaml evaluate build/galsim-quarter \
	  --bundle models/default --out build/galsim-quarter-report --work build/galsim-quarter-work \
	  --workers 2
	$(BIN)/python -m skygrade.streamer.galsim_render --out build/galsim-full --exposures 5 --nights 1 \
	  --n-ccd 4 --ccd-shape 2048x4612 --seed 2021
	$(BIN)/skygrade --config models/training.yaml evaluate build/galsim-full \
	  --bundle models/default --out build/galsim-full-report --work build/galsim-full-work \
	  --workers 2
	@if [ -d $(REAL_CATALOGS) ]; then \
	  $(BIN)/skygrade evaluate $(REAL_CATALOGS) --backend catalog --bundle models/default \
	    --out build/real-catalogs-report --work build/real-catalogs-work; \
	  $(BIN)/python -m skygrade.streamer.catalog_stats $(REAL_CATALOGS) \
	    build/holdout-seed17-catalogs-archive-kept; fi

bench: venv
	@for b in benchmarks/*.py; do echo "== $$b"; $(BIN)/python $$b || exit 1; done

clean:
	rm -rf $(VENV) $(DEMO) *.egg-info .pytest_cache .ruff_cache .import_linter_cache
