#!/usr/bin/env bash
# Run a stage (or the whole pipeline) on this machine, every local device.
# usage: launch/local.sh STAGE CONFIG WORKDIR [--config.a.b=value ...]
set -euo pipefail
stage=$1 config=$2 workdir=$3; shift 3
exec "$(dirname "$0")/../.venv/bin/cows-jax" "$stage" --config "$config" --workdir "$workdir" "$@"
