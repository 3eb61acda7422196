#!/usr/bin/env bash
# Cloud TPU VMs (one host or a pod slice): create one, run a stage on every worker, watch it.
# usage:
#   launch/tpu_vm.sh create TPU ZONE TYPE [gcloud flags]   TYPE: v4-8, v5litepod-16, v5p-32, ...
#   launch/tpu_vm.sh run [--no-watch] [--replace] TPU ZONE STAGE CONFIG WORKDIR [--config.a.b=v ...]
#   launch/tpu_vm.sh watch|logs|stop|delete TPU ZONE
# run ships the source (not .git, data, runs or workdirs), installs it on every worker with
# Python >= 3.11 from uv, clears stale TPU processes and the libtpu lockfile, starts the stage
# detached on all workers (one log per worker) and watches: when a worker fails, it stops the
# others. The job outlives this script; Ctrl-C stops the watching only. docs/devices.md.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(dirname "$here")
poll_interval=${COWS_TPU_POLL:-30}
# shellcheck disable=SC2088  # ~ is expanded by the worker's shell.
worker_script='~/cows_jax/src/launch/tpu_worker.sh'

die() {
  echo "tpu_vm.sh: $*" >&2
  exit 1
}
usage() {
  sed -n '3,6p' "$0" | sed 's/^# \{0,1\}//' >&2
  exit 2
}

# remote WORKERS COMMAND: COMMAND on worker WORKERS (an index or all), concurrently.
remote() {
  gcloud compute tpus tpu-vm ssh "$tpu" --zone="$zone" --worker="$1" --command="$2"
}

# Runtime versions for JAX (cloud.google.com/tpu/docs/runtimes); COWS_TPU_RUNTIME overrides.
runtime_of() {
  case $1 in
    v2-* | v3-* | v4-*) echo tpu-ubuntu2204-base ;;
    v5litepod-*) echo v2-alpha-tpuv5-lite ;;
    v5p-*) echo v2-alpha-tpuv5 ;;
    v6e-*) echo v2-alpha-tpuv6e ;;
    *) die "no runtime version known for $1: set COWS_TPU_RUNTIME" \
      "(gcloud compute tpus tpu-vm versions list --zone=$zone)" ;;
  esac
}

create() {
  local type=$1 version
  shift
  version=${COWS_TPU_RUNTIME:-$(runtime_of "$type")}
  gcloud compute tpus tpu-vm create "$tpu" --zone="$zone" --accelerator-type="$type" \
    --version="$version" "$@"
}

# The source only: the package, its configs and these scripts, as git lists them (tracked or
# new, never ignored), so nothing under .git, data, runs, weights or workdirs goes.
ship_tarball() {
  local out=$1 list=$2 f
  git -C "$repo" rev-parse --git-dir >/dev/null 2>&1 || die "$repo is not a git clone"
  git -C "$repo" ls-files -z --cached --others --exclude-standard -- \
    pyproject.toml README.md LICENSE cows_jax configs launch |
    while IFS= read -r -d '' f; do
      if [[ -f $repo/$f ]]; then # a tracked file deleted here is not shipped.
        printf '%s\0' "$f"
      fi
    done >"$list"
  COPYFILE_DISABLE=1 tar czf "$out" -C "$repo" --null -T "$list"
}

workers_of_tpu() {
  gcloud compute tpus tpu-vm describe "$tpu" --zone="$zone" \
    --format='value(networkEndpoints.len())' 2>/dev/null || true
}

# Polls every worker's exit status; the first failure stops the others (fail fast).
watch() {
  local expected out line w state rc seen done_ok failed
  expected=$(workers_of_tpu)
  [[ $expected =~ ^[1-9][0-9]*$ ]] || expected=0
  echo "Watching the job every ${poll_interval}s (Ctrl-C stops the watching, not the job)."
  while true; do
    out=$(remote all "bash $worker_script poll" 2>&1) || true # a dropped ssh: poll again.
    seen=0 done_ok=0 failed=
    while IFS= read -r line; do
      [[ $line =~ ^cows_jax\ worker=([0-9]+)\ state=([a-z]+)(\ rc=([0-9]+))? ]] || continue
      w=${BASH_REMATCH[1]} state=${BASH_REMATCH[2]} rc=${BASH_REMATCH[4]}
      seen=$((seen + 1))
      case $state in
        exited) if ((rc == 0)); then done_ok=$((done_ok + 1)); else failed="$w $rc"; fi ;;
        lost) failed="$w 1" ;;
        none) failed="$w 1" && echo "worker $w has no job" >&2 ;;
      esac
      [[ -n $failed ]] && break
    done <<<"$out"
    if [[ -n $failed ]]; then
      read -r w rc <<<"$failed"
      echo "Worker $w failed (exit status $rc): stopping the job on every worker." >&2
      remote all "bash $worker_script stop" || true
      echo "The end of worker $w's log:" >&2
      remote "$w" "bash $worker_script tail 40" >&2 || true
      exit "$rc"
    fi
    ((seen > expected)) && expected=$seen
    if ((expected && done_ok == expected)); then
      echo "The job finished on all $expected workers."
      exit 0
    fi
    sleep "$poll_interval"
  done
}

run() {
  local no_watch='' replace='' stage config workdir job tmp
  while [[ ${1:-} == --no-watch || ${1:-} == --replace ]]; do
    [[ $1 == --no-watch ]] && no_watch=1 || replace=--replace
    shift
  done
  (($# >= 5)) || usage
  tpu=$1 zone=$2 stage=$3 config=$4 workdir=$5
  shift 5
  job=$(date -u +%Y%m%d-%H%M%S)-$stage-$RANDOM
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  ship_tarball "$tmp/cows_jax_src.tgz" "$tmp/files"
  # The arguments go in a file, each quoted by printf %q: no shell on the way re-splits them.
  {
    echo "# cows_jax job, written by launch/tpu_vm.sh"
    printf 'job=%q\n' "$job"
    printf 'args=('
    printf '%q ' "$stage" --distributed --config "$config" --workdir "$workdir" "$@"
    printf ')\n'
  } >"$tmp/cows_jax_args.sh"
  echo "Job $job: copying the source to every worker of $tpu."
  gcloud compute tpus tpu-vm scp "$tmp/cows_jax_src.tgz" "$tmp/cows_jax_args.sh" "$tpu:" \
    --zone="$zone" --worker=all
  echo 'Installing (Python >= 3.11 from uv, the project with the TPU build of JAX).'
  remote all "set -e; mkdir -p ~/cows_jax; rm -rf ~/cows_jax/src.new; mkdir ~/cows_jax/src.new;
    tar xzf ~/cows_jax_src.tgz -C ~/cows_jax/src.new;
    bash ~/cows_jax/src.new/launch/tpu_worker.sh setup ~/cows_jax_args.sh $replace" ||
    die "setup failed on a worker (above); nothing was started"
  if ! remote all "bash $worker_script start ~/cows_jax_args.sh"; then
    remote all "bash $worker_script stop" || true
    die "the job did not start on every worker (above); stopped it everywhere"
  fi
  echo "Started. Logs, one per worker, in ~/cows_jax/jobs/$job/ on each worker; follow them with"
  echo "  launch/tpu_vm.sh logs $tpu $zone"
  echo "  gcloud compute tpus tpu-vm ssh $tpu --zone=$zone --worker=all" \
    "--command='tail -n 20 -F ~/cows_jax/current/worker-*.log'"
  [[ -n $no_watch ]] && exit 0
  watch
}

command=${1:-}
shift || true
case $command in
  run) run "$@" ;;
  create | watch | logs | stop | delete)
    (($# >= 2)) || usage
    tpu=$1 zone=$2
    shift 2
    case $command in
      create)
        (($# >= 1)) || usage
        create "$@"
        ;;
      watch) watch ;;
      logs) remote all "bash $worker_script logs" ;;
      stop) remote all "bash $worker_script stop" ;;
      delete) gcloud compute tpus tpu-vm delete "$tpu" --zone="$zone" "$@" ;;
    esac
    ;;
  *) usage ;;
esac
