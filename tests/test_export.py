"""An export of the tiny pipeline's segmenter predicts what the run's segmenter predicts; it
loads without cows_jax; `cows-jax predict` skips what is not an image and writes the rest."""

import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest
from jax import export as jax_export
from PIL import Image

from cows_jax import checkpoints, config, export, inference, localize, predict, run_dir, views
from cows_jax.data import sources, transforms
from cows_jax.models import from_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope='module')
def exported(tiny_run, tmp_path_factory):
  cfg, workdir = tiny_run
  out = str(tmp_path_factory.mktemp('export') / 'e')
  meta = export.export_segmenter(cfg, workdir, out)
  return cfg, workdir, out, meta


def test_export_predicts_what_the_run_predicts(exported):
  cfg, workdir, out, meta = exported
  assert meta['classes'][0] == 'background' and len(meta['palette']) == len(meta['classes'])
  on_disk = json.load(open(os.path.join(out, 'meta.json')))
  assert on_disk['format_version'] == run_dir.EXPORT_FORMAT_VERSION and on_disk['sha256']
  from_run = inference.load_predictor(cfg, workdir)
  from_export, _ = inference.load_export(out)
  val = sources.load(cfg)['val']
  for i in range(3):
    image = val[i]['image']
    want, got = from_run(image), from_export(image)
    np.testing.assert_allclose(got, want, atol=1e-5)
    np.testing.assert_array_equal(got.argmax(-1), want.argmax(-1))
  # One export serves any batch: batch 1 and batch 3 of windows, and an odd size.
  fn, _ = run_dir.read_export(run_dir.ExportDir(out))
  call = jax_export.deserialize(bytearray(fn)).call
  x = np.random.default_rng(0).normal(size=(3, 37, 53, 3)).astype(np.float32)
  three = np.asarray(call(x))
  assert three.shape == (3, 37, 53, len(meta['classes']))
  np.testing.assert_allclose(np.asarray(call(x[1:2]))[0], three[1], atol=1e-5)


def test_export_errors_name_the_problem(exported, tmp_path):
  _, _, out, _ = exported
  meta = json.load(open(os.path.join(out, 'meta.json')))
  for field, value, message in (
    ('format_version', 99, 'format version 99 is newer'),
    ('platforms', ['tpu'], 'exported for tpu and this machine runs cpu'),
    ('sha256', '0' * 64, 'sha256 differs'),
  ):
    bad = tmp_path / field
    bad.mkdir()
    for name in ('model.jax', 'test_time.py'):
      (bad / name).write_bytes(open(os.path.join(out, name), 'rb').read())
    (bad / 'meta.json').write_text(json.dumps({**meta, field: value}))
    with pytest.raises(ValueError, match=message):
      inference.load_export(str(bad))


def test_loader_example_runs_without_cows_jax_or_flax(exported, tmp_path):
  _, _, out, _ = exported
  doc = open(os.path.join(ROOT, 'docs', 'export.md')).read()
  [snippet] = re.findall(r'```python\n(.*?)```', doc, re.S)
  assert len([line for line in snippet.splitlines() if line.strip()]) <= 15
  image = tmp_path / 'photo.jpg'
  Image.fromarray(np.random.default_rng(0).integers(0, 255, (50, 70, 3), np.uint8)).save(image)
  blocker = "import sys; sys.modules['cows_jax'] = sys.modules['flax'] = None\n"
  script = tmp_path / 'load.py'
  script.write_text(blocker + snippet)
  label = tmp_path / 'label.png'
  done = subprocess.run(
    [sys.executable, str(script), out, str(image), str(label)],
    cwd=str(tmp_path),
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert done.returncode == 0, done.stderr[-3000:]
  with Image.open(label) as im:
    assert im.mode == 'P' and im.size == (70, 50)


def test_predict_skips_a_corrupt_file_and_writes_the_others(exported, tmp_path):
  _, _, out, _ = exported
  photos = tmp_path / 'photos'
  photos.mkdir()
  rng = np.random.default_rng(1)
  for name, size in (('a.jpg', (40, 60)), ('b.png', (33, 47))):
    Image.fromarray(rng.integers(0, 255, (*size, 3), np.uint8)).save(photos / name)
  (photos / 'c.jpg').write_bytes(b'not a jpeg at all')
  probabilities, _ = inference.load_export(out)
  result = predict.write_files(probabilities, [str(photos)], str(tmp_path / 'out'), overlay=True)
  assert result['written'] == 2 and result['skipped'] == [str(photos / 'c.jpg')]
  assert sorted(os.listdir(tmp_path / 'out')) == [
    'a.png',
    'a_overlay.png',
    'b.png',
    'b_overlay.png',
  ]
  with Image.open(tmp_path / 'out' / 'b.png') as im:
    assert im.mode == 'P' and im.size == (47, 33)


def test_cli_predict_from_an_export_and_from_the_run_agree(exported, tmp_path):
  cfg, workdir, out, _ = exported
  Image.fromarray(sources.load(cfg)['val'][0]['image']).save(tmp_path / 'x.png')
  exe = os.path.join(os.path.dirname(sys.executable), 'cows-jax')
  sources_args = {
    'export': ['--export', out],
    'run': [
      '--config',
      'synthetic:tiny',
      f'--config.data.data_dir={cfg.data.data_dir}',
      '--workdir',
      workdir,
    ],
  }
  for name, args in sources_args.items():
    cmd = [exe, 'predict', *args, '--out', str(tmp_path / name), str(tmp_path / 'x.png')]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert '1 label maps' in done.stdout
  labels = [np.asarray(Image.open(tmp_path / name / 'x.png')) for name in sources_args]
  np.testing.assert_array_equal(*labels)


def test_exported_classifier_maps_equal_localize(tiny_run, tmp_path):
  """The exported localization function gives localize's maps (feature-reuse procedure) for
  any number of related images."""
  cfg, workdir = tiny_run
  cfg = config.finalize(cfg)
  meta = export.export_classifier(cfg, workdir, str(tmp_path / 'c'))
  data, _ = run_dir.read_export(run_dir.ExportDir(str(tmp_path / 'c')))
  call = jax_export.deserialize(bytearray(data)).call
  assert meta['classes'] == list(sources.class_names(cfg))

  run = run_dir.RunDir(workdir)
  model = from_config.classifier(cfg)
  variables, _ = checkpoints.restore_variables(
    run.classifier(),
    run_dir.classifier_epoch_step(run, cfg.classify.localize_after_epochs),
    from_config.abstract_variables(model, cfg),
    'classify',
  )
  train = sources.load(cfg)['train']
  size = (cfg.input.size, cfg.input.size)
  images = np.stack(
    [
      transforms.normalize(
        transforms.resize_image(train[i]['image'], size),
        meta['inputs']['mean'],
        meta['inputs']['std'],
      )
      for i in range(4)
    ]
  )
  computer = localize.MapComputer(model, variables)
  feats = computer.features(images)
  self_views = tuple(cfg.localize.self_views)
  view_images = {v: localize._view_batch(train, [0], images[:1], v, cfg) for v in self_views}
  view_feats = {v: computer.features(x) for v, x in view_images.items()}
  # The views made from the original image are the export's arguments after `related`.
  given = [view_images[v] for v in views.from_original(self_views, cfg)]
  assert len(given) == len(meta['inputs']['views']) == 2
  for related in ([1, 2, 3], [2]):
    cfg_k = config.with_overrides(cfg, (('localize.num_related', len(related)),))
    [want] = localize.image_maps(
      computer, feats[:1], feats, view_feats, [[related]], [np.array([0])], cfg_k
    )
    got = np.asarray(call(images[:1], images[related], *given))
    assert got.shape[0] == cfg.data.num_classes
    np.testing.assert_allclose(got[0], want[0], rtol=1e-4, atol=1e-3)
