# Setup, demo and tests. Each target creates .venv and installs requirements.txt into it when
# missing (torch and torchvision come from the local wheel cache on the course machines).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
export HF_HUB_OFFLINE := 1

.PHONY: demo app judge autoencoder autoencoder-cpu64 generator verifier test test-long lint bench-render bench-evaluator bench-train clean

$(VENV)/.installed: requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet -r requirements.txt
	touch $@

# The main job on a fresh machine, CPU-sized. First the shipped generator weights/generator.safetensors (no
# training): its test and new_test grids, scores and denoising figure, within minutes. Then from
# scratch: render the i-CLEVR training set (18,009 PNGs), check the judge (./checkpoint.pth when
# present, else the shipped weights/judge.pth; never trained here) on renders of the test label
# files, train the `cpu` preset (32x32) for DEMO_EPOCHS epochs (scoring EMA samples every EVAL_EVERY), generate
# test and new_test, score them beside the shipped generator's, and draw the figures under figures/.
# Each image is the best of several draws (SHIPPED_BEST_OF for the shipped generator, BEST_OF for the one
# trained here), picked by the shipped verifier weights/verifier_cpu64.safetensors (docs/sampling.md; 1 draws
# plainly, faster). Each draw of the model trained here is redrawn at native 64x64 by the shipped generator from
# noise level 0.3 (generate.py --refiner): its objects and layout kept, its detail 64x64.
# Rerunning reuses what is done (renders, checkpoints, images) and continues what was interrupted.
DEMO_EPOCHS ?= 12
EVAL_EVERY ?= 3
SHIPPED_BEST_OF ?= 8
BEST_OF ?= 8
SHIPPED := weights/generator.safetensors
demo: $(VENV)/.installed
	@test -f .demo_started || date +%s > .demo_started
	@echo "== 1/2: the shipped generator $(SHIPPED), trained beforehand (docs/latent.md) =="
	$(PY) generate.py --ckpt $(SHIPPED) --split test --best-of $(SHIPPED_BEST_OF) --out shipped/test
	$(PY) generate.py --ckpt $(SHIPPED) --split new_test --best-of $(SHIPPED_BEST_OF) --out shipped/new_test
	$(PY) evaluate_generated.py --generated-root shipped
	$(PY) denoise.py --ckpt $(SHIPPED) --out figures/shipped_denoise.png
	@echo "shipped generator after $$(( $$(date +%s) - $$(cat .demo_started) )) s: grids shipped/test/grid.png" \
		"shipped/new_test/grid.png, denoising figures/shipped_denoise.png"
	@echo "== 2/2: the cpu preset trained here from scratch =="
	$(PY) render_iclevr.py --json train.json --out iclevr --figure figures/renders.png
	$(PY) render_iclevr.py --json test.json --out renders/test
	$(PY) render_iclevr.py --json new_test.json --out renders/new_test
	@echo "sanity: the judge on renders of the test label files (expected: 1.0000 and 0.9881):"
	$(PY) evaluate_generated.py --json test.json --images renders/test
	$(PY) evaluate_generated.py --json new_test.json --images renders/new_test
	$(PY) train.py --preset cpu --epochs $(DEMO_EPOCHS) --eval-every $(EVAL_EVERY) --resume --out checkpoints
	$(PY) generate.py --checkpoints-dir checkpoints --best-of $(BEST_OF) --refiner $(SHIPPED)
	$(PY) grid.py --images generated/test --out figures/test_grid.png --caption "test.json"
	$(PY) grid.py --images generated/new_test --out figures/new_test_grid.png --caption "new_test.json"
	$(PY) denoise.py --checkpoints-dir checkpoints --out figures/denoise.png
	cp checkpoints/loss_curve.png figures/loss_curve.png
	@echo "== demo summary: the shipped generator and the one trained here =="
	@$(PY) evaluate_generated.py --generated-root shipped generated
	@echo "figures: figures/test_grid.png figures/new_test_grid.png figures/denoise.png figures/loss_curve.png" \
		"(EMA samples during training: checkpoints/samples/); shipped: shipped/*/grid.png figures/shipped_denoise.png"
	@echo "total time: $$(( ($$(date +%s) - $$(cat .demo_started) ) / 60 )) min since the first make demo"
	@rm -f .demo_started

# Retrain the shipped judge weights/judge.pth (fp16) in two steps (time and accuracy: docs/evaluator.md,
# "The shipped judge"): train_evaluator.py's default recipe on standard renders (3 passes over train.json's
# renders plus 72,000 random scenes) into runs/judge_base.pth, kept so a rerun skips it; then one pass
# fine-tuned on 36,000 random scenes drawn both standard and randomized (render_iclevr.py --randomize 1).
# It overwrites the shipped file: its sha256 is pinned in tests/test_shipped.py.
judge: $(VENV)/.installed
	$(PY) render_iclevr.py --json train.json --out iclevr
	test -f runs/judge_base.pth || $(PY) train_evaluator.py --precision fp32 --out runs/judge_base.pth
	$(PY) train_evaluator.py --init runs/judge_base.pth --epochs 1 --lr 3e-4 --extra-random 36000 --precision fp32 \
		--extra-randomize 0 1 --half --out weights/judge.pth

# Retrain the shipped autoencoder of the cpu preset, weights/autoencoder.safetensors (its recipe and time:
# docs/latent.md). It overwrites the shipped file: its sha256 is pinned in tests/test_shipped.py.
AE_STAGES := runs/autoencoder
autoencoder: $(VENV)/.installed
	$(PY) render_iclevr.py --json train.json --out iclevr
	$(PY) train_autoencoder.py --precision fp32 --out $(AE_STAGES)/stage1.pt
	$(PY) train_autoencoder.py --precision fp32 --init $(AE_STAGES)/stage1.pt --epochs 12 --lr 1e-3 --object-weight 50 \
		--out $(AE_STAGES)/stage2.pt
	$(PY) train_autoencoder.py --precision fp32 --init $(AE_STAGES)/stage2.pt --epochs 12 --lr 1e-3 --object-weight 200 \
		--out weights/autoencoder.safetensors

# Retrain the cpu64 preset's autoencoder, weights/autoencoder_cpu64.safetensors (64x64 <-> 16x16x8; recipe and time:
# docs/latent.md): two runs of the whole network, then one of the decoder alone (the latents stay those of the second
# run), bf16 where the CPU has AMX. Its sha256 is pinned in tests/test_shipped.py; the shipped generator carries its
# decoder (export.py --decoder).
autoencoder-cpu64: $(VENV)/.installed
	$(PY) render_iclevr.py --json train.json --out iclevr
	$(PY) train_autoencoder.py --preset cpu64 --epochs 12 --object-weight 50 --out $(AE_STAGES)/cpu64_stage1.pt
	$(PY) train_autoencoder.py --preset cpu64 --init $(AE_STAGES)/cpu64_stage1.pt --epochs 24 --lr 1e-3 \
		--object-weight 200 --out $(AE_STAGES)/cpu64_stage2.safetensors
	$(PY) train_autoencoder.py --preset cpu64 --init $(AE_STAGES)/cpu64_stage2.safetensors --decoder-only --epochs 36 \
		--lr 5e-4 --object-weight 200 --out weights/autoencoder_cpu64.safetensors

# Retrain the shipped generator weights/generator.safetensors: the cpu64 preset (64x64), 50 epochs at lr 1e-3 (1.3-2 h
# on 2 cores; rerun to continue an interrupted run; every epoch's checkpoint is kept in $(GENERATOR_RUN) for the
# curve), its EMA weights exported as one small file (docs/latent.md). It overwrites that file: its sha256 is
# pinned in tests/test_shipped.py, and its verifier must follow (make verifier).
GENERATOR_RUN := runs/generator
generator: $(VENV)/.installed
	$(PY) render_iclevr.py --json train.json --out iclevr
	$(PY) train.py --preset cpu64 --epochs 50 --lr 1e-3 --keep-last 0 --resume --out $(GENERATOR_RUN)
	$(PY) export.py --ckpt $(GENERATOR_RUN)/model_epoch_050.pt --generator --force --out $(SHIPPED)

# Retrain the generators' verifiers (generate.py --best-of K: docs/sampling.md), 2-9 min each on 2 cores:
# weights/verifier_cpu64.safetensors (fp16) for the shipped generator (it also picks make demo's refined draws),
# weights/verifier_cpu.safetensors for the 32x32 weights/generator_cpu.safetensors. Their sha256 are pinned in
# tests/test_shipped.py.
verifier: $(VENV)/.installed
	$(PY) render_iclevr.py --json train.json --out iclevr
	$(PY) train_verifier.py --ckpt $(SHIPPED) --fp16 --out weights/verifier_cpu64.safetensors
	$(PY) train_verifier.py --ckpt weights/generator_cpu.safetensors --out weights/verifier_cpu.safetensors

# The web demo (app.py) on http://127.0.0.1:7860, with gradio from its own requirements file.
app: $(VENV)/.installed
	$(VENV)/bin/pip install --quiet -r requirements-app.txt
	$(PY) app.py

test: $(VENV)/.installed lint
	$(PY) -m pytest

# The full reliability suite: many more random kills per tool and the soak run (a few minutes more).
test-long: $(VENV)/.installed lint
	$(PY) -m pytest -m "long or not long"

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check .

bench-render: $(VENV)/.installed
	$(PY) -m bench.render_speed

bench-evaluator: $(VENV)/.installed
	$(PY) -m bench.evaluator_bench

bench-train: $(VENV)/.installed
	$(PY) -m bench.train_speed

clean:
	rm -rf renders generated shipped figures .pytest_cache .ruff_cache .demo_started
