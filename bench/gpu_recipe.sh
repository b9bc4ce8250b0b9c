#!/bin/bash
# The third GPU session behind docs/benchmarks.md, as one script. Side by side on one GPU:
#  - make demo's training budget: the `cpu` preset for 6 epochs (what a 2-core CPU trains in
#    ~12.5 minutes) with one recipe change each: Min-SNR-5 loss weighting, v-prediction, a
#    cosine learning-rate decay to 0 over the 6 epochs, lr 2e-3 (the base run's epoch 6 is the
#    reference: its constant schedule makes it the same run); then bench/ablation.py on all of
#    them at epoch 6 (EMA, DDIM 50, guidance 2, 5 seeds: make demo's sampler);
#  - the same `cpu` preset trained for RUN_SECONDS with per-object tokens (base) and with the
#    seed's single multi-hot token (single_token): the tokens question at length;
#  - the 64x64 `default` preset (bf16) with the cosine schedule (its own then) and with the linear one, for
#    RUN_SECONDS each, --eval-every 2;
# then bench/ablation.py on both pairs at their newest common epoch.
# Usage: OUT=results bash bench/gpu_recipe.sh
# (env: RUN_SECONDS=330, SCORE_SECONDS=140, DEMO_EPOCHS=6, LIMIT=N, PYTHON=python3, PRESET_SMALL=cpu,
#  PRESET_BIG=default and SCORE_ARGS, e.g. "--seeds 0 --steps 5" for a quick dry run on a CPU)
# Memory: a `default` run takes ~35 GB at batch 128; beside the six small runs the second one ran
# out of memory on an 80 GB H100 (its log says so), so on such a card compare the two schedules in
# a call of their own (docs/benchmarks.md has the follow-up command).
# A killed run keeps its completed epochs (train.py is crash-safe) and the scoring prints every
# row as it goes, so a timeout loses little.
set -u
OUT=${OUT:-results}
PY=${PYTHON:-python3}
RUN_SECONDS=${RUN_SECONDS:-330}
SCORE_SECONDS=${SCORE_SECONDS:-140}
DEMO_EPOCHS=${DEMO_EPOCHS:-6}
SMALL=${PRESET_SMALL:-cpu}
BIG=${PRESET_BIG:-default}
SCORE_ARGS=${SCORE_ARGS:-}
. "$(dirname "$0")/gpu_setup.sh"

echo "== training, side by side: $DEMO_EPOCHS-epoch recipe runs; ${RUN_SECONDS}s for the long ones =="
declare -A pid
start() {  # name, seconds, then train.py arguments
    local name=$1 seconds=$2; shift 2
    timeout "$seconds" $PY train.py --keep-last 0 $LIMIT --out-dir "runs/$name" "$@" > "runs/$name.log" 2>&1 &
    pid[$name]=$!
}
long="--epochs 500 --eval-every 1"
start base "$RUN_SECONDS" --preset "$SMALL" $long
start single_token "$RUN_SECONDS" --preset "$SMALL" $long \
    --set label_tokens=false --set unet.cross_attention_dim=24 --set unet.class_embed_type=null
start big_cosine "$RUN_SECONDS" --preset "$BIG" --mixed-precision bf16 --epochs 500 --eval-every 2 \
    --set schedule.beta_schedule=squaredcos_cap_v2
start big_linear "$RUN_SECONDS" --preset "$BIG" --mixed-precision bf16 --epochs 500 --eval-every 2 \
    --set schedule.beta_schedule=linear
short="--preset $SMALL --epochs $DEMO_EPOCHS"  # scored once, at the end, with 5 seeds
start snr5 $((RUN_SECONDS + 60)) $short --snr-gamma 5
start vpred $((RUN_SECONDS + 60)) $short --set schedule.prediction_type=v_prediction
start cosine_lr $((RUN_SECONDS + 60)) $short --lr-scheduler cosine
start lr2e-3 $((RUN_SECONDS + 60)) $short --lr 2e-3
wait "${pid[snr5]}" "${pid[vpred]}" "${pid[cosine_lr]}" "${pid[lr2e-3]}"  # the recipe runs end first:
reference="runs/base/model_epoch_$(printf %03d "$DEMO_EPOCHS").pt"
while [ ! -f "$reference" ] && kill -0 "${pid[base]}" 2>/dev/null; do sleep 5; done
echo "recipe runs done at $SECONDS s; scoring them while the long runs train"
(timeout "$SCORE_SECONDS" $PY bench/ablation.py --runs base=runs/base snr5=runs/snr5 vpred=runs/vpred \
    cosine_lr=runs/cosine_lr lr2e-3=runs/lr2e-3 --epoch "$DEMO_EPOCHS" --sampler ddim --steps 50 --quick \
    --out "$OUT/recipe" $SCORE_ARGS > "$OUT/recipe.log" 2>&1) &
wait
echo "== training done at $SECONDS s =="
for name in base single_token big_cosine big_linear snr5 vpred cosine_lr lr2e-3; do
    echo "-- $name: $(grep -m1 'run:' "runs/$name.log")"
    tail -n 2 "runs/$name/train_log.csv" 2>/dev/null
done
cat "$OUT/recipe.log"

echo "== scoring the long pairs at their newest common epoch (${SCORE_SECONDS}s) =="
timeout "$SCORE_SECONDS" $PY bench/ablation.py --runs base=runs/base single_token=runs/single_token \
    --sampler ddim --steps 50 --quick --out "$OUT/tokens" $SCORE_ARGS > "$OUT/tokens.log" 2>&1 &
timeout "$SCORE_SECONDS" $PY bench/ablation.py --runs cosine=runs/big_cosine linear=runs/big_linear \
    --sampler ddim --steps 50 --quick --seeds 0 1 2 --out "$OUT/big_schedule" $SCORE_ARGS > "$OUT/big_schedule.log" 2>&1 &
wait
cat "$OUT/tokens.log" "$OUT/big_schedule.log"
tar cf "$OUT/logs.tar" runs/*.log runs/*/train_log.csv runs/*/loss_curve.png 2>/dev/null
echo "done at $SECONDS s"
