#!/usr/bin/env bash
# Cloud TPU VMs (one host or a pod slice): create one, run a stage on every worker, watch it.
# usage:
#   launch/tpu_vm.sh create TPU ZONE TYPE [gcloud flags]   TYPE: v4-8, v5litepod-16, v5p-32, ...
#   launch/tpu_vm.sh run [RUN FLAGS] TPU ZONE STAGE CONFIG WORKDIR [--config.a.b=v ...]
#   launch/tpu_vm.sh watch [--failed-polls N] TPU ZONE
#   launch/tpu_vm.sh logs|stop|delete TPU ZONE
# RUN FLAGS:
#   --no-watch         start the job and return
#   --replace          stop a job of this project still running on the slice, then start
#   --retry N          rerun the stage (it resumes) up to N times when it ends with status 75:
#                      a worker stopped on SIGTERM, or the slice was preempted
#   --recreate         with --retry: a slice that is no longer READY is deleted and created
#                      again as `create` made it (type, runtime version, gcloud flags)
#   --failed-polls N   after N polls in a row that reach no worker, ask gcloud for the slice's
#                      state and stop watching if it is gone (default 10, COWS_TPU_FAILED_POLLS)
#   --sync SECONDS     how often each worker copies its log to WORKDIR/logs/ and, for a gs://
#                      WORKDIR, the open TensorBoard event files (default 180, COWS_TPU_SYNC;
#                      0: never)
#
# run ships the source (not .git, data, runs or workdirs), installs it on every worker with
# Python >= 3.11 from uv, clears stale TPU processes and the libtpu lockfile, starts the stage
# detached on all workers (one log per worker) and watches: when a worker fails, it stops the
# others. The job outlives this script; Ctrl-C stops the watching only. docs/devices.md.
set -eEuo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(dirname "$here")
poll_interval=${COWS_TPU_POLL:-30}
failed_polls=${COWS_TPU_FAILED_POLLS:-10}
sync=${COWS_TPU_SYNC:-180}
# How `create` made each slice, for --recreate: ZONE/TPU.sh, read with `source`.
records=${XDG_STATE_HOME:-$HOME/.local/state}/cows_jax/tpu_vm
# shellcheck disable=SC2088  # ~ is expanded by the worker's shell.
worker_script='~/cows_jax/src/launch/tpu_worker.sh'
tmp=''

die() {
  echo "tpu_vm.sh: $*" >&2
  exit 1
}
usage() {
  awk 'NR >= 3 && /^#$/ { exit } NR >= 3 { sub(/^# ?/, ""); print }' "$0" >&2
  exit 2
}
# A command that fails outside a condition ends the script (set -e): say which, and how.
trap 'echo "tpu_vm.sh: line $LINENO: \`$BASH_COMMAND\` failed (exit status $?)" >&2' ERR
trap '[[ -z $tmp ]] || rm -rf -- "$tmp"' EXIT

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

record_of() { echo "$records/$zone/$tpu.sh"; }

# Creates the slice and records how, so that `run --recreate` can make it again.
create() {
  local type=$1 version record
  shift
  if [[ -n ${COWS_TPU_RUNTIME:-} ]]; then
    version=$COWS_TPU_RUNTIME
  else
    version=$(runtime_of "$type") || exit 1
  fi
  gcloud compute tpus tpu-vm create "$tpu" --zone="$zone" --accelerator-type="$type" \
    --version="$version" "$@"
  record=$(record_of)
  mkdir -p "$(dirname "$record")"
  {
    echo "# $tpu in $zone, as launch/tpu_vm.sh create made it (for run --recreate)"
    printf 'type=%q\nversion=%q\nflags=(' "$type" "$version"
    if (($#)); then printf '%q ' "$@"; fi
    printf ')\n'
  } >"$record"
}

# Deletes the slice (unless it is gone already) and creates it again from its record.
recreate() {
  local state=$1 type version flags
  # shellcheck disable=SC1090
  source "$(record_of)"
  echo "Recreating $tpu: $type, $version${flags[*]:+, ${flags[*]}}."
  if [[ $state != NOT_FOUND ]]; then
    gcloud compute tpus tpu-vm delete "$tpu" --zone="$zone" --quiet
  fi
  gcloud compute tpus tpu-vm create "$tpu" --zone="$zone" --accelerator-type="$type" \
    --version="$version" ${flags[@]+"${flags[@]}"}
}

# The slice's state as gcloud describes it (READY, PREEMPTED, TERMINATED, ...), or NOT_FOUND;
# fails with gcloud's error on stderr when gcloud cannot tell (no network, no access).
slice_state() {
  local out
  if out=$(gcloud compute tpus tpu-vm describe "$tpu" --zone="$zone" \
    --format='value(state)' 2>&1); then
    { grep -E '^[A-Z_]+$' <<<"$out" || true; } | tail -n 1
  elif [[ $out == *NOT_FOUND* || $out == *'not found'* ]]; then
    echo NOT_FOUND
  else
    echo "$out" >&2
    return 1
  fi
}

# Source only: the package, its configs and these scripts, as git lists them (tracked or
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

check_failed_polls() {
  [[ $failed_polls =~ ^[1-9][0-9]*$ ]] || die "--failed-polls takes a count >= 1, not $failed_polls"
}

workers_of_tpu() {
  gcloud compute tpus tpu-vm describe "$tpu" --zone="$zone" \
    --format='value(networkEndpoints.len())' 2>/dev/null || true
}

# Polls every worker's exit status; the first failure stops the others (fail fast). After
# `failed_polls` polls in a row that reach no worker, asks gcloud what became of the slice.
watch() {
  local expected out line w state rc seen done_ok failed ssh_rc failures=0
  check_failed_polls
  expected=$(workers_of_tpu)
  [[ $expected =~ ^[1-9][0-9]*$ ]] || expected=0
  echo "Watching the job every ${poll_interval}s (Ctrl-C stops the watching, not the job)."
  while true; do
    ssh_rc=0
    out=$(remote all "bash $worker_script poll" 2>&1) || ssh_rc=$?
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
      if [[ -n $failed ]]; then break; fi
    done <<<"$out"
    if [[ -n $failed ]]; then
      read -r w rc <<<"$failed"
      echo "Worker $w failed (exit status $rc): stopping the job on every worker." >&2
      remote all "bash $worker_script stop" || true
      echo "The end of worker $w's log:" >&2
      remote "$w" "bash $worker_script tail 40" >&2 || true
      exit "$rc"
    fi
    if ((seen > expected)); then expected=$seen; fi
    if ((expected && done_ok == expected)); then
      echo "The job finished on all $expected workers."
      exit 0
    fi
    if ((ssh_rc == 0)); then
      failures=0
    else
      failures=$((failures + 1))
      echo "tpu_vm.sh: poll $failures of $failed_polls failed (ssh exit status $ssh_rc):" \
        "$(tail -n 1 <<<"$out")" >&2
      if ((failures >= failed_polls)); then
        state=$(slice_state) || state=
        case $state in
          PREEMPTED | TERMINATED)
            echo "tpu_vm.sh: $failures polls in a row reached no worker: $tpu is $state" \
              "(exit status 75: run --retry N --recreate reruns the stage on a new slice)." >&2
            exit 75
            ;;
          '' | READY | CREATING | STARTING | RESTARTING | REPAIRING | REIMAGING | UNHIDING)
            [[ -n $state ]] || state="of unknown state (gcloud's error above)"
            echo "tpu_vm.sh: $failures polls in a row reached no worker; $tpu is $state:" \
              'still watching.' >&2
            failures=0
            ;;
          *)
            echo "tpu_vm.sh: $failures polls in a row reached no worker: $tpu is $state." >&2
            exit 1
            ;;
        esac
      fi
    fi
    sleep "$poll_interval"
  done
}

# Ships the source and the arguments of a new job, prepares every worker and starts it there.
start_job() {
  local replace=$1 job
  job=$(date -u +%Y%m%d-%H%M%S)-$stage-$RANDOM
  # The arguments go in a file, each quoted by printf %q: no shell on the way re-splits them.
  {
    echo "# cows_jax job, written by launch/tpu_vm.sh"
    printf 'job=%q\nworkdir=%q\nsync=%q\n' "$job" "$workdir" "$sync"
    printf 'args=('
    printf '%q ' "$stage" --distributed --config "$config" --workdir "$workdir" \
      ${overrides[@]+"${overrides[@]}"}
    printf ')\n'
  } >"$tmp/cows_jax_args.sh"
  echo "Job $job: copying the source to every worker of $tpu."
  gcloud compute tpus tpu-vm scp "$tmp/cows_jax_src.tgz" "$tmp/cows_jax_args.sh" "$tpu:" \
    --zone="$zone" --worker=all ||
    die "copying the source to the workers of $tpu failed (gcloud's error above)"
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
}

run() {
  local no_watch='' replace='' retries=0 recreate='' attempt rc state
  while (($#)); do
    case $1 in
      --no-watch) no_watch=1 ;;
      --replace) replace=--replace ;;
      --recreate) recreate=1 ;;
      --retry | --failed-polls | --sync)
        (($# >= 2)) || usage
        case $1 in
          --retry) retries=$2 ;;
          --failed-polls) failed_polls=$2 ;;
          --sync) sync=$2 ;;
        esac
        shift
        ;;
      -*) usage ;;
      *) break ;;
    esac
    shift
  done
  (($# >= 5)) || usage
  tpu=$1 zone=$2 stage=$3 config=$4 workdir=$5
  shift 5
  overrides=("$@")
  [[ $retries =~ ^[0-9]+$ ]] || die "--retry takes a count, not $retries"
  [[ $sync =~ ^[0-9]+([.][0-9]+)?$ ]] || die "--sync takes seconds, not $sync"
  check_failed_polls
  if [[ -n $no_watch ]] && ((retries)); then
    die '--retry needs the watching: drop --no-watch'
  fi
  if [[ -n $recreate ]]; then
    ((retries)) || die '--recreate goes with --retry N'
    [[ -f $(record_of) ]] || die "--recreate: no record of how $tpu was created in" \
      "$(record_of); create the slice with launch/tpu_vm.sh create"
  fi
  tmp=$(mktemp -d)
  ship_tarball "$tmp/cows_jax_src.tgz" "$tmp/files"
  for ((attempt = 0; ; attempt++)); do
    start_job "$replace"
    if [[ -n $no_watch ]]; then exit 0; fi
    # A fresh shell, so that set -e holds in the watcher and its exit status comes back.
    rc=0
    bash "$here/tpu_vm.sh" watch --failed-polls "$failed_polls" "$tpu" "$zone" || rc=$?
    if ((rc != 75 || attempt >= retries)); then exit "$rc"; fi
    state=$(slice_state) || die "the state of $tpu is unknown (gcloud's error above); no rerun"
    if [[ $state != READY ]]; then
      if [[ -z $recreate ]]; then
        echo "tpu_vm.sh: $tpu is $state: no rerun (--recreate deletes and recreates it)." >&2
        exit 75
      fi
      recreate "$state"
    fi
    echo "Rerun $((attempt + 1)) of $retries on $tpu (exit status 75): the stage resumes."
    replace=--replace # the stopped job's leftovers, if any.
  done
}

command=${1:-}
shift || true
case $command in
  run) run "$@" ;;
  create | watch | logs | stop | delete)
    if [[ $command == watch && ${1:-} == --failed-polls ]]; then
      (($# >= 2)) || usage
      failed_polls=$2
      shift 2
    fi
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
