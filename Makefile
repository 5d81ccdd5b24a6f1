# Quick start: `make demo` (install, build the sample, train, evaluate, answer one) and `make test`.
PYTHON ?= python3
PIP ?= $(PYTHON) -m pip

.PHONY: install sample demo ablation figs chromium test clean

install:
	$(PIP) install -q -r requirements.txt

sample:
	$(PYTHON) download.py --sample

demo: install sample
	$(PYTHON) main.py --preset sample
	$(PYTHON) inference.py --infer_data all
	$(PYTHON) inference_each.py --seed 0

# The README's question-only and image-only rows.
ablation: install sample
	$(PYTHON) main.py --preset sample --ablate image --results_dir results/ablate_image
	$(PYTHON) inference.py --results_dir results/ablate_image
	$(PYTHON) main.py --preset sample --ablate question --results_dir results/ablate_question
	$(PYTHON) inference.py --results_dir results/ablate_question

# Architecture diagrams figs/base_model.png and figs/TE_model.png, drawn from model.py.
figs: install
	$(PYTHON) figs/draw_model.py

# The browser test drives Debian's chromium (Playwright's own browser download needs a CDN). apt-get runs only when
# no browser is found, and apt-get update only when the install fails without it.
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
chromium:
	@if [ -n "$$CHROMIUM" ] || command -v chromium >/dev/null || command -v chromium-browser >/dev/null \
	    || command -v google-chrome >/dev/null; then :; \
	elif command -v apt-get >/dev/null; then \
	    export DEBIAN_FRONTEND=noninteractive; \
	    $(SUDO) apt-get install -y -qq --no-install-recommends chromium >/dev/null 2>&1 \
	    || { $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq --no-install-recommends chromium; } \
	    || echo "could not install chromium: tests/test_demo.py fails in CI and is skipped elsewhere"; \
	else echo "no chromium and no apt-get: install chromium (or set CHROMIUM=path) for tests/test_demo.py"; fi

test: install chromium
	$(PIP) install -q -r requirements-demo.txt
	$(PYTHON) -m pytest -q tests

clean:
	rm -rf data/sample data/sample_en data/cache results/*_* results/ablate_*
