#!/usr/bin/env bash
# Run a stage on every worker of a Cloud TPU VM (single host or pod slice).
# usage: launch/tpu_vm.sh TPU_NAME ZONE STAGE CONFIG WORKDIR [--config.a.b=value ...]
# WORKDIR must be shared by all workers (e.g. a gs:// bucket path or an NFS mount);
# data paths in the config must be readable from every worker.
set -euo pipefail
tpu=$1 zone=$2 stage=$3 config=$4 workdir=$5; shift 5
extra="$*"
repo=$(cd "$(dirname "$0")/.." && pwd)
# 1. Copy the project to every worker and install it with the TPU build of JAX.
tar czf /tmp/cows_jax_src.tgz -C "$repo" --exclude=.venv --exclude=workdir .
gcloud compute tpus tpu-vm scp /tmp/cows_jax_src.tgz "$tpu":~/ --zone "$zone" --worker=all
gcloud compute tpus tpu-vm ssh "$tpu" --zone "$zone" --worker=all --command "
  set -e; mkdir -p ~/cows_jax && tar xzf ~/cows_jax_src.tgz -C ~/cows_jax && cd ~/cows_jax &&
  python3 -m venv .venv && .venv/bin/pip install -q -e . 'jax[tpu]'"
# 2. Run the stage on all workers at once; each process loads its slice of every batch.
gcloud compute tpus tpu-vm ssh "$tpu" --zone "$zone" --worker=all --command "
  cd ~/cows_jax && .venv/bin/cows-jax $stage --distributed --config $config --workdir $workdir $extra"
