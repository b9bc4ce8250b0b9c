#!/bin/bash
# The second GPU session behind docs/benchmarks.md (after bench/gpu_ablation.sh), as one script:
#  1. render the training set (if missing);
#  2. side by side on one GPU:
#     - the cpu preset trained for TRAIN_SECONDS with --eval-every 1 (how accuracy grows with the
#       epochs that a 2-core CPU cannot afford),
#     - the judge's recipe trained for JUDGE_EPOCHS (its accuracy ceiling; held-out accuracy is in
#       the log at every evaluation), then bench/evaluator_bench.py on it,
#     - train.py --compile end to end on the default preset (bf16, --eval-every 1);
#  3. the sampler study (bench/sampler_study.py) on the cpu run's newest checkpoint.
# Usage: OUT=results bash bench/gpu_study.sh
# (env: TRAIN_SECONDS=280, JUDGE_SECONDS=300, JUDGE_EPOCHS=10, COMPILE_SECONDS=240,
#  STUDY_SECONDS=200, JUDGE_DEVICE=cuda, LIMIT=N, PYTHON=python3, STUDY_ARGS and JUDGE_ARGS for quick dry runs)
# Every step has its own time limit; a killed training run leaves its completed epochs behind and
# the sampler study writes its JSON after every row, so a timeout loses little.
set -u
OUT=${OUT:-results}
PY=${PYTHON:-python3}
TRAIN_SECONDS=${TRAIN_SECONDS:-280}
JUDGE_SECONDS=${JUDGE_SECONDS:-300}
JUDGE_EPOCHS=${JUDGE_EPOCHS:-10}
COMPILE_SECONDS=${COMPILE_SECONDS:-240}
STUDY_SECONDS=${STUDY_SECONDS:-200}
STUDY_ARGS=${STUDY_ARGS:-}
JUDGE_ARGS=${JUDGE_ARGS:-}
JUDGE_DEVICE=${JUDGE_DEVICE:-cuda}
LIMIT=${LIMIT:+--limit $LIMIT}
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
mkdir -p "$OUT" runs
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader 2>/dev/null
$PY -c "import torch, diffusers; print('torch', torch.__version__, 'diffusers', diffusers.__version__)"
$PY render_iclevr.py --json train.json --out iclevr 2>&1 | tail -1

echo "== side by side: cpu preset ${TRAIN_SECONDS}s, judge ${JUDGE_EPOCHS} epochs, --compile =="
OMP_NUM_THREADS=2 timeout "$TRAIN_SECONDS" $PY train.py --preset cpu_pixel --epochs 500 --eval-every 1 $LIMIT \
    --out-dir runs/cpu_long > runs/cpu_long.log 2>&1 &
(OMP_NUM_THREADS=8 timeout "$JUDGE_SECONDS" $PY train_evaluator.py --epochs "$JUDGE_EPOCHS" --batch-size 64 \
    --extra-random 18000 --extra-root renders/judge_extra --evals 10 --device "$JUDGE_DEVICE" \
    --out runs/judge_long.pth $JUDGE_ARGS > runs/judge_long.log 2>&1
 echo "judge exit $?" >> runs/judge_long.log
 [ -f runs/judge_long.pth ] && OMP_NUM_THREADS=8 $PY bench/evaluator_bench.py --judge runs/judge_long.pth \
    --device "$JUDGE_DEVICE" >> runs/judge_long.log 2>&1) &
(OMP_NUM_THREADS=2 timeout "$COMPILE_SECONDS" $PY train.py --preset default --epochs 2 --limit 4096 \
    --mixed-precision bf16 --compile --eval-every 1 --out-dir runs/compile > runs/compile.log 2>&1
 echo "compile run exit $?" >> runs/compile.log) &
wait
grep -m1 'run:' runs/cpu_long.log
cat runs/cpu_long/train_log.csv 2>/dev/null
tr '\r' '\n' < runs/judge_long.log | grep -v "it/s\|img/s\|step/s\|s/step\|Warning\|warn\|^\s*$" | tail -n 25
tr '\r' '\n' < runs/compile.log | grep -v "it/s\|img/s\|step/s\|s/step\|Warning\|warn\|^\s*$" | tail -n 8
cat runs/compile/train_log.csv 2>/dev/null

echo "== sampler study on the cpu run =="
last=$(ls runs/cpu_long/model_epoch_*.pt 2>/dev/null | tail -n 1)
[ -n "$last" ] || { echo "no cpu_long checkpoint"; exit 1; }
$PY - "$last" "$OUT/cpu_long_last.pt" <<'EOF'
import sys, torch
ckpt = torch.load(sys.argv[1], weights_only=True)
ckpt["optimizer"] = None  # model + EMA weights only: small enough to bring back
torch.save(ckpt, sys.argv[2])
EOF
cp runs/cpu_long/loss_curve.png "$OUT/cpu_long_curve.png" 2>/dev/null
tar cf "$OUT/logs.tar" runs/*.log runs/*/train_log.csv 2>/dev/null
OMP_NUM_THREADS=8 timeout "$STUDY_SECONDS" $PY bench/sampler_study.py --ckpt "$last" --out "$OUT/sampler_study" $STUDY_ARGS
echo "study exit $?"
echo "done"
