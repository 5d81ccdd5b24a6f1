# Quick start: `make demo` (install, build the sample, train, evaluate, answer one) and `make test`.
PYTHON ?= python3
PIP ?= $(PYTHON) -m pip

.PHONY: install sample demo ablation test clean

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

test: install
	$(PYTHON) -m pytest -q tests

clean:
	rm -rf data/sample data/sample_en data/cache results/*_* results/ablate_*
