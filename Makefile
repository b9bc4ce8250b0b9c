# Setup, demo and tests. Each target creates .venv and installs requirements.txt into it when
# missing (torch and torchvision come from the local wheel cache on the course machines).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
export HF_HUB_OFFLINE := 1

.PHONY: demo test lint bench-render clean

$(VENV)/.installed: requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet -r requirements.txt
	touch $@

# The main job on a fresh machine, CPU-sized: render the i-CLEVR training set (18,009 PNGs)
# and the figure of its first scenes. Rerunning continues where an interrupted run stopped.
demo: $(VENV)/.installed
	$(PY) render_iclevr.py --json train.json --out iclevr --figure docs/renders.png

test: $(VENV)/.installed lint
	$(PY) -m pytest

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check .

bench-render: $(VENV)/.installed
	$(PY) bench/render_speed.py

clean:
	rm -rf renders generated figures .pytest_cache .ruff_cache
