#!/usr/bin/env bash
# Launch a rankt5_jax gin run on every worker of a Cloud TPU VM slice, or on a multi-GPU host.
#
#   ./run_tpu.sh --tpu NAME --zone ZONE [--project P] -- --gin_file=experiments/msmarco_encdec_softmax.gin \
#       --gin.MODEL_DIR="'gs://bucket/rankt5'" --gin.VOCAB="'gs://bucket/spiece.model'" ...
#   ./run_tpu.sh --gpu -- --gin_file=... --gin.MODEL_DIR="'/data/rankt5'"
#   add --dry_run to print the commands instead of running them.
#
# TPU: every worker runs the same `rankt5 train` (JAX SPMD: each host feeds its devices; the
# mesh spans the slice). The repo is expected at ~/rankt5_jax on each worker (use --setup once to
# copy it with `gcloud compute tpus tpu-vm scp` and install it with the tpu extra).
# GPU: one process drives all local GPUs through the same mesh code.
set -euo pipefail

TPU="" ZONE="" PROJECT="" MODE="" DRY=0 SETUP=0 REPO_DIR="~/rankt5_jax"
usage() { sed -n '2,13p' "$0"; exit 2; }
while [[ $# -gt 0 ]]; do
  case "$1" in
    --tpu) TPU="$2"; MODE=tpu; shift 2 ;;
    --zone) ZONE="$2"; shift 2 ;;
    --project) PROJECT="$2"; shift 2 ;;
    --gpu) MODE=gpu; shift ;;
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
  [[ -n "$ZONE" ]] || { echo "run_tpu.sh: --tpu needs --zone" >&2; exit 2; }
  where=("$TPU" "--zone=$ZONE")
  [[ -n "$PROJECT" ]] && where+=("--project=$PROJECT")
  if [[ $SETUP -eq 1 ]]; then
    run gcloud compute tpus tpu-vm scp --recurse --worker=all "$(pwd)" "$TPU:$REPO_DIR" "${where[@]:1}"
    run gcloud compute tpus tpu-vm ssh "${where[@]}" --worker=all \
      --command="cd $REPO_DIR && python3 -m pip install -e '.[tpu]'"
  fi
  run gcloud compute tpus tpu-vm ssh "${where[@]}" --worker=all \
    --command="cd $REPO_DIR && python3 -m rankt5_jax train --multihost$quoted"
else
  run python3 -m rankt5_jax train "$@"
fi
