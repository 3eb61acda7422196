#!/usr/bin/env bash
# `cows-jax bench device` on a GPU or TPU host that has its own JAX and maybe no network.
#
# usage: launch/device_check.sh [run] [bench device flags...]   on the accelerator host
#        launch/device_check.sh wheels [DIR]                     where pip reaches PyPI
#
# run (the default), from the repository's root:
#   1. installs this checkout with `pip install --no-deps --no-build-isolation -e .`, which
#      upgrades and downgrades nothing the host has (skipped when this checkout is installed);
#   2. installs, from the wheels in $COWS_WHEELS (default .whl/), only the distributions the
#      host lacks, into their own directory ($COWS_SITE, default /tmp/cows_site) on PYTHONPATH;
#   3. runs `cows-jax bench device --json $OUT/device.json` with the flags given ($OUT: the
#      environment's, else the current directory), its output also in $OUT/device.log.
#   Python: $PYTHON, else python3.
# wheels: downloads into DIR (default .whl/) the wheels of the dependencies that an image with
#   JAX, flax, optax, orbax, numpy, scipy and pillow lacks, at the versions of this checkout's
#   .venv where it has them, for CPython $COWS_WHEEL_PYTHON (3.12) on x86-64 Linux; a
#   dependency published as source only (promise) is built into a wheel here.
set -euo pipefail
cd "$(dirname "$0")/.."
py=${PYTHON:-python3}
[[ $py == */* ]] && py="$(cd "$(dirname "$py")" && pwd)/$(basename "$py")"  # absolute

# The dependencies (and theirs) that such an image lacked: tensorflow-datasets, grain,
# array-record, ml-collections, clu, tensorboardX, importlib_resources.
WHEELS=(
  tensorflow-datasets grain array-record ml-collections clu tensorboardX importlib-resources
  dm-tree immutabledict promise simple-parsing docstring-parser tensorflow-metadata
  googleapis-common-protos termcolor toml portpicker
)

wheels() {
  local dir=${1:-.whl} target=${COWS_WHEEL_PYTHON:-3.12} name spec version
  local pip=(python3 -m pip)
  [[ -x .venv/bin/python ]] && pip=(.venv/bin/python -m pip)
  mkdir -p "$dir"
  for name in "${WHEELS[@]}"; do
    spec=$name
    if [[ -x .venv/bin/python ]] && version=$(.venv/bin/python -c \
      'import importlib.metadata as m, sys; print(m.version(sys.argv[1]))' "$name" 2>/dev/null); then
      spec="$name==$version"
    fi
    "${pip[@]}" download -q --no-deps --only-binary=:all: --python-version "$target" \
      --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
      --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
      --platform manylinux1_x86_64 -d "$dir" "$spec" ||
      "${pip[@]}" wheel -q --no-deps -w "$dir" "$spec"  # a source-only, pure-Python one.
  done
  du -sh "$dir"
}

installed_here() {
  # Whether `import cows_jax` (outside the checkout's directory) is this checkout.
  local here=$PWD
  (cd / && "$py" -c 'import os, sys, cows_jax.configs
sys.exit(os.path.dirname(os.path.dirname(os.path.abspath(cows_jax.__file__))) != sys.argv[1])' \
    "$here") 2>/dev/null
}

run() {
  local out=${OUT:-$PWD} site=${COWS_SITE:-/tmp/cows_site} wheel name missing=()
  mkdir -p "$out"
  if ! installed_here; then
    "$py" -m pip install -q --no-deps --no-build-isolation -e . ||
      "$py" -m pip install -q --no-deps --no-build-isolation .
  fi
  for wheel in "${COWS_WHEELS:-.whl}"/*.whl; do
    [[ -e $wheel ]] || break
    name=$(basename "$wheel" | cut -d- -f1)
    if ! "$py" -c 'import importlib.metadata as m, sys; m.version(sys.argv[1])' "$name" \
      2>/dev/null; then
      missing+=("$wheel")
    fi
  done
  if ((${#missing[@]})); then
    echo "device_check: installing ${#missing[@]} missing distributions into $site"
    "$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
      --target "$site" "${missing[@]}"
    export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
  fi
  if ! "$py" -c 'import cows_jax.bench.main' 2>"$out/import.log"; then
    tail -n 1 "$out/import.log" >&2
    echo 'device_check: a dependency is missing: carry its wheel in .whl/' \
      '(launch/device_check.sh wheels, where pip reaches PyPI)' >&2
    exit 1
  fi
  rm -f "$out/import.log"
  set -o pipefail
  PYTHONUNBUFFERED=1 "$py" -c 'import sys; from cows_jax.cli import run; sys.exit(run())' \
    bench device --json "$out/device.json" "$@" 2>&1 | tee "$out/device.log"
}

case ${1:-run} in
  wheels) shift; wheels "$@" ;;
  run) shift || true; run "$@" ;;
  *) run "$@" ;;
esac
