#!/usr/bin/env bash
# The GPU figures of bench/RESULTS.md (bfloat16), on a machine with one GPU that JAX and PyTorch
# both see. Results go to $OUT (default bench/gpu_out). Parts: score_base, score_small, train,
# train_check, text, fit5, xtr, all (default). The xtr part needs faiss-cpu (carry its wheel).
#
#   bash bench/gpu.sh [part ...]
#
# Each part is one process; a part that fails is reported and the next one still runs.
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-bench/gpu_out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 TF_CPP_MIN_LOG_LEVEL=3
# JAX and PyTorch share the GPU within one process: JAX takes half of its memory up front.
export XLA_PYTHON_CLIENT_MEM_FRACTION=${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.5}
PY=${PYTHON:-python3}
parts=("$@")
[ ${#parts[@]} -eq 0 ] && parts=(all)

run() {  # name, command...
  local name=$1
  shift
  echo "== $name: $*"
  local start=$SECONDS
  timeout "${PART_TIMEOUT:-3600}" "$@" >"$OUT/$name.log" 2>&1
  local rc=$?
  echo "== $name: rc=$rc in $((SECONDS - start)) s"
  [ $rc -ne 0 ] && tail -20 "$OUT/$name.log"
  return 0
}

want() {
  local part
  for part in "${parts[@]}"; do [ "$part" = all ] || [ "$part" = "$1" ] && return 0; done
  return 1
}

nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv |
  tee "$OUT/gpu.txt"
$PY -c "import jax, flax, optax, torch, transformers; print(jax.devices(), 'jax', jax.__version__, \
'flax', flax.__version__, 'optax', optax.__version__, 'torch', torch.__version__, \
'transformers', transformers.__version__)" | tee -a "$OUT/gpu.txt"

if want score_base; then
  run score_base $PY bench/score_bench.py --sizes base --dtype bfloat16 --batch_size 256 \
    --docs 8192 --repeats 3 --skip_text --output "$OUT/score_base_gpu.json"
fi
if want train; then
  run train $PY bench/train_bench.py --size base --dtype bfloat16 --lists 8 --steps 5 \
    --output "$OUT/train_gpu.json"
fi
if want train_check; then
  run train_check $PY bench/train_bench.py --size base --dtype bfloat16 --lists 8 --steps 0 \
    --check_steps 60 --output "$OUT/train_check_gpu.json"
fi
if want score_small; then
  run score_small $PY bench/score_bench.py --sizes small --dtype bfloat16 --batch_size 256 \
    --docs 4096 --repeats 3 --skip_text --output "$OUT/score_small_gpu.json"
fi
if want text; then
  run text $PY bench/score_bench.py --sizes base --variants encdec --dtype bfloat16 \
    --batch_size 256 --docs 4096 --repeats 3 --variants "" --output "$OUT/score_text_gpu.json"
fi
if want fit5; then
  run fit5 $PY bench/fit5_bench.py --sizes small,base --lengths 128,256 --list_size 100 \
    --dtype bfloat16 --repeats 50 --output "$OUT/fit5_gpu.json"
fi
if want xtr; then
  run xtr $PY bench/xtr_bench.py --size base --emb_dim 0 --dtype bfloat16 --passages 100000 \
    --work_dir /tmp/rankt5_xtr_bench --output "$OUT/xtr_gpu.json"
fi
