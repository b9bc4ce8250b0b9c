# Setup, demo and tests. Each target creates .venv and installs requirements.txt into it when
# missing (torch and torchvision come from the local wheel cache on the course machines).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
export HF_HUB_OFFLINE := 1

.PHONY: demo test lint bench-render bench-evaluator clean

$(VENV)/.installed: requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet -r requirements.txt
	touch $@

# The main job on a fresh machine, CPU-sized: render the i-CLEVR training set (18,009 PNGs) and
# the figure of its first scenes, train the judge when checkpoint.pth is missing, then score
# renders of test.json and new_test.json with it (a sanity check: they must come out >= 0.99).
# Rerunning reuses what is done (renders, judge) and continues what was interrupted.
demo: $(VENV)/.installed
	$(PY) render_iclevr.py --json train.json --out iclevr --figure docs/renders.png
	$(MAKE) --no-print-directory checkpoint.pth
	$(PY) render_iclevr.py --json test.json --out renders/test
	$(PY) render_iclevr.py --json new_test.json --out renders/new_test
	@echo "sanity: the judge on renders of the test label files (must be >= 0.99):"
	$(PY) evaluate_generated.py --json test.json --images renders/test
	$(PY) evaluate_generated.py --json new_test.json --images renders/new_test

checkpoint.pth: | $(VENV)/.installed
	$(PY) train_evaluator.py --data-root iclevr --json train.json --out checkpoint.pth

test: $(VENV)/.installed lint
	$(PY) -m pytest

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check .

bench-render: $(VENV)/.installed
	$(PY) bench/render_speed.py

bench-evaluator: $(VENV)/.installed
	$(PY) bench/evaluator_bench.py --ckpt checkpoint.pth

clean:
	rm -rf renders generated figures .pytest_cache .ruff_cache
