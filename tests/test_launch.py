"""launch/tpu_vm.sh against a fake `gcloud` that records every call and plays a TPU slice of
two workers on this machine: scp copies into one home directory per worker, and ssh runs the
remote command there (after `bash -n`), so the worker side (tpu_worker.sh) runs for real, with
a fake `uv` and a fake `cows-jax`. No network, no TPU."""

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
with open(os.path.join(state, 'calls.jsonl'), 'a') as f:
  f.write(json.dumps(args) + '\\n')
flags = dict(a[2:].split('=', 1) for a in args if a.startswith('--') and '=' in a)
n = int(os.environ['FAKE_WORKERS'])
worker = flags.get('worker', '0')
workers = range(n) if worker == 'all' else [int(worker)]
home = lambda w: os.path.join(state, f'worker{{w}}')
verb = args[3]
if verb == 'describe':
  print(n)
elif verb == 'scp':
  paths = [a for a in args[4:] if not a.startswith('--')]
  for w in workers:
    for p in paths[:-1]:
      shutil.copy(p, home(w))
elif verb == 'ssh':
  subprocess.run(['bash', '-n', '-c', flags['command']], check=True)
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

# Records its arguments; worker FAKE_FAIL_WORKER exits 3, the others run FAKE_SECONDS.
FAKE_COWS_JAX = """#!{python}
import json, os, sys, time
w = os.environ['COWS_TPU_WORKER']
with open(os.path.join(os.environ['HOME'], 'argv.json'), 'w') as f:
  json.dump(sys.argv[1:], f)
print('fake cows-jax: worker', w, 'in', os.getcwd(), flush=True)
if w == os.environ.get('FAKE_FAIL_WORKER'):
  sys.exit(3)
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
  )
  return repo, state, env


def _launch(repo, env, *args, **extra_env):
  return subprocess.run(
    ['bash', str(repo / 'launch' / 'tpu_vm.sh'), *args],
    env=dict(env, **extra_env),
    capture_output=True,
    text=True,
    timeout=60,
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
    '/w',
    FAKE_FAIL_WORKER='1',
    FAKE_SECONDS='60',
  )
  assert r.returncode == 3, r.stdout + r.stderr
  assert time.monotonic() - start < 30
  assert 'Worker 1 failed (exit status 3)' in r.stderr
  assert '[worker 1] fake cows-jax: worker 1' in r.stderr  # the end of its log.
  rc = state / 'worker0' / 'cows_jax' / 'current' / 'worker-0.rc'
  assert rc.read_text() == '143\n'  # worker 0 was stopped with SIGTERM, not left hanging.


def test_a_running_job_is_replaced_only_when_asked(slice_):
  repo, state, env = slice_
  first = _launch(
    repo, env, 'run', '--no-watch', 'tpu', 'zone', 'label', 'c', '/w', FAKE_SECONDS='60'
  )
  assert first.returncode == 0, first.stdout + first.stderr
  busy = _launch(repo, env, 'run', 'tpu', 'zone', 'label', 'c', '/w')
  assert busy.returncode != 0 and 'is still running' in busy.stdout + busy.stderr
  again = _launch(
    repo, env, 'run', '--replace', 'tpu', 'zone', 'label', 'c', '/w', FAKE_SECONDS='0'
  )
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
