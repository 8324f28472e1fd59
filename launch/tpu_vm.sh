#!/usr/bin/env bash
# Runs the same plug_jax command on every worker of a Cloud TPU VM slice.
#
#   TPU_NAME=my-v4-32 ZONE=us-central2-b launch/tpu_vm.sh experiments/gpt3/shop_tiny.gin \
#       --gin.MODEL_DIR=gs://my-bucket/runs/gpt3_tiny --gin_file=hardware/tpu_v4_8.gin
#
# Every worker needs the repository at REMOTE_DIR with `pip install -e .[tpu]` done (set
# SETUP=1 to clone/install first). jax.distributed finds the workers, their ids and the
# coordinator through the TPU metadata server (--distributed=tpu), so no address is passed.
# MODEL_DIR must be visible to all workers (a gs:// bucket or a shared disk).
# See docs/launch.md.
set -euo pipefail

if [ $# -lt 1 ]; then
  echo "usage: TPU_NAME=... ZONE=... $0 GIN_FILE [extra plug-train flags]" >&2
  exit 2
fi
: "${TPU_NAME:?set TPU_NAME to the TPU VM name}"
: "${ZONE:?set ZONE to the TPU VM zone}"
PROJECT_FLAG=${PROJECT:+--project=$PROJECT}
REMOTE_DIR=${REMOTE_DIR:-plug_jax}
REPO_URL=${REPO_URL:-}
MODE=${MODE:-train}
GIN=$1; shift

quoted=$(printf ' %q' "$@")
remote="cd $REMOTE_DIR && .venv/bin/python -m plug_jax.main --mode=$MODE --gin_file=$GIN --distributed=tpu --heartbeat_timeout=${HEARTBEAT_TIMEOUT:-60}$quoted"
if [ "${SETUP:-0}" = 1 ]; then
  : "${REPO_URL:?set REPO_URL to clone the repository on the workers}"
  remote="( [ -d $REMOTE_DIR ] || git clone $REPO_URL $REMOTE_DIR ) && cd $REMOTE_DIR && python3.11 -m venv .venv && .venv/bin/pip install -q -e '.[tpu]' && cd ~ && $remote"
fi

# --worker=all runs the command on every worker at once; gcloud exits non-zero when one
# of them fails (the others abort through the JAX coordination service).
# shellcheck disable=SC2086
gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone="$ZONE" $PROJECT_FLAG --worker=all \
  --command="$remote"
