"""A workdir on object storage: the tiny pipeline with WORKDIR = gs://bucket/run, where gs://
is an in-memory fsspec filesystem (offline), so any os.path or plain open() left on a workdir
path fails here. Only the orbax checkpoint directories stay on local disk: orbax writes gs://
through TensorStore's own GCS driver, which no offline stand-in replaces."""

import os
import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent("""
    import json, os, sys
    import fsspec
    from fsspec.implementations.memory import MemoryFileSystem
    for protocol in ('gs', 'gcs'):
      fsspec.register_implementation(protocol, MemoryFileSystem, clobber=True)
    from etils import epath
    from cows_jax import cli, config, run_dir

    local = sys.argv[1]
    # Checkpoints on local disk (see the module docstring); every other path stays on gs://.
    run_dir.RunDir.classifier = lambda self: epath.Path(local) / 'classifier'
    run_dir.RunDir.segmenter = lambda self, sup='pseudo': epath.Path(local) / f'segmenter_{sup}'
    cfg = config.load('synthetic:tiny')
    cfg.data.data_dir = os.path.join(local, 'data')
    workdir = 'gs://bucket/run'
    cli.run_stage('pipeline', cfg, workdir)
    run = run_dir.RunDir(workdir)
    summary = json.loads((run.reports() / 'summary.json').read_text())
    ids = run_dir.read_json(run.labels_index(), 'label')['ids']
    assert all(run_dir.maps_readable(run.map_file(i)) for i in ids)
    assert all(run_dir.label_readable(run.label_file(i)) for i in ids)
    logs = (run.root / 'logs' / 'classify.jsonl').read_text().splitlines()
    assert len(logs) == 4 and json.loads(logs[-1])['step'] == 8, logs
    assert list((run.root / 'tensorboard' / 'evaluate').iterdir())
    # Rerunning resumes from the object store: every stage finds its outputs complete.
    cli.run_stage('pipeline', cfg, workdir)
    print('SUMMARY', summary['segmentation_miou'])
""")


def test_tiny_pipeline_with_its_workdir_on_an_object_store(tmp_path):
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  env = dict(os.environ, JAX_PLATFORMS='cpu')
  done = subprocess.run(
    [sys.executable, '-c', SCRIPT, str(tmp_path)],
    cwd=str(tmp_path),
    env=env,
    capture_output=True,
    text=True,
    timeout=600,
  )
  assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-5000:]
  assert 'SUMMARY' in done.stdout
  # Nothing of the workdir landed on local disk under a literal 'gs:' directory.
  assert sorted(os.listdir(tmp_path)) == [
    'classifier',
    'data',
    'segmenter_ground_truth',
    'segmenter_pseudo',
  ]
  assert not os.path.exists(os.path.join(root, 'gs:'))
