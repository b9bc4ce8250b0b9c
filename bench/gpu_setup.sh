# Shared start of the bench/gpu_*.sh scripts (sourced, not run; needs OUT and PY): offline mode,
# unbuffered logs, 2 CPU threads per process (several runs share the machine), less CUDA memory
# fragmentation, the GPU and library versions in the log, and train.json rendered into iclevr/.
# Turns LIMIT=N into train.py's "--limit N" (empty without LIMIT).
LIMIT=${LIMIT:+--limit $LIMIT}
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
export PYTORCH_CUDA_ALLOC_CONF=${PYTORCH_CUDA_ALLOC_CONF:-expandable_segments:True}
mkdir -p "$OUT" runs
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader 2>/dev/null
$PY -c "import torch, diffusers; print('torch', torch.__version__, 'diffusers', diffusers.__version__)"
$PY render_iclevr.py --json train.json --out iclevr --workers 16 2>&1 | tail -1
