"""Two processes (jax.distributed, as on a multi-host TPU slice) sharing one data_dir: process
0 builds the dataset, process 1 waits and reuses it, and both read the same records."""

import os
import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent("""
    import hashlib, sys
    import jax
    jax.config.update('jax_cpu_collectives_implementation', 'gloo')
    pid, port, data_dir = int(sys.argv[1]), sys.argv[2], sys.argv[3]
    jax.distributed.initialize(f'localhost:{port}', num_processes=2, process_id=pid)
    from absl import logging
    logging.set_verbosity(logging.INFO)
    from cows_jax.data import synthetic
    spec = synthetic.SyntheticSpec(num_classes=3, image_size=32, train_size=4, val_size=2)
    train = synthetic.load_sources(spec, data_dir)['train']
    print('RECORDS', len(train), hashlib.sha256(train[3]['image'].tobytes()).hexdigest())
""")


def test_process_zero_builds_and_the_other_reuses(tmp_path, free_port):
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  env = dict(os.environ, JAX_PLATFORMS='cpu')
  port = str(free_port)
  procs = [
    subprocess.Popen(
      [sys.executable, '-c', SCRIPT, str(i), port, str(tmp_path)],
      cwd=root,
      env=env,
      stdout=subprocess.PIPE,
      stderr=subprocess.PIPE,
      text=True,
    )
    for i in range(2)
  ]
  outs = [p.communicate(timeout=300) for p in procs]
  for p, (out, err) in zip(procs, outs):
    assert p.returncode == 0, out + err[-4000:]
  (out0, err0), (out1, err1) = outs
  assert 'Building synthetic dataset' in err0 and 'Building synthetic dataset' not in err1
  assert 'Reusing synthetic dataset' in err1
  records = [
    line for out in (out0, out1) for line in out.splitlines() if line.startswith('RECORDS')
  ]
  assert len(records) == 2 and records[0] == records[1] and records[0].startswith('RECORDS 4 ')
