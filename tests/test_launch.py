"""launch/tpu_vm.sh against a fake `gcloud` that records every call and plays a TPU slice of
two workers on this machine: scp copies into one home directory per worker, and ssh runs the
remote command there (after `bash -n`), so the worker side (tpu_worker.sh) runs for real, with
a fake `uv` and a fake `cows-jax`. The slice has a state (the file `slice`, READY unless
written): ssh fails unless it is READY, describe reports it, delete wipes the workers' disks.
`gcloud storage` plays gs:// in the directory `gcs`. No network, no TPU."""

import json
import os
import shutil
import subprocess
import sys
import tarfile
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORKERS = 2
# What the workers (Linux) and the launcher use.
TOOLS = ('bash', 'git', 'tar', 'setsid', 'pkill', 'pgrep', 'sha256sum')
pytestmark = pytest.mark.skipif(
  not all(shutil.which(t) for t in TOOLS), reason=f'needs {", ".join(TOOLS)}'
)

FAKE_GCLOUD = """#!{python}
import json, os, shutil, subprocess, sys
args = sys.argv[1:]
state = os.environ['FAKE_STATE']
if args[0] == 'storage':  # the workers' copies to a gs:// workdir.
  with open(os.path.join(state, 'storage.jsonl'), 'a') as f:
    f.write(json.dumps(args) + '\\n')
  gcs = lambda p: os.path.join(state, 'gcs', p[5:]) if p.startswith('gs://') else p
  paths = [gcs(a) for a in args[2:] if not a.startswith('--')]
  if args[1] == 'cp':
    os.makedirs(os.path.dirname(paths[1]), exist_ok=True)
    shutil.copy(paths[0], paths[1])
  elif args[1] == 'rm':
    shutil.rmtree(paths[0])
  sys.exit(0)
with open(os.path.join(state, 'calls.jsonl'), 'a') as f:
  f.write(json.dumps(args) + '\\n')
flags = dict(a[2:].split('=', 1) for a in args if a.startswith('--') and '=' in a)
n = int(os.environ['FAKE_WORKERS'])
worker = flags.get('worker', '0')
workers = range(n) if worker == 'all' else [int(worker)]
home = lambda w: os.path.join(state, f'worker{{w}}')
slice_file = os.path.join(state, 'slice')
slice_state = open(slice_file).read() if os.path.exists(slice_file) else 'READY'
verb = args[3]
if verb == 'describe':
  if slice_state == 'NOT_FOUND':
    print(f"ERROR: (gcloud.compute.tpus.tpu-vm.describe) NOT_FOUND: Resource '{{args[4]}}' was not "
          'found', file=sys.stderr)
    sys.exit(1)
  print(slice_state if flags.get('format') == 'value(state)' else n)
elif verb == 'create':
  open(slice_file, 'w').write('READY')
elif verb == 'delete':
  open(slice_file, 'w').write('NOT_FOUND')
  for w in range(n):  # a new slice has new disks.
    shutil.rmtree(home(w))
    os.mkdir(home(w))
elif verb == 'scp':
  if os.environ.get('FAKE_SCP_FAIL'):
    print('ERROR: (gcloud.compute.tpus.tpu-vm.scp) [/usr/bin/scp] exited with return code [1].',
          file=sys.stderr)
    sys.exit(1)
  paths = [a for a in args[4:] if not a.startswith('--')]
  for w in workers:
    for p in paths[:-1]:
      shutil.copy(p, home(w))
elif verb == 'ssh':
  subprocess.run(['bash', '-n', '-c', flags['command']], check=True)
  if slice_state != 'READY':
    print('ssh: connect to host 10.130.0.2 port 22: Connection timed out', file=sys.stderr)
    sys.exit(255)
  if os.environ.get('FAKE_EXECUTE', '1') == '1':
    env = lambda w: dict(os.environ, HOME=home(w), COWS_TPU_WORKER=str(w))
    rcs = [subprocess.run(['bash', '-c', flags['command']], env=env(w)).returncode for w in workers]
    sys.exit(max(rcs))
"""

FAKE_UV = """#!{python}
import json, os, sys
args = sys.argv[1:]
with open(os.path.join(os.environ['HOME'], 'uv_calls.jsonl'), 'a') as f:
  f.write(json.dumps(args) + '\\n')
if args[0] == 'venv':
  os.makedirs(os.path.join(args[-1], 'bin'))
  os.symlink(sys.executable, os.path.join(args[-1], 'bin', 'python'))
elif args[:2] == ['pip', 'install']:
  script = os.path.join(os.path.dirname(args[args.index('--python') + 1]), 'cows-jax')
  with open(script, 'w') as f:
    f.write(os.environ['FAKE_COWS_JAX'])
  os.chmod(script, 0o755)
"""

# Records its arguments; worker FAKE_FAIL_WORKER exits 3, the others run FAKE_SECONDS. With
# FAKE_EXIT_75_ONCE, each worker's first run exits 75 (with FAKE_PREEMPT, the slice is
# preempted first). With FAKE_TB, worker 0 is summaries.Writer on a gs:// workdir: events in a
# temporary directory, copied to WORKDIR/tensorboard/classify/ when it closes.
FAKE_COWS_JAX = """#!{python}
import json, os, shutil, sys, tempfile, time
w = os.environ['COWS_TPU_WORKER']
state = os.environ['FAKE_STATE']
with open(os.path.join(os.environ['HOME'], 'argv.json'), 'w') as f:
  json.dump(sys.argv[1:], f)
print('fake cows-jax: worker', w, 'in', os.getcwd(), flush=True)
if w == os.environ.get('FAKE_FAIL_WORKER'):
  sys.exit(3)
once = os.path.join(state, f'attempted{{w}}')
if os.environ.get('FAKE_EXIT_75_ONCE') and not os.path.exists(once):
  open(once, 'w').close()
  if os.environ.get('FAKE_PREEMPT'):
    open(os.path.join(state, 'slice'), 'w').write('PREEMPTED')
  sys.exit(75)
if os.environ.get('FAKE_TB') and w == '0':
  local = tempfile.mkdtemp(prefix='cows_tensorboard.')
  events = os.path.join(local, 'events.out.tfevents.1700000000.w0')
  open(events, 'w').write('step 1\\n')
  time.sleep(float(os.environ.get('FAKE_SECONDS', '0')))
  open(events, 'a').write('step 2\\n')
  workdir = sys.argv[sys.argv.index('--workdir') + 1]
  final = os.path.join(state, 'gcs', workdir[5:], 'tensorboard', 'classify')
  os.makedirs(final)
  shutil.copy(events, final)
  shutil.rmtree(local)
  sys.exit(0)
time.sleep(float(os.environ.get('FAKE_SECONDS', '0')))
"""

OVERRIDES = [
  '--config.classify.lr_decay_epochs=(8,10)',
  '--config.data.manual_dir=/data/VOC dev\'s "kit"',
  '--config.note=$HOME `id` ; * \\ && echo x|y',
  '--config.lines=one\ntwo',
]


def _write(path, text, mode=0o644):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, 'w') as f:
    f.write(text)
  os.chmod(path, mode)


@pytest.fixture
def slice_(tmp_path):
  """(repo, state, env): a clone with junk beside the source, and the fake tools."""
  repo = tmp_path / 'repo'
  shutil.copytree(os.path.join(ROOT, 'launch'), repo / 'launch')
  for name in ('pyproject.toml', 'README.md', '.gitignore'):
    shutil.copy(os.path.join(ROOT, name), repo / name)
  for name in ('cows_jax/__init__.py', 'configs/x.py', 'data/voc/list.txt'):
    _write(repo / name, '')
  git = ['git', '-C', str(repo)]
  subprocess.run([*git, 'init', '-q'], check=True)
  subprocess.run([*git, 'add', '.'], check=True)
  subprocess.run([*git, 'add', '-f', 'data/voc/list.txt'], check=True)  # tracked, not source.
  for name in (
    'cows_jax/new.py',  # new, not ignored: shipped.
    'cows_jax/__pycache__/x.pyc',
    'workdir/synthetic/x',
    'data/VOCdevkit/a.jpg',
    'runs/r/ckpt',
    'weights/resnet.npz',
    '.venv/bin/python',
  ):
    _write(repo / name, 'x')

  state = tmp_path / 'state'
  bin_dir = state / 'bin'
  python = sys.executable
  _write(bin_dir / 'gcloud', FAKE_GCLOUD.format(python=python), 0o755)
  _write(bin_dir / 'uv', FAKE_UV.format(python=python), 0o755)
  for w in range(WORKERS):
    (state / f'worker{w}').mkdir()
  env = dict(
    os.environ,
    PATH=f'{bin_dir}:{os.environ["PATH"]}',
    FAKE_STATE=str(state),
    FAKE_WORKERS=str(WORKERS),
    FAKE_COWS_JAX=FAKE_COWS_JAX.format(python=python),
    COWS_TPU_POLL='0.2',
    COWS_TPU_STOP_GRACE='5',
    COWS_TPU_DEVICES='',  # never this machine's devices.
    COWS_TPU_LOCKFILE=str(state / 'libtpu_lockfile'),
    XDG_STATE_HOME=str(state / 'local_state'),  # create's records.
  )
  return repo, state, env


def _launch(repo, env, *args, timeout=60, **extra_env):
  return subprocess.run(
    ['bash', str(repo / 'launch' / 'tpu_vm.sh'), *args],
    env=dict(env, **extra_env),
    capture_output=True,
    text=True,
    timeout=timeout,
  )


def _calls(state):
  with open(state / 'calls.jsonl') as f:
    return [json.loads(line) for line in f]


def _flag(call, name):
  return next(a.split('=', 1)[1] for a in call if a.startswith(f'--{name}='))


def test_create_picks_the_runtime_of_each_generation(slice_):
  repo, state, env = slice_
  runtimes = {
    'v4-8': 'tpu-ubuntu2204-base',
    'v5litepod-16': 'v2-alpha-tpuv5-lite',
    'v5p-32': 'v2-alpha-tpuv5',
    'v6e-8': 'v2-alpha-tpuv6e',
  }
  for accelerator in runtimes:
    r = _launch(repo, env, 'create', 'my-tpu', 'us-central2-b', accelerator, '--spot')
    assert r.returncode == 0, r.stderr
  r = _launch(repo, env, 'create', 'my-tpu', 'us-central2-b', 'v9-8')
  assert r.returncode != 0 and 'COWS_TPU_RUNTIME' in r.stderr
  calls = _calls(state)
  assert len(calls) == len(runtimes)
  for call, (accelerator, runtime) in zip(calls, runtimes.items()):
    assert call[:5] == ['compute', 'tpus', 'tpu-vm', 'create', 'my-tpu']
    assert _flag(call, 'zone') == 'us-central2-b'
    assert _flag(call, 'accelerator-type') == accelerator
    assert _flag(call, 'version') == runtime
    assert call[-1] == '--spot'


def test_run_ships_the_source_and_passes_every_override_verbatim(slice_):
  repo, state, env = slice_
  home0 = state / 'worker0'
  # Leftovers of an earlier run on worker 0: a stage still holding the TPU, and the lockfile.
  stale = subprocess.Popen(
    [sys.executable, '-c', 'import time; time.sleep(60)', f'{home0}/cows_jax/venv/bin/cows-jax'],
    start_new_session=True,
  )
  (state / 'libtpu_lockfile').write_text('')
  try:
    args = ('run', 'my-tpu', 'zone-a', 'classify', 'configs/voc12.py', 'gs://b/run 1', *OVERRIDES)
    r = _launch(repo, env, *args, FAKE_SECONDS='0.3')
    assert r.returncode == 0, r.stdout + r.stderr
    assert stale.wait(timeout=5) is not None
  finally:
    stale.kill()
  assert not (state / 'libtpu_lockfile').exists()
  assert 'The job finished on all 2 workers' in r.stdout
  assert "--worker=all --command='tail -n 20 -F ~/cows_jax/current/worker-*.log'" in r.stdout

  calls = _calls(state)
  assert [c[3] for c in calls[:4]] == ['scp', 'ssh', 'ssh', 'describe']
  assert {c[3] for c in calls[4:]} == {'ssh'}  # polls until both workers are done.
  scp = calls[0]
  assert [os.path.basename(p) for p in scp[4:6]] == ['cows_jax_src.tgz', 'cows_jax_args.sh']
  assert scp[6] == 'my-tpu:' and _flag(scp, 'worker') == 'all'
  for call in calls:
    assert _flag(call, 'zone') == 'zone-a'
    if call[3] == 'ssh':
      assert call[4] == 'my-tpu' and _flag(call, 'worker') == 'all'
      cmd = _flag(call, 'command')
      assert subprocess.run(['bash', '-n', '-c', cmd]).returncode == 0, cmd

  expected = ['classify', '--distributed', '--config', 'configs/voc12.py', '--workdir']
  expected += ['gs://b/run 1', *OVERRIDES]
  # The shipped arguments file, decoded by bash as the workers do...
  decoded = subprocess.run(
    ['bash', '-c', 'source "$1"; printf "%s\\0" "${args[@]}"', '-', home0 / 'cows_jax_args.sh'],
    capture_output=True,
    text=True,
    check=True,
  ).stdout
  assert decoded.split('\0')[:-1] == expected
  for w in range(WORKERS):
    home = state / f'worker{w}'
    # ...and the arguments the stage got on each worker.
    assert json.loads((home / 'argv.json').read_text()) == expected
    (job,) = os.listdir(home / 'cows_jax' / 'jobs')
    log = (home / 'cows_jax' / 'jobs' / job / f'worker-{w}.log').read_text()
    assert f'fake cows-jax: worker {w} in {home}/cows_jax/src' in log
    assert (home / 'cows_jax' / 'jobs' / job / f'worker-{w}.rc').read_text() == '0\n'
    uv = [json.loads(line) for line in (home / 'uv_calls.jsonl').read_text().splitlines()]
    assert uv[0] == ['venv', '--python', '3.11', f'{home}/cows_jax/venv']
    assert uv[1][-2:] == ['-e', f'{home}/cows_jax/src[tpu,gcs,crf]']

  with tarfile.open(home0 / 'cows_jax_src.tgz') as tar:
    names = set(tar.getnames())
  assert {'pyproject.toml', 'cows_jax/new.py', 'configs/x.py', 'launch/tpu_worker.sh'} <= names
  junk = ('.git', 'data', 'workdir', 'runs', 'weights', '.venv')
  assert not [n for n in names if n.split('/')[0] in junk or '__pycache__' in n], names


def test_a_failing_worker_stops_the_others(slice_):
  repo, state, env = slice_
  start = time.monotonic()
  r = _launch(
    repo,
    env,
    'run',
    'tpu',
    'zone',
    'segment',
    'voc12',
    str(state / 'shared' / 'run'),  # a share every worker mounts.
    FAKE_FAIL_WORKER='1',
    FAKE_SECONDS='60',
  )
  assert r.returncode == 3, r.stdout + r.stderr
  assert time.monotonic() - start < 30
  assert 'Worker 1 failed (exit status 3)' in r.stderr
  assert '[worker 1] fake cows-jax: worker 1' in r.stderr  # the end of its log.
  rc = state / 'worker0' / 'cows_jax' / 'current' / 'worker-0.rc'
  assert rc.read_text() == '143\n'  # worker 0 was stopped with SIGTERM, not left hanging.
  # Each worker's log, to its end, in the workdir.
  logs = state / 'shared' / 'run' / 'logs'
  for w, status in ((0, 143), (1, 3)):
    log = (logs / f'worker-{w}.log').read_text()
    assert f'fake cows-jax: worker {w}' in log and f'exit status {status}' in log


def test_a_running_job_is_replaced_only_when_asked(slice_):
  repo, state, env = slice_
  wd = str(state / 'shared' / 'run')
  first = _launch(
    repo, env, 'run', '--no-watch', 'tpu', 'zone', 'label', 'c', wd, FAKE_SECONDS='60'
  )
  assert first.returncode == 0, first.stdout + first.stderr
  busy = _launch(repo, env, 'run', 'tpu', 'zone', 'label', 'c', wd)
  assert busy.returncode != 0 and 'is still running' in busy.stdout + busy.stderr
  again = _launch(repo, env, 'run', '--replace', 'tpu', 'zone', 'label', 'c', wd, FAKE_SECONDS='0')
  assert again.returncode == 0, again.stdout + again.stderr
  home = state / 'worker0'
  rcs = sorted(p.read_text() for p in (home / 'cows_jax' / 'jobs').glob('*/worker-0.rc'))
  assert rcs == ['0\n', '143\n']  # the first job was stopped with SIGTERM.
  # The second launch reused the venv: one install.
  assert len((home / 'uv_calls.jsonl').read_text().splitlines()) == 2


def test_logs_and_stop_reach_every_worker(slice_):
  repo, state, env = slice_
  for command in ('logs', 'stop'):
    r = _launch(repo, env, command, 'tpu', 'zone', FAKE_EXECUTE='0')
    assert r.returncode == 0, r.stderr
  ssh = [c for c in _calls(state) if c[3] == 'ssh']
  assert [_flag(c, 'worker') for c in ssh[:2]] == ['all', 'all']
  assert 'tpu_worker.sh logs' in _flag(ssh[0], 'command')
  assert 'tpu_worker.sh stop' in _flag(ssh[1], 'command')


def test_the_logs_and_the_open_tensorboard_events_reach_a_gs_workdir_while_the_stage_runs(slice_):
  repo, state, env = slice_
  args = ('tpu', 'zone', 'classify', 'c', 'gs://b/run 1')
  extra = dict(FAKE_TB='1', FAKE_SECONDS='10')  # long enough for a loaded machine's syncs.
  r = _launch(repo, env, 'run', '--no-watch', '--sync', '0.2', *args, **extra)
  assert r.returncode == 0, r.stdout + r.stderr
  run = state / 'gcs' / 'b' / 'run 1'
  rc = state / 'worker0' / 'cows_jax' / 'current' / 'worker-0.rc'
  live = 'tensorboard/live/cows_tensorboard.*/events.out.tfevents.1700000000.w0'
  copied = lambda: [*run.glob(live), *run.glob('logs/worker-*.log')]
  deadline = time.monotonic() + 8
  while time.monotonic() < deadline and len(copied()) < 1 + WORKERS:
    time.sleep(0.1)
  assert not rc.exists()  # the stage still runs.
  (events,) = run.glob(live)
  assert events.read_text() == 'step 1\n'
  for w in range(WORKERS):
    assert f'fake cows-jax: worker {w}' in (run / 'logs' / f'worker-{w}.log').read_text()
  watch = _launch(repo, env, 'watch', 'tpu', 'zone')
  assert watch.returncode == 0, watch.stdout + watch.stderr
  # Closed: the writer copied its events to their place, the live copy is gone.
  final = run / 'tensorboard' / 'classify' / 'events.out.tfevents.1700000000.w0'
  assert final.read_text() == 'step 1\nstep 2\n'
  assert not list((run / 'tensorboard' / 'live').iterdir())
  for w in range(WORKERS):
    assert 'exit status 0' in (run / 'logs' / f'worker-{w}.log').read_text()
  # The stage's temporary files were the job's own, removed when it exited 0.
  (job,) = (state / 'worker0' / 'cows_jax' / 'jobs').iterdir()
  assert not (job / 'tmp').exists()


def test_watch_gives_up_on_a_preempted_or_deleted_slice_naming_its_state(slice_):
  repo, state, env = slice_
  for slice_state, status in (('PREEMPTED', 75), ('NOT_FOUND', 1)):
    (state / 'slice').write_text(slice_state)
    (state / 'calls.jsonl').unlink(missing_ok=True)
    start = time.monotonic()
    r = _launch(repo, env, 'watch', '--failed-polls', '3', 'tpu', 'zone', timeout=20)
    assert r.returncode == status, r.stdout + r.stderr
    assert time.monotonic() - start < 10
    assert f'tpu is {slice_state}' in r.stderr
    assert 'Connection timed out' in r.stderr  # ssh's own error.
    calls = _calls(state)
    assert [c[3] for c in calls if c[3] == 'ssh'] == ['ssh'] * 3
    assert _flag(calls[-1], 'format') == 'value(state)'


def test_retry_reruns_a_stage_that_exits_75(slice_):
  repo, state, env = slice_
  wd = str(state / 'shared' / 'run')
  r = _launch(
    repo, env, 'run', '--retry', '1', 'tpu', 'zone', 'classify', 'c', wd, FAKE_EXIT_75_ONCE='1'
  )
  assert r.returncode == 0, r.stdout + r.stderr
  assert 'Rerun 1 of 1' in r.stdout and 'The job finished on all 2 workers' in r.stdout
  for w in range(WORKERS):
    jobs = state / f'worker{w}' / 'cows_jax' / 'jobs'
    assert sorted(p.read_text() for p in jobs.glob(f'*/worker-{w}.rc')) == ['0\n', '75\n']
  assert not [c for c in _calls(state) if c[3] in ('create', 'delete')]  # the slice is READY.


def test_recreate_makes_a_preempted_slice_again_as_create_did_and_reruns(slice_):
  repo, state, env = slice_
  wd = str(state / 'shared' / 'run')
  run = ('run', '--retry', '1', '--recreate', '--failed-polls', '2', 'my-tpu', 'zone-a')
  run += ('classify', 'c', wd)
  r = _launch(repo, env, *run)
  assert r.returncode == 1 and 'launch/tpu_vm.sh create' in r.stderr  # no record of it.
  assert not (state / 'calls.jsonl').exists()
  r = _launch(repo, env, 'create', 'my-tpu', 'zone-a', 'v4-8', '--spot', '--labels=a=b c')
  assert r.returncode == 0, r.stderr
  r = _launch(repo, env, *run, FAKE_EXIT_75_ONCE='1', FAKE_PREEMPT='1')
  assert r.returncode == 0, r.stdout + r.stderr
  assert 'my-tpu is PREEMPTED' in r.stderr and 'Rerun 1 of 1' in r.stdout
  calls = _calls(state)
  delete = next(i for i, c in enumerate(calls) if c[3] == 'delete')
  assert calls[delete - 1][3] == 'describe' and _flag(calls[delete - 1], 'format') == 'value(state)'
  assert calls[delete] == [
    'compute',
    'tpus',
    'tpu-vm',
    'delete',
    'my-tpu',
    '--zone=zone-a',
    '--quiet',
  ]
  assert calls[delete + 1] == calls[0]  # the same create: type, runtime version, flags.
  assert calls[0][-2:] == ['--spot', '--labels=a=b c']
  assert [c[3] for c in calls[delete + 2 : delete + 5]] == ['scp', 'ssh', 'ssh']
  # The new slice's workers were set up from scratch and ran the stage to its end.
  for w in range(WORKERS):
    home = state / f'worker{w}'
    assert len((home / 'uv_calls.jsonl').read_text().splitlines()) == 2
    (job,) = (home / 'cows_jax' / 'jobs').iterdir()
    assert (job / f'worker-{w}.rc').read_text() == '0\n'


def test_a_failed_copy_prints_gclouds_error(slice_):
  repo, state, env = slice_
  r = _launch(repo, env, 'run', 'tpu', 'zone', 'classify', 'c', 'gs://b/r', FAKE_SCP_FAIL='1')
  assert r.returncode == 1
  assert 'scp] exited with return code [1]' in r.stderr
  assert 'copying the source to the workers of tpu failed' in r.stderr
  assert 'unbound variable' not in r.stderr
