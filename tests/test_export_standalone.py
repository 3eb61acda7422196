"""An export runs where only the packages docs/export.md names are installed: a fresh virtual
environment (no system site-packages) with exactly the documented CPU `pip install` line runs
the documented loader on a real export, one image and three of one size, and executes
docs/notebooks/predict.ipynb (its kernel, ipykernel, added after the loader's test). Skipped,
saying why, where pip reaches no package index."""

import json
import os
import re
import shlex
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from cows_jax import export, inference

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOC = os.path.join(ROOT, 'docs', 'export.md')
NOTEBOOK = os.path.join(ROOT, 'docs', 'notebooks', 'predict.ipynb')


def documented_pip_lines() -> tuple[str, str]:
  """docs/export.md's install lines of a loader without cows_jax: (CPU, NVIDIA GPU)."""
  lines = re.findall(r'^pip install "jax.*$', open(DOC).read(), re.M)
  [cpu] = [x for x in lines if x.startswith('pip install "jax>=')]
  [cuda] = [x for x in lines if x.startswith('pip install "jax[cuda12]>=')]
  return cpu, cuda


def documented_loader() -> str:
  [snippet] = re.findall(r'```python\n(.*?)```', open(DOC).read(), re.S)
  return snippet


def _env() -> dict:
  """This process's environment without what would point Python at its packages."""
  drop = ('PYTHONPATH', 'PYTHONHOME', 'PYTHONSTARTUP', 'VIRTUAL_ENV', 'PYTHONUSERBASE')
  env = {k: v for k, v in os.environ.items() if k not in drop}
  return {**env, 'PIP_DISABLE_PIP_VERSION_CHECK': '1', 'PYTHONNOUSERSITE': '1'}


def _run(args, timeout=300, **kwargs) -> subprocess.CompletedProcess:
  return subprocess.run(
    [str(a) for a in args], capture_output=True, text=True, timeout=timeout, env=_env(), **kwargs
  )


def _pip(python, *args) -> subprocess.CompletedProcess:
  return _run([python, '-m', 'pip', *args, '--quiet'], timeout=600)


@pytest.fixture(scope='module')
def fresh_python(tmp_path_factory):
  """The python of a fresh virtual environment with the documented CPU line's packages."""
  line, _ = documented_pip_lines()
  root = tmp_path_factory.mktemp('fresh')
  venv = root / 'venv'
  made = _run([sys.executable, '-m', 'venv', venv], timeout=300)
  assert made.returncode == 0, made.stderr[-2000:]
  python = venv / 'bin' / 'python'
  done = _pip(python, 'install', '--no-compile', *shlex.split(line)[2:])
  if done.returncode:
    probe = _pip(python, 'download', '--no-deps', '-d', root / 'probe', 'flatbuffers')
    if probe.returncode:
      reason = (probe.stderr.strip().splitlines() or ['no output'])[-1]
      pytest.skip(f'pip reaches no package index from a fresh virtual environment ({reason})')
    pytest.fail(f'`{line}` failed in a fresh virtual environment:\n{done.stderr[-3000:]}')
  return python


@pytest.fixture(scope='module')
def export_dir(tiny_run, tmp_path_factory):
  cfg, workdir = tiny_run
  out = str(tmp_path_factory.mktemp('export') / 'export')
  export.export_segmenter(cfg, workdir, out)
  return out


def _images(directory, sizes) -> list[str]:
  rng = np.random.default_rng(3)
  paths = []
  for i, size in enumerate(sizes):
    paths.append(str(directory / f'photo{i}.png'))
    Image.fromarray(rng.integers(0, 255, (*size, 3), np.uint8)).save(paths[-1])
  return paths


def test_the_documented_line_is_what_exports_state(export_dir):
  meta = json.load(open(os.path.join(export_dir, 'meta.json')))
  assert documented_pip_lines() == (meta['load_with']['pip'], meta['load_with']['pip_cuda'])


def test_the_documented_loader_runs_with_only_the_documented_packages(
  fresh_python, export_dir, tmp_path
):
  absent = _run(
    [
      fresh_python,
      '-c',
      'import importlib.util as u; print([m for m in ("cows_jax", "flax") if u.find_spec(m)])',
    ],
    cwd=str(tmp_path),  # not the repository, whose cows_jax/ a script's directory would find.
  )
  assert absent.stdout.strip() == '[]', absent.stderr[-2000:]
  script = tmp_path / 'segment.py'
  script.write_text(documented_loader())
  segmenter, _ = inference.load_export(export_dir)
  for batch, paths in (('one', _images(tmp_path, [(41, 57)])), ('three', None)):
    if paths is None:
      paths = _images(tmp_path, [(48, 64)] * 3)
    out = tmp_path / batch
    out.mkdir()
    done = _run([fresh_python, script, export_dir, out, *paths], cwd=str(tmp_path))
    assert done.returncode == 0, done.stderr[-3000:]
    images = [np.asarray(Image.open(p).convert('RGB')) for p in paths]
    for path, image, want in zip(paths, images, segmenter.labels(images)):
      stem = os.path.splitext(os.path.basename(path))[0]
      with Image.open(out / f'{stem}.png') as im:
        assert im.mode == 'P' and im.size == image.shape[1::-1]
        assert np.mean(np.asarray(im) == want) > 0.999
      with Image.open(out / f'{stem}_overlay.png') as im:
        assert im.mode == 'RGB' and im.size == image.shape[1::-1]


def test_the_notebook_runs_with_only_the_documented_packages_and_a_kernel(
  fresh_python, export_dir, tmp_path, monkeypatch
):
  nbformat = pytest.importorskip('nbformat')
  nbclient = pytest.importorskip('nbclient')
  notebook = nbformat.read(NOTEBOOK, as_version=4)
  first = next(c for c in notebook.cells if c.cell_type == 'code').source
  cpu, cuda = documented_pip_lines()
  installs = re.findall(r'%pip install -q (.*)', first)
  assert installs == [cuda.removeprefix('pip install '), cpu.removeprefix('pip install ')]
  kernel = _pip(fresh_python, 'install', '--no-compile', 'ipykernel')
  assert kernel.returncode == 0, kernel.stderr[-3000:]
  spec = tmp_path / 'jupyter' / 'kernels' / 'fresh'
  spec.mkdir(parents=True)
  argv = [str(fresh_python), '-m', 'ipykernel_launcher', '-f', '{connection_file}']
  (spec / 'kernel.json').write_text(json.dumps({'argv': argv, 'language': 'python'}))
  for name, value in {
    'JUPYTER_PATH': tmp_path / 'jupyter',
    'JUPYTER_RUNTIME_DIR': tmp_path / 'runtime',
    'IPYTHONDIR': tmp_path / 'ipython',
    'EXPORT_DIR': export_dir,
    'IMAGE': _images(tmp_path, [(40, 52)])[0],
  }.items():
    monkeypatch.setenv(name, str(value))
  for name in ('PYTHONPATH', 'VIRTUAL_ENV'):
    monkeypatch.delenv(name, raising=False)
  client = nbclient.NotebookClient(
    notebook, kernel_name='fresh', timeout=300, resources={'metadata': {'path': str(tmp_path)}}
  )
  client.execute()
  outputs = [o for c in notebook.cells if c.cell_type == 'code' for o in c.outputs]
  assert any('image/png' in o.get('data', {}) for o in outputs)
  text = ''.join(o.get('text', '') for o in outputs)
  assert 'background' in text and '[(40, 52), (40, 52)]' in text
  with Image.open(tmp_path / 'label.png') as im:
    assert im.mode == 'P' and im.size == (52, 40)
