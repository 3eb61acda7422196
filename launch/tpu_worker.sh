#!/usr/bin/env bash
# The worker side of launch/tpu_vm.sh: runs on every worker of a Cloud TPU VM, over ssh.
# usage: tpu_worker.sh setup ARGS_FILE [--replace] | start ARGS_FILE | poll | stop | tail [N] | logs
# ARGS_FILE (written by tpu_vm.sh) sets `job`, `workdir`, `sync` (seconds) and `args`, the
# cows-jax arguments, each quoted with printf %q, so that every override arrives verbatim.
# Layout, in ~/cows_jax (the boot disk of each worker):
#   src/            the shipped source, replaced on every launch
#   venv/           Python >= 3.11 from uv (stock TPU images have 3.10), the project editable
#   jobs/JOB/       args.sh, worker-N.log, worker-N.pid (the job's process group), worker-N.rc,
#                   tmp/ (the stage's TMPDIR, removed when it exits 0), worker-N.sync.log
#   current         -> jobs/JOB, the last job started
# While the stage runs, and when it ends, the log goes to WORKDIR/logs/worker-N.log and, for a
# gs:// WORKDIR, the TensorBoard event files still open to WORKDIR/tensorboard/live/ (sync_job):
# every `sync` seconds (set by tpu_vm.sh --sync; 0: never), each copy within
# COWS_TPU_SYNC_TIMEOUT seconds (default 30, less than the SIGTERM grace).
set -euo pipefail
root=$HOME/cows_jax
venv=$root/venv
python_version=${COWS_TPU_PYTHON:-3.11}
# crf: every run command checks the extra up front while evaluate.crf=True (the default).
extras=${COWS_TPU_EXTRAS:-tpu,gcs,crf}
lockfile=${COWS_TPU_LOCKFILE:-/tmp/libtpu_lockfile}
# TPU device files: /dev/accel* or /dev/vfio/N, depending on the generation.
tpu_devices=${COWS_TPU_DEVICES-/dev/accel* /dev/vfio/[0-9]*}
# SIGTERM first: cows-jax checkpoints and exits 75 (preemption.py); SIGKILL after this long.
grace=${COWS_TPU_STOP_GRACE:-60}
sync_timeout=${COWS_TPU_SYNC_TIMEOUT:-30}

say() { echo "cows_jax worker=$worker $*"; }

worker_id() {
  if [[ -n ${COWS_TPU_WORKER:-} ]]; then
    echo "$COWS_TPU_WORKER"
    return
  fi
  local n
  n=$(curl -sf --max-time 2 -H 'Metadata-Flavor: Google' \
    http://metadata.google.internal/computeMetadata/v1/instance/attributes/agent-worker-number \
    2>/dev/null) || n=
  if [[ $n =~ ^[0-9]+$ ]]; then
    echo "$n"
  elif [[ $(hostname) =~ -w-([0-9]+)$ ]]; then
    echo "${BASH_REMATCH[1]}"
  else
    echo 0
  fi
}
worker=$(worker_id)

job_pid() { cat "$root/current/worker-$worker.pid" 2>/dev/null; }

# The job's process group exists and its stage has not recorded an exit status (an exited job
# may linger as a zombie until init reaps it).
job_running() {
  local pid
  pid=$(job_pid) && [[ ! -f $root/current/worker-$worker.rc ]] && kill -0 -- "-$pid" 2>/dev/null
}

stop_job() {
  local pid i
  job_running || return 0
  pid=$(job_pid)
  kill -TERM -- "-$pid" 2>/dev/null || return 0
  for ((i = 0; i < grace * 10; i++)); do
    job_running || break
    sleep 0.1
  done
  job_running && say "job did not stop within ${grace}s of SIGTERM: SIGKILL"
  kill -KILL -- "-$pid" 2>/dev/null || true # what is left of the job's processes.
}

# Leftovers of earlier runs hold the TPU (libtpu admits one process) or its lockfile.
clear_stale() {
  local pattern pids devices i
  pattern=$(printf '%s' "$venv/bin/cows-jax" | sed 's/[][\.*^$+?(){}|]/\\&/g')
  if pkill -TERM -u "$(id -u)" -f -- "$pattern"; then
    for ((i = 0; i < 50; i++)); do
      pgrep -u "$(id -u)" -f -- "$pattern" >/dev/null || break
      sleep 0.1
    done
    pkill -KILL -u "$(id -u)" -f -- "$pattern" || true
  fi
  shopt -s nullglob
  # shellcheck disable=SC2206  # the patterns are globbed on purpose.
  devices=($tpu_devices)
  shopt -u nullglob
  if ((${#devices[@]})); then
    pids=$( (sudo -n lsof -t "${devices[@]}" || lsof -t "${devices[@]}") 2>/dev/null |
      sort -u) || true
    if [[ -n $pids ]]; then
      say "stopping processes that hold the TPU: ${pids//$'\n'/ }"
      # shellcheck disable=SC2086
      sudo -n kill -KILL $pids 2>/dev/null || kill -KILL $pids 2>/dev/null || true
      sleep 1
    fi
  fi
  rm -f "$lockfile" 2>/dev/null || sudo -n rm -f "$lockfile" || true
}

# Python >= 3.11 from uv, then the project editable with its extras; skipped when the venv
# already has this pyproject.toml and these extras (a relaunch starts in seconds).
install() {
  local want stamp=$venv/.cows_jax_installed
  want="$extras $(sha256sum <"$root/src/pyproject.toml")"
  if python_ok && [[ $(cat "$stamp" 2>/dev/null) == "$want" ]]; then
    return 0
  fi
  export PATH=$HOME/.local/bin:$PATH
  if ! command -v uv >/dev/null; then
    # pip --user on Ubuntu 22.04; Ubuntu 24.04 (PEP 668) needs the flag; else uv's installer.
    python3 -m pip install --user --quiet uv ||
      python3 -m pip install --user --quiet --break-system-packages uv ||
      curl -LsSf https://astral.sh/uv/install.sh | sh
  fi
  if ! python_ok; then
    rm -rf "$venv"
    uv venv --python "$python_version" "$venv" # downloads a managed CPython if none fits.
  fi
  if [[ ,$extras, == *,crf,* ]] && ! command -v c++ >/dev/null && ! command -v g++ >/dev/null; then
    # pydensecrf2 builds from source.
    sudo -n apt-get -o DPkg::Lock::Timeout=300 install -y -q g++ ||
      { sudo -n apt-get update -q && sudo -n apt-get install -y -q g++; }
  fi
  uv pip install --python "$venv/bin/python" -e "$root/src[$extras]"
  echo "$want" >"$stamp"
}

python_ok() {
  "$venv/bin/python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null
}

# Runs after tpu_vm.sh unpacked the new source into src.new.
setup() {
  local args_file=$1 replace=${2:-} job args workdir sync
  # shellcheck disable=SC1090
  source "$args_file"
  if job_running && [[ $replace != --replace ]]; then
    say "state=busy: job $(basename "$(readlink "$root/current")") is still running;" \
      "stop it (launch/tpu_vm.sh stop) or launch with --replace" >&2
    exit 3
  fi
  stop_job
  clear_stale
  rm -rf "$root/src"
  mv "$root/src.new" "$root/src"
  install
  echo "$job" >"$root/setup.done"
  say "state=ready job=$job $("$venv/bin/python" -V)"
}

# Starts the job detached (setsid, nohup): it survives the end of the ssh session.
start() {
  local args_file=$1 job args workdir sync dir log i
  # shellcheck disable=SC1090
  source "$args_file"
  dir=$root/jobs/$job
  log=$dir/worker-$worker.log
  mkdir -p "$dir"
  rm -f "$dir/worker-$worker.rc" "$dir/worker-$worker.pid"
  cp "$args_file" "$dir/args.sh"
  ln -sfn "jobs/$job" "$root/current"
  if [[ $(cat "$root/setup.done" 2>/dev/null) != "$job" ]]; then
    echo "setup of job $job did not finish on worker $worker; nothing started" >"$log"
    echo 1 >"$dir/worker-$worker.rc"
    say "state=exited rc=1 job=$job: setup did not finish" >&2
    exit 1
  fi
  setsid nohup bash "$root/src/launch/tpu_worker.sh" _job "$dir" >"$log" 2>&1 </dev/null &
  for ((i = 0; i < 100; i++)); do
    [[ -s $dir/worker-$worker.pid ]] && break
    sleep 0.1
  done
  say "state=started job=$job log=$log"
}

# put FILE TARGET: FILE into WORKDIR, on gs:// (gcloud storage, with the worker's service
# account) or at a path (a share every worker mounts), never half written.
put() {
  local file=$1 target=$2
  if [[ $target == gs://* ]]; then
    gcloud storage cp --quiet "$file" "$target"
  else
    mkdir -p "$(dirname "$target")" && cp "$file" "$target.tmp.$worker" &&
      mv -f "$target.tmp.$worker" "$target"
  fi
}

# What WORKDIR keeps of the job while it runs: this worker's log, and for a gs:// WORKDIR the
# TensorBoard event files that summaries.py writes to TMPDIR (the job's tmp/) and copies to
# WORKDIR/tensorboard/NAME/ only when their writer closes. Until then they go to
# WORKDIR/tensorboard/live/cows_tensorboard.XXXX/; once closed, that copy is removed. gcloud's
# output goes to worker-N.sync.log.
sync_job() {
  local dir=$1 job args workdir sync d f name live failed=0
  # shellcheck disable=SC1091
  source "$dir/args.sh"
  if [[ $workdir == *://* && $workdir != gs://* ]]; then
    return 0 # other object stores: not copied.
  fi
  exec >>"$dir/worker-$worker.sync.log" 2>&1
  echo "$(date -u +%FT%TZ) sync to $workdir"
  put "$dir/worker-$worker.log" "$workdir/logs/worker-$worker.log" || failed=1
  [[ $workdir == gs://* ]] || return "$failed" # elsewhere the stage writes its events there.
  live=$dir/tensorboard.live
  touch "$live"
  for d in "$dir"/tmp/cows_tensorboard.*/; do
    [[ -d $d ]] || continue
    name=$(basename "$d")
    grep -qxF "$name" "$live" || echo "$name" >>"$live"
    for f in "$d"events.out.tfevents.*; do
      if [[ -f $f ]]; then
        put "$f" "$workdir/tensorboard/live/$name/$(basename "$f")" || failed=1
      fi
    done
  done
  while IFS= read -r name; do
    if [[ -d $dir/tmp/$name ]] ||
      ! gcloud storage rm --recursive --quiet "$workdir/tensorboard/live/$name"; then
      echo "$name" # still open, or its live copy is still there.
    fi
  done <"$live" >"$live.new"
  mv "$live.new" "$live"
  return "$failed"
}

# One sync, within sync_timeout; in the background (its own process group, as `timeout` makes
# it) when called with a second argument, the pid of which is then in `syncing`.
sync_now() {
  local dir=$1
  if [[ -n ${2:-} ]]; then
    timeout "$sync_timeout" bash "$root/src/launch/tpu_worker.sh" _sync "$dir" &
    syncing=$!
  elif ! timeout "$sync_timeout" bash "$root/src/launch/tpu_worker.sh" _sync "$dir"; then
    echo "cows_jax: worker $worker: copying the log or events to the workdir failed or took" \
      "over ${sync_timeout}s (worker-$worker.sync.log)"
  fi
}

stop_sync_loop() {
  if [[ -n $sleeper ]]; then kill "$sleeper" 2>/dev/null || true; fi
  if [[ -n $syncing ]]; then kill -TERM -- "-$syncing" "$syncing" 2>/dev/null || true; fi
  exit 0
}

# Every `period` seconds while the job's shell lives; SIGTERM ends it, and the sync in flight.
sync_loop() {
  local dir=$1 period=$2 main=$$ sleeper='' syncing=''
  trap 'stop_sync_loop' TERM
  while kill -0 "$main" 2>/dev/null; do
    sleep "$period" &
    sleeper=$!
    wait "$sleeper" || true
    sync_now "$dir" background
    if ! wait "$syncing"; then
      echo "cows_jax: worker $worker: copying the log or events to the workdir failed or took" \
        "over ${sync_timeout}s (worker-$worker.sync.log)"
    fi
    syncing=''
  done
}

# The job itself: the stage, then its exit status in worker-N.rc.
run_job() {
  local dir=$1 job args workdir='' sync=0 rc syncer=''
  echo $$ >"$dir/worker-$worker.pid" # the process group of the job: setsid made it leader.
  # shellcheck disable=SC1091
  source "$dir/args.sh"
  # A trap (not the default action) keeps this shell alive to record the stage's exit status;
  # the stage gets the same SIGTERM and checkpoints.
  trap 'echo "cows_jax: worker $worker: SIGTERM, waiting for the stage to stop"' TERM
  export PYTHONUNBUFFERED=1 COWS_TPU_WORKER=$worker TMPDIR=$dir/tmp
  mkdir -p "$TMPDIR"
  echo "cows_jax: job $job, worker $worker, $(hostname), $(date -u +%FT%TZ)"
  echo "cows_jax: cows-jax$(printf ' %q' "${args[@]}")"
  cd "$root/src"
  if [[ -n $workdir && ! $sync =~ ^0*([.]0*)?$ ]]; then
    sync_loop "$dir" "$sync" &
    syncer=$!
  fi
  set +e
  "$venv/bin/cows-jax" "${args[@]}"
  rc=$?
  echo "cows_jax: worker $worker: exit status $rc, $(date -u +%FT%TZ)"
  if [[ -n $syncer ]]; then
    kill "$syncer" 2>/dev/null
    wait "$syncer" 2>/dev/null
    sync_now "$dir" # the end of the log, the last events: before poll sees the status.
  fi
  if ((rc == 0)); then
    rm -rf "$TMPDIR"
  fi
  echo "$rc" >"$dir/worker-$worker.rc.tmp"
  mv "$dir/worker-$worker.rc.tmp" "$dir/worker-$worker.rc" # poll never reads a partial status.
  exit "$rc"
}

poll() {
  local dir=$root/current job
  job=$(basename "$(readlink "$dir" 2>/dev/null)" 2>/dev/null) || job=
  if [[ -z $job ]]; then
    say 'state=none'
  elif job_running; then
    say "state=running job=$job"
  elif [[ -f $dir/worker-$worker.rc ]]; then
    # Checked after job_running: a job that ends between two checks has its status by then.
    say "state=exited rc=$(cat "$dir/worker-$worker.rc") job=$job"
  else
    say "state=lost job=$job: the job died without an exit status"
  fi
}

command=${1:-}
shift || true
case $command in
  setup) setup "$@" ;;
  start) start "$@" ;;
  _job) run_job "$@" ;;
  _sync) sync_job "$@" ;;
  poll) poll ;;
  stop)
    stop_job
    clear_stale
    say 'state=stopped'
    ;;
  tail) tail -n "${1:-40}" "$root/current/worker-$worker.log" | sed "s/^/[worker $worker] /" ;;
  logs) tail -n 20 -F "$root/current/worker-$worker.log" | sed -u "s/^/[worker $worker] /" ;;
  *)
    sed -n '3p' "$0" | sed 's/^# //' >&2
    exit 2
    ;;
esac
