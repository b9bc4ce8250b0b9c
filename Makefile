# Setup, demo and tests. Each target creates .venv and installs requirements.txt into it when
# missing (torch and torchvision come from the local wheel cache on the course machines).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
export HF_HUB_OFFLINE := 1

.PHONY: demo test test-long lint bench-render bench-evaluator bench-train clean

$(VENV)/.installed: requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet -r requirements.txt
	touch $@

# The main job on a fresh machine, CPU-sized: render the i-CLEVR training set (18,009 PNGs),
# train the judge when checkpoint.pth is missing and check it on renders of the test label
# files, train the `cpu` diffusion preset for DEMO_EPOCHS epochs, generate test and new_test,
# score them, and draw the figures under figures/. Rerunning reuses what is done (renders,
# judge, checkpoints, images) and continues what was interrupted.
DEMO_EPOCHS ?= 6
demo: $(VENV)/.installed
	@test -f .demo_started || date +%s > .demo_started
	$(PY) render_iclevr.py --json train.json --out iclevr --figure docs/renders.png
	$(MAKE) --no-print-directory checkpoint.pth
	$(PY) render_iclevr.py --json test.json --out renders/test
	$(PY) render_iclevr.py --json new_test.json --out renders/new_test
	@echo "sanity: the judge on renders of the test label files (target: >= 0.99):"
	$(PY) evaluate_generated.py --json test.json --images renders/test
	$(PY) evaluate_generated.py --json new_test.json --images renders/new_test
	$(PY) train.py --preset cpu --epochs $(DEMO_EPOCHS) --resume --out-dir checkpoints
	$(PY) generate.py --checkpoints-dir checkpoints
	$(PY) grid.py --images generated/test --out figures/test_grid.png --caption "test.json"
	$(PY) grid.py --images generated/new_test --out figures/new_test_grid.png --caption "new_test.json"
	$(PY) denoise.py --checkpoints-dir checkpoints --out figures/denoise.png
	cp checkpoints/loss_curve.png figures/loss_curve.png
	@echo "== demo summary =="
	@$(PY) evaluate_generated.py
	@echo "figures: figures/test_grid.png figures/new_test_grid.png figures/denoise.png figures/loss_curve.png"
	@echo "total time: $$(( ($$(date +%s) - $$(cat .demo_started)) / 60 )) min since the first make demo"
	@rm -f .demo_started

# The judge, trained when checkpoint.pth is missing (a course checkpoint.pth put there is used as
# it is). JUDGE=quick, make demo's default: 2.5 passes over 36,009 renders, about 17 min of
# training on 2 CPU cores, 0.97 on fresh renders. JUDGE=full: train_evaluator.py's defaults, 3
# passes over 90,009 renders, about 45 min plus 5 min of rendering, 0.998 (e.g. make demo JUDGE=full).
JUDGE ?= quick
JUDGE_FLAGS_quick := --extra-random 18000 --extra-root renders/judge_extra --epochs 2.5
JUDGE_FLAGS_full :=
checkpoint.pth: | $(VENV)/.installed
	$(if $(filter $(JUDGE),quick full),,$(error JUDGE must be quick or full, not "$(JUDGE)"))
	$(PY) render_iclevr.py --json train.json --out iclevr
	$(PY) train_evaluator.py --data-root iclevr --json train.json --out checkpoint.pth $(JUDGE_FLAGS_$(JUDGE))

test: $(VENV)/.installed lint
	$(PY) -m pytest

# The full reliability suite: many more random kills per tool and the soak run (a few minutes more).
test-long: $(VENV)/.installed lint
	$(PY) -m pytest -m "long or not long"

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check .

bench-render: $(VENV)/.installed
	$(PY) bench/render_speed.py

bench-evaluator: $(VENV)/.installed
	$(PY) bench/evaluator_bench.py --ckpt checkpoint.pth

bench-train: $(VENV)/.installed
	$(PY) bench/train_speed.py

clean:
	rm -rf renders generated figures .pytest_cache .ruff_cache .demo_started
