"""Separate jobs on one machine sharing one data_dir (`ablate --seeds` side by side): the
dataset is built once (data/builds.one_build_at_a_time). Not in conftest's PROCESS_HEAVY:
its two processes are single-device and short."""

import os
import subprocess
import sys
import textwrap

JOB = textwrap.dedent("""
    import hashlib, sys
    from absl import logging
    logging.set_verbosity(logging.INFO)
    from cows_jax.data import synthetic
    spec = synthetic.SyntheticSpec(num_classes=3, image_size=32, train_size=4, val_size=2)
    train = synthetic.load_sources(spec, sys.argv[1])['train']
    print('RECORDS', len(train), hashlib.sha256(train[3]['image'].tobytes()).hexdigest())
""")


def test_separate_jobs_sharing_a_data_dir_build_it_once(tmp_path):
  """Two separate jobs (say `ablate --seeds` side by side) find the dataset missing while a
  third is building it: they wait, then one builds and the other reuses that build, where TFDS
  alone would build it in each and fail the later rename."""
  import time

  from cows_jax.data import builds, synthetic

  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  spec = synthetic.SyntheticSpec(num_classes=3, image_size=32, train_size=4, val_size=2)
  build = tmp_path / 'data' / 'cows_synthetic' / spec.fingerprint(synthetic.DATASET_SPLITS)
  logs = [tmp_path / f'job{i}.log' for i in range(2)]
  with builds.one_build_at_a_time(build / '1.0.0', 'the test'):
    procs = [
      subprocess.Popen(
        [sys.executable, '-c', JOB, str(tmp_path / 'data')],
        cwd=root,
        env=dict(os.environ, JAX_PLATFORMS='cpu'),
        stdout=subprocess.PIPE,
        stderr=log.open('w'),
        text=True,
      )
      for log in logs
    ]
    deadline = time.monotonic() + 240
    while not all('Waiting for another job building' in log.read_text() for log in logs):
      assert time.monotonic() < deadline and all(p.poll() is None for p in procs)
      time.sleep(0.2)
  outs = [p.communicate(timeout=300)[0] for p in procs]
  errs = [log.read_text() for log in logs]
  assert [p.returncode for p in procs] == [0, 0], errs
  assert sorted('Building synthetic dataset' in e for e in errs) == [False, True]
  assert sorted('Reusing synthetic dataset' in e for e in errs) == [False, True]
  records = [line for out in outs for line in out.splitlines() if line.startswith('RECORDS')]
  assert len(records) == 2 and records[0] == records[1] and records[0].startswith('RECORDS 4 ')
