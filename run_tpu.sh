#!/usr/bin/env bash
# Launch `rankt5 train` as one multi-process JAX job: on every worker of a Cloud TPU VM slice, or
# as one process per GPU on GPU hosts.
#
#   ./run_tpu.sh --tpu NAME --zone ZONE [--project P] [--setup] -- --gin_file=experiments/msmarco_encdec_softmax.gin \
#       --gin.MODEL_DIR="'/shared/rankt5'" --gin.VOCAB="'/shared/spiece.model'" ...
#   ./run_tpu.sh --gpu --num_gpus N [--port P] -- --gin_file=... --gin.MODEL_DIR="'/data/rankt5'"
#   ./run_tpu.sh --gpu --num_gpus N --num_nodes M --node_rank R --coordinator HOST:PORT -- ...
#   ./run_tpu.sh --gpu -- ...        (one process driving all local GPUs)
#   add --dry_run to print the commands instead of running them.
#
# TPU: every worker runs the same `rankt5 train --multihost`; JAX finds the slice's processes
# itself (no process flags). The repo is expected at ~/rankt5_jax on each worker (--setup copies
# it with `gcloud compute tpus tpu-vm scp` and installs it with the tpu extra).
# GPU: N processes on this host, process i sees GPU i only (CUDA_VISIBLE_DEVICES=i), joined
# through a coordinator on 127.0.0.1:PORT; with --num_nodes M run this on each of M hosts
# (--node_rank 0..M-1, all with node 0's --coordinator HOST:PORT): process ids R*N..R*N+N-1 of M*N.
# If one process fails the others are stopped.
set -euo pipefail

TPU="" ZONE="" PROJECT="" MODE="" DRY=0 SETUP=0 REPO_DIR="~/rankt5_jax"
NUM_GPUS="" PORT=8476 NUM_NODES=1 NODE_RANK=0 COORDINATOR=""
PY="${PYTHON:-python3}"
usage() { sed -n '2,20p' "$0"; exit 2; }
fail() { echo "run_tpu.sh: $*" >&2; exit 2; }
number() { [[ "$2" =~ ^[0-9]+$ ]] || fail "$1 needs a whole number, got '$2'"; }
while [[ $# -gt 0 ]]; do
  case "$1" in
    --tpu) TPU="$2"; MODE=tpu; shift 2 ;;
    --zone) ZONE="$2"; shift 2 ;;
    --project) PROJECT="$2"; shift 2 ;;
    --gpu) MODE=gpu; shift ;;
    --num_gpus) number "$1" "$2"; NUM_GPUS="$2"; shift 2 ;;
    --port) number "$1" "$2"; PORT="$2"; shift 2 ;;
    --num_nodes) number "$1" "$2"; NUM_NODES="$2"; shift 2 ;;
    --node_rank) number "$1" "$2"; NODE_RANK="$2"; shift 2 ;;
    --coordinator) COORDINATOR="$2"; shift 2 ;;
    --dry_run) DRY=1; shift ;;
    --setup) SETUP=1; shift ;;
    --repo_dir) REPO_DIR="$2"; shift 2 ;;
    --) shift; break ;;
    -h|--help) usage ;;
    *) echo "run_tpu.sh: unknown option $1" >&2; usage ;;
  esac
done
[[ -n "$MODE" ]] || { echo "run_tpu.sh: give --tpu NAME or --gpu" >&2; usage; }
[[ $# -gt 0 ]] || { echo "run_tpu.sh: give the train flags after --" >&2; usage; }

quoted=""
for arg in "$@"; do quoted+=" $(printf '%q' "$arg")"; done

run() {  # run "$@" as one command (an array), or print it shell-quoted with --dry_run
  if [[ $DRY -eq 1 ]]; then printf '%q ' "$@"; printf '\n'; else "$@"; fi
}

if [[ "$MODE" == tpu ]]; then
  [[ -n "$ZONE" ]] || fail "--tpu needs --zone"
  [[ -z "$NUM_GPUS$COORDINATOR" ]] || fail "--num_gpus/--coordinator are GPU options"
  where=("$TPU" "--zone=$ZONE")
  [[ -n "$PROJECT" ]] && where+=("--project=$PROJECT")
  if [[ $SETUP -eq 1 ]]; then
    run gcloud compute tpus tpu-vm scp --recurse --worker=all "$(pwd)" "$TPU:$REPO_DIR" "${where[@]:1}"
    run gcloud compute tpus tpu-vm ssh "${where[@]}" --worker=all \
      --command="cd $REPO_DIR && python3 -m pip install -e '.[tpu]'"
  fi
  run gcloud compute tpus tpu-vm ssh "${where[@]}" --worker=all \
    --command="cd $REPO_DIR && python3 -m rankt5_jax train --multihost$quoted"
  exit 0
fi

# GPU
if [[ -z "$NUM_GPUS" ]]; then
  [[ $NUM_NODES -eq 1 && -z "$COORDINATOR" ]] || fail "--num_nodes/--coordinator need --num_gpus"
  run "$PY" -m rankt5_jax train "$@"
  exit 0
fi
(( NUM_GPUS >= 1 )) || fail "--num_gpus must be at least 1"
(( NUM_NODES >= 1 && NODE_RANK < NUM_NODES )) || fail "--node_rank must be in 0..$((NUM_NODES - 1))"
if (( NUM_NODES > 1 )); then
  [[ "$COORDINATOR" == *:* ]] || fail "--num_nodes > 1 needs --coordinator HOST:PORT (node 0's address)"
fi
COORDINATOR="${COORDINATOR:-127.0.0.1:$PORT}"
NUM_PROCESSES=$((NUM_NODES * NUM_GPUS))

pids=()
stop_all() { for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done; }
for ((gpu = 0; gpu < NUM_GPUS; gpu++)); do
  command=(env "CUDA_VISIBLE_DEVICES=$gpu" "$PY" -m rankt5_jax train --multihost
    "--coordinator_address=$COORDINATOR" "--num_processes=$NUM_PROCESSES"
    "--process_id=$((NODE_RANK * NUM_GPUS + gpu))" "$@")
  if [[ $DRY -eq 1 ]]; then run "${command[@]}"; else "${command[@]}" & pids+=($!); fi
done
[[ $DRY -eq 1 ]] && exit 0
trap 'stop_all; exit 130' INT TERM
status=0
for ((left = ${#pids[@]}; left > 0; left--)); do
  if ! wait -n; then  # one process failed: the others would wait for it in vain
    status=1
    stop_all
    break
  fi
done
wait || true
exit $status
