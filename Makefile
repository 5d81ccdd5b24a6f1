# Quick start: `make demo` (install, build the sample, train, evaluate, answer one) and `make test`.
#
# Inside a virtual environment (venv or conda) everything installs into it. Outside one, the Makefile makes .venv and
# installs and runs everything there: the system Python of current Debian and Ubuntu refuses `pip install` (PEP 668,
# "externally-managed-environment"). PYTHON=... chooses the interpreter yourself.
SYSTEM_PYTHON ?= python3
IN_ENV := $(shell $(SYSTEM_PYTHON) -c 'import os, sys; print(int(sys.prefix != sys.base_prefix or "CONDA_PREFIX" in os.environ))' 2>/dev/null)
ifeq ($(IN_ENV),1)
PYTHON ?= $(SYSTEM_PYTHON)
else
PYTHON ?= .venv/bin/python
endif
PIP ?= $(PYTHON) -m pip
VENV := $(if $(filter .venv/bin/python,$(PYTHON)),.venv/ready)

.PHONY: install sample demo ablation bench models cost bok-proxy figs chromium lint test clean gpu-check

.venv/ready:
	@echo "not inside a virtual environment: making one in .venv (PYTHON=... to use another interpreter)"
	@rm -rf .venv
	@$(SYSTEM_PYTHON) -m venv .venv && .venv/bin/python -m pip --version >/dev/null 2>&1 || { rm -rf .venv; \
	  echo "error: '$(SYSTEM_PYTHON) -m venv' cannot make a virtual environment here. On Debian or Ubuntu install the"; \
	  echo "package python3-venv (sudo apt-get install python3-venv), or activate a venv or conda environment first."; \
	  exit 1; }
	@touch $@

install: $(VENV)
	$(PIP) install -q -r requirements.txt

sample: install
	$(PYTHON) download.py --sample

demo: install sample
	$(PYTHON) main.py --preset sample
	$(PYTHON) inference.py --infer_data all
	$(PYTHON) inference_each.py --seed 0

# The README's sample table: the full model and its question-only and image-only ablations, each trained and
# evaluated, side by side in results/ablation/comparison.md.
ablation: install sample
	$(PYTHON) main.py --preset sample --results_dir results/ablation/full
	$(PYTHON) inference.py --results_dir results/ablation/full
	$(PYTHON) main.py --preset sample --config configs/ablate_image.yaml --results_dir results/ablation/image
	$(PYTHON) inference.py --results_dir results/ablation/image
	$(PYTHON) main.py --preset sample --config configs/ablate_question.yaml --results_dir results/ablation/question
	$(PYTHON) inference.py --results_dir results/ablation/question
	$(PYTHON) report.py --compare results/ablation/full/all_* results/ablation/image/all_* \
	  results/ablation/question/all_* --out results/ablation
	@echo "the table: results/ablation/comparison.md"

# The README's speed row on this machine's CPU (bench.py's own data under data/bench/; on a GPU: make gpu-check).
bench: install
	@mkdir -p results
	bash -o pipefail -c '$(PYTHON) bench.py --device cpu --quick | tee results/bench_cpu.txt'
	@echo "the figures: results/bench_cpu.txt (the last line is the speedup)"

# The README's model tables (tools/compare.py: each model with three seeds, evaluated, then report.py --compare's
# mean ± std in results/<table>/comparison.md). models: the sample, with held-out facts, answered from its knowledge
# base (GEL-VQA's KG embeddings first: kge.py's defaults); cost: seconds per training step of each model, side by
# side; bok-proxy: BOK-VQA's real questions, triples and answers with proxy images (tools/bok_proxy.py; needs
# ../shared).
models: install sample
	$(PYTHON) kge.py --data_dir data/sample --out results/kge_sample
	$(PYTHON) tools/compare.py --data_dir data/sample --kge_dir results/kge_sample --out results/models \
	  --models baseline gel_vqa hilink hilink_kb oracle_triple oracle_text
	@echo "the table: results/models/comparison.md"

cost: install sample
	$(PYTHON) kge.py --data_dir data/sample --out results/kge_sample
	$(PYTHON) tools/cost.py --data_dir data/sample --kge_dir results/kge_sample --out results/cost --rounds 10
	@echo "the table: results/cost/cost.md"

bok-proxy: install
	$(PYTHON) tools/bok_proxy.py
	@echo "the tables: results/bok_proxy/{ko,en,bi}/comparison.md"

# Architecture diagrams figs/base_model.png and figs/TE_model.png, drawn from model.py, and how knowledge enters
# gel_vqa and hilink (figs/gel_vqa.png, figs/hilink.png), drawn from gel.py and hilink.py.
figs: install
	$(PYTHON) figs/draw_model.py
	$(PYTHON) figs/draw_knowledge.py

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

# ruff.toml's rules on the whole tree (.ci/run runs it before the tests).
lint: $(VENV)
	$(PIP) install -q "ruff>=0.6"
	$(PYTHON) -m ruff check .

test: install chromium
	$(PIP) install -q -r requirements-demo.txt
	$(PYTHON) -m pytest -q -n auto --maxprocesses 4 --durations=15 tests

# The CUDA check of the README's GPU table (tools/gpu_check.sh): OUT=folder for its logs and summary.md.
OUT ?= gpu_check
gpu-check:
	bash tools/gpu_check.sh $(OUT)

clean:
	rm -rf data/sample data/sample_en data/sample_earlier data/bok_proxy data/cache results/*_* results/ablate_* \
	  results/ablation results/bench_cpu.txt \
	  results/models results/cost results/kge_sample* results/bok_proxy
