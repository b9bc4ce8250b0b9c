#!/bin/bash
# The `cpu` preset trained long with today's recipe, and the guidance scale as the model learns.
# Three runs side by side on one GPU for RUN_SECONDS, each with --eval-every 2:
#  - patched:      the `cpu` preset at the lr 2e-3 it had then (2x2 patches, Min-SNR-5);
#  - unpatched:    the same recipe on the unpatched network (32x32 pixels straight into the UNet):
#                  the `cpu_long` preset, which this measurement created;
#  - unpatched_mse: that network with the recipe it was recommended with before (plain MSE, lr 1e-3).
# Then bench/sampler_study.py on each run's newest checkpoint: DDIM and SDE-DPM-Solver++ at 20,
# 50 and 100 steps (guidance 2) and a guidance sweep 1-7 with DDIM 50 (the preset's sampler).
# When it ran (docs/benchmarks.md) the unpatched runs were spelt `--preset cpu_pixel --set patch_size=1
# --set unet.sample_size=32 --set unet.in_channels=3 --set unet.out_channels=3`, the same network
# and training, and every preset sampled at guidance 2, so --eval-every scored with guidance 2
# where it now uses each preset's own (5 for cpu, 3 for cpu_long).
# Usage: OUT=results bash bench/gpu_long.sh
# (env: RUN_SECONDS=300, STUDY_SECONDS=200, SEEDS="0 1 2 3 4", PYTHON=python3, LIMIT=N, and
#  STUDY_ARGS, e.g. "--steps 5" for a dry run on a CPU: LIMIT=64 RUN_SECONDS=60 STUDY_ARGS="--steps 5")
set -u
OUT=${OUT:-results}
PY=${PYTHON:-python3}
RUN_SECONDS=${RUN_SECONDS:-300}
STUDY_SECONDS=${STUDY_SECONDS:-200}
SEEDS=${SEEDS:-0 1 2 3 4}
STUDY_ARGS=${STUDY_ARGS:-}
. "$(dirname "$0")/gpu_setup.sh"
mkdir -p "$OUT/logs"

run() { name=$1; shift
    # shellcheck disable=SC2086
    timeout "$RUN_SECONDS" $PY train.py --epochs 500 --eval-every 2 --keep-last 0 $LIMIT \
        --out-dir "runs/$name" "$@" > "runs/$name.log" 2>&1 & }
run patched --preset cpu_pixel --lr 2e-3
run unpatched --preset cpu_long
run unpatched_mse --preset cpu_long --lr 1e-3 --snr-gamma 0
wait
echo "== training done at $SECONDS s =="
names=(patched unpatched unpatched_mse)
for name in "${names[@]}"; do
    echo "-- $name: $(grep -m1 'run:' "runs/$name.log")"
    grep -i -m1 "error\|out of memory" "runs/$name.log"
    tail -n 1 "runs/$name/train_log.csv" 2>/dev/null
    cp "runs/$name/train_log.csv" "$OUT/logs/$name.csv" 2>/dev/null
done
for name in "${names[@]}"; do
    ckpt=$(ls runs/"$name"/model_epoch_*.pt 2>/dev/null | tail -n 1)
    [ -n "$ckpt" ] || continue
    echo "== sampler study of $ckpt =="
    # shellcheck disable=SC2086
    timeout "$STUDY_SECONDS" $PY bench/sampler_study.py --ckpt "$ckpt" --no-ddpm --samplers ddim dpm-sde \
        --steps 20 50 100 --guidances 1 2 3 5 7 --guidance-sampler ddim:50 --seeds $SEEDS $STUDY_ARGS \
        --out "$OUT/study_$name" 2>&1 | tr '\r' '\n' | grep -v "it/s\]$" | tee "$OUT/study_$name.log" &
done
wait
echo "done at $SECONDS s"
