#!/bin/bash
# The GPU session behind the ablation and sampler tables of docs/benchmarks.md, as one script:
#  1. render the training set (if missing);
#  2. train, side by side on one GPU for RUN_SECONDS each, the cpu-sized design ("base") and
#     runs that each undo one of its choices (single multi-hot token instead of per-object tokens
#     + class projection; cosine instead of linear schedule; no label dropout), plus the seed
#     preset, all with train.py --eval-every 1 where sampling is cheap;
#  3. score them at a common epoch (bench/ablation.py; EMA vs raw weights comes from the base run);
#     meanwhile train.py --compile end to end on the default preset (bf16, --eval-every 1);
#  4. the sampler study (bench/sampler_study.py) on the base run's last checkpoint.
# Usage: OUT=results bash bench/gpu_ablation.sh
# (env: RUN_SECONDS=270, COMPILE_SECONDS=150, LIMIT=N, PYTHON=python3, and extra arguments of the
# two bench scripts in ABLATION_ARGS and STUDY_ARGS, e.g. "--seeds 0" for a quick dry run on a CPU)
# A killed run leaves its completed epochs behind (train.py is crash-safe), so timeouts are fine.
set -u
OUT=${OUT:-results}
PY=${PYTHON:-python3}
RUN_SECONDS=${RUN_SECONDS:-270}
COMPILE_SECONDS=${COMPILE_SECONDS:-150}
ABLATION_ARGS=${ABLATION_ARGS:-}
STUDY_ARGS=${STUDY_ARGS:-}
. "$(dirname "$0")/gpu_setup.sh"

echo "== training runs, ${RUN_SECONDS}s each, side by side =="
common="--epochs 500 --keep-last 0 $LIMIT"
start() {  # name, then train.py arguments
    local name=$1; shift
    timeout "$RUN_SECONDS" $PY train.py $common --out-dir "runs/$name" "$@" > "runs/$name.log" 2>&1 &
}
start base --preset cpu_pixel --eval-every 1
start single_token --preset cpu_pixel --eval-every 1 \
    --set label_tokens=false --set unet.cross_attention_dim=24 --set unet.class_embed_type=null
start cosine --preset cpu_pixel --eval-every 1 --set schedule.beta_schedule=squaredcos_cap_v2
start no_dropout --preset cpu_pixel --eval-every 1 --cond-dropout 0
start seed --preset seed
wait
for name in base single_token cosine no_dropout seed; do
    echo "-- $name: $(grep -m1 'run:' "runs/$name.log")"
    tail -n 3 "runs/$name/train_log.csv" 2>/dev/null
done

echo "== scoring at a common epoch; train.py --compile on the default preset meanwhile =="
(timeout "$COMPILE_SECONDS" $PY train.py --preset default --epochs 2 --limit 4096 --mixed-precision bf16 --compile \
    --eval-every 1 --out-dir runs/compile > runs/compile.log 2>&1; echo "compile run exit $?" >> runs/compile.log) &
$PY bench/ablation.py --runs base=runs/base single_token=runs/single_token cosine=runs/cosine \
    no_dropout=runs/no_dropout --out "$OUT/ablation" $ABLATION_ARGS
$PY bench/ablation.py --runs base=runs/base seed=runs/seed --out "$OUT/seed_vs_base" $ABLATION_ARGS
wait
grep -v "it/s\|step/s\|Warning\|warn\|^\s*$" runs/compile.log | tail -n 15
cat runs/compile/train_log.csv 2>/dev/null

echo "== sampler study on the base run =="
last=$(ls runs/base/model_epoch_*.pt 2>/dev/null | tail -n 1)
[ -n "$last" ] || { echo "no base checkpoint"; exit 1; }
$PY bench/sampler_study.py --ckpt "$last" --out "$OUT/sampler_study" $STUDY_ARGS
$PY - "$last" "$OUT/base_last.pt" <<'EOF'
import sys, torch
ckpt = torch.load(sys.argv[1], weights_only=True)
ckpt["optimizer"] = None  # model + EMA weights only: small enough to bring back
torch.save(ckpt, sys.argv[2])
EOF
tar cf "$OUT/logs.tar" runs/*.log runs/*/train_log.csv 2>/dev/null
echo "done"
