"""Shared fixtures: tiny configs that run the real code in seconds."""

import atexit
import os
import shutil
import tempfile

import pytest

# The test programs are tiny: XLA's default CPU optimization spends far longer compiling them
# than running them (the suite's time is mostly compiles), so tests compile fast.
FAST_COMPILE_FLAGS = (
  '--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true'
  ' --xla_cpu_use_fusion_emitters=false'
)
# Tests run on the CPU, also on a machine with an accelerator (`make test` sets it as well).
os.environ.setdefault('JAX_PLATFORMS', 'cpu')
os.environ['XLA_FLAGS'] = f'{os.environ.get("XLA_FLAGS", "")} {FAST_COMPILE_FLAGS}'.strip()
# One compilation cache for the session, its subprocesses included: many tests run the same
# tiny stages (the reruns of the chaos, SIGTERM and resume tests, the reference runs of the
# distributed ones), and each would compile them again. Made fresh per session, so nothing
# compiled by other code is ever reused.
if 'JAX_COMPILATION_CACHE_DIR' not in os.environ:
  _cache = tempfile.mkdtemp(prefix='cows_jax_test_xla_cache_')
  atexit.register(shutil.rmtree, _cache, ignore_errors=True)
  os.environ['JAX_COMPILATION_CACHE_DIR'] = _cache
  os.environ['JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS'] = '0'
  os.environ['JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES'] = '0'


# Test modules whose tests start processes of several devices each. Under pytest-xdist
# (`make test`: 2 workers, --dist loadgroup) one worker runs them one after the other while
# the other runs the rest, so that no two of them share the 2 cores.
PROCESS_HEAVY = ('test_distributed', 'test_multihost_build', 'test_parallel', 'test_update_plan')


def pytest_collection_modifyitems(items):
  for item in items:
    if item.path.stem in PROCESS_HEAVY:
      item.add_marker(pytest.mark.xdist_group('processes'))


@pytest.fixture
def tiny_config(tmp_path):
  """configs/synthetic.py:tiny with the dataset built under tmp_path."""
  from cows_jax import config

  cfg = config.load('synthetic:tiny')
  cfg.data.data_dir = str(tmp_path / 'data')
  return cfg


@pytest.fixture(scope='session')
def tiny_run(tmp_path_factory):
  """(config, workdir) of the whole tiny pipeline, run once for the tests that read its outputs."""
  from cows_jax import cli, config

  base = tmp_path_factory.mktemp('tiny_run')
  cfg = config.load('synthetic:tiny')
  cfg.data.data_dir = str(base / 'data')
  workdir = str(base / 'run')
  cli.run_stage('pipeline', cfg, workdir)
  return cfg, workdir


@pytest.fixture
def free_port() -> int:
  """A free TCP port on localhost, for a jax.distributed coordinator."""
  import socket

  with socket.socket() as s:
    s.bind(('localhost', 0))
    return s.getsockname()[1]
