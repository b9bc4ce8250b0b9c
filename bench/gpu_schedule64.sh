#!/bin/bash
# The 64x64 noise-schedule question for the `default` preset (cosine squaredcos_cap_v2, its
# schedule until this measurement, vs linear, its schedule since), on a proxy that trains in minutes: the `default`
# network narrowed to block_out_channels (64, 128, 128, 128), batch 64, lr 1e-3, EMA 0.999 (a
# full `default` run needs ~20 GPU-minutes per schedule before the two part from chance; see
# docs/benchmarks.md). Everything else is the `default` preset's: 64x64 pixels, per-object
# label tokens at three resolutions, the class projection, 10% label dropout, bf16 autocast.
# Four runs side by side on one GPU, two training seeds per schedule, for RUN_SECONDS; then
# bench/ablation.py at their newest common epoch (EMA, DDIM 50, guidance 2: the preset's sampler).
# Usage: OUT=results bash bench/gpu_schedule64.sh
# (env: RUN_SECONDS=330, SCORE_SECONDS=150, SEEDS="0 1 2", PYTHON=python3, LIMIT=N and
#  PRECISION=bf16; e.g. LIMIT=64 RUN_SECONDS=60 PRECISION=no SEEDS=0 for a dry run on a CPU)
set -u
OUT=${OUT:-results}
PY=${PYTHON:-python3}
RUN_SECONDS=${RUN_SECONDS:-330}
SCORE_SECONDS=${SCORE_SECONDS:-150}
SEEDS=${SEEDS:-0 1 2}
. "$(dirname "$0")/gpu_setup.sh"

proxy=(--preset default --set "unet.block_out_channels=[64,128,128,128]" --batch-size 64 --lr 1e-3
       --ema-decay 0.999 --mixed-precision "${PRECISION:-bf16}" --epochs 500 --eval-every 2 --keep-last 0 $LIMIT)
for seed in 0 1; do
    for schedule in squaredcos_cap_v2 linear; do
        name=${schedule%%_*}_s$seed
        timeout "$RUN_SECONDS" $PY train.py "${proxy[@]}" --seed $seed --set schedule.beta_schedule=$schedule \
            --out-dir "runs/$name" > "runs/$name.log" 2>&1 &
    done
done
wait
echo "== training done at $SECONDS s =="
for name in squaredcos_s0 linear_s0 squaredcos_s1 linear_s1; do
    echo "-- $name: $(grep -m1 'run:' "runs/$name.log")"
    grep -i -m1 "error\|out of memory" "runs/$name.log"
    tail -n 2 "runs/$name/train_log.csv" 2>/dev/null
done
# shellcheck disable=SC2086
timeout "$SCORE_SECONDS" $PY bench/ablation.py --runs cosine_s0=runs/squaredcos_s0 linear_s0=runs/linear_s0 \
    cosine_s1=runs/squaredcos_s1 linear_s1=runs/linear_s1 --sampler ddim --steps 50 --quick --seeds $SEEDS \
    --out "$OUT/schedule64" 2>&1 | tee "$OUT/schedule64.log"
mkdir -p "$OUT/logs"
for name in squaredcos_s0 linear_s0 squaredcos_s1 linear_s1; do
    cp "runs/$name/train_log.csv" "$OUT/logs/$name.csv" 2>/dev/null
done
echo "done at $SECONDS s"
