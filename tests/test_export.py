"""An export of the tiny pipeline's segmenter predicts what the run's segmenter predicts; it
loads without cows_jax, on a machine whose backend is 'gpu' (jax.export's 'cuda'), and only with
a jax in its compatibility window; images of one size go through it in one call; `cows-jax
predict` skips what is not an image and writes the rest. (A fresh environment with only the
documented packages: test_export_standalone.py.)"""

import json
import os
import re
import subprocess
import sys

import jax
import numpy as np
import pytest
from jax import export as jax_export
from PIL import Image

from cows_jax import (
  checkpoints,
  config,
  export,
  inference,
  localize,
  predict,
  run_dir,
  tta,
  views,
)
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
    ('model', 'classifier', 'is an export of the classifier; predict from a segmenter export'),
  ):
    bad = tmp_path / field
    bad.mkdir()
    for name in ('model.jax', 'test_time.py'):
      (bad / name).write_bytes(open(os.path.join(out, name), 'rb').read())
    (bad / 'meta.json').write_text(json.dumps({**meta, field: value}))
    with pytest.raises(ValueError, match=message):
      inference.load_export(str(bad))


def test_the_exports_own_loader_names_bad_input(exported, tmp_path):
  """tta.load (the API shipped in the export) reads what cows_jax reads, and bad files or
  arguments are one-line errors naming them."""
  _, _, out, _ = exported
  segmenter = tta.load(out)
  image = np.zeros((20, 30, 3), np.uint8)
  assert segmenter.labels(image).shape == (20, 30)
  with pytest.raises(ValueError, match=r'label \[20, 29\] and image \[20, 30\] differ in size'):
    segmenter.overlay(image, np.zeros((20, 29), np.uint8))
  with pytest.raises(
    ValueError, match=r'image 0: expected a uint8 RGB array .* got uint8 \[20, 30\]'
  ):
    segmenter.labels([image[..., 0]])
  with pytest.raises(FileNotFoundError, match='meta.json is missing: .* is not a complete export'):
    tta.load(str(tmp_path))
  (tmp_path / 'meta.json').write_text('{"classes": [')
  (tmp_path / 'model.jax').write_bytes(b'')
  with pytest.raises(ValueError, match='meta.json is not JSON'):
    tta.load(str(tmp_path))


def test_an_export_for_cpu_and_cuda_predicts_where_the_backend_says_gpu(
  exported, tmp_path, monkeypatch
):
  """On an NVIDIA GPU jax.default_backend() is 'gpu', which jax.export calls 'cuda': a cpu,cuda
  export loads and predicts there (here on the CPU, the backend's name faked); --platforms
  takes jax.export's names and 'gpu', and defaults to this machine's platform."""
  cfg, workdir, out, _ = exported
  assert export.parse_platforms('cpu, gpu,cuda') == ('cpu', 'cuda')
  assert export.parse_platforms('rocm') == ('rocm',)
  with pytest.raises(ValueError, match='expected a comma list of cpu, cuda, rocm, tpu'):
    export.parse_platforms('metal')
  assert export.default_platforms() == ('cpu',)
  both = str(tmp_path / 'both')
  meta = export.export_segmenter(cfg, workdir, both, platforms=('cpu', 'gpu'))
  assert meta['platforms'] == ['cpu', 'cuda']
  cpu_only, _ = inference.load_export(out)
  image = sources.load(cfg)['val'][0]['image']

  monkeypatch.setattr(jax, 'default_backend', lambda: 'gpu')
  assert tta.machine_platform() == 'cuda' and export.default_platforms() == ('cuda',)
  segmenter, _ = inference.load_export(both)
  np.testing.assert_allclose(segmenter(image), cpu_only(image), atol=1e-5)
  Image.fromarray(image).save(tmp_path / 'x.png')
  result = predict.write_files(segmenter, [str(tmp_path / 'x.png')], str(tmp_path / 'out'))
  assert result == {'written': 1, 'skipped': []}
  with pytest.raises(ValueError, match='exported for cpu and this machine runs cuda; export it '):
    inference.load_export(out)


def test_a_jax_outside_the_exports_window_is_a_one_line_error(exported, monkeypatch):
  """meta.json states the jax versions that load the export: the exporting jax or newer, while
  its jax.export reads the export's calling convention; outside them, one line names both."""
  _, _, out, meta = exported
  made = jax.__version__
  window = meta['load_with']
  data, _ = run_dir.read_export(run_dir.ExportDir(out))
  convention = jax_export.deserialize(bytearray(data)).calling_convention_version
  assert window['jax'] == f'>={made}' and window['exported_with_jax'] == made
  assert window['calling_convention_version'] == convention
  assert window['pip'] == f'pip install "jax>={made}" flatbuffers numpy pillow'
  assert window['pip_cuda'] == f'pip install "jax[cuda12]>={made}" flatbuffers numpy pillow'

  monkeypatch.setattr(jax, '__version__', '9.0.0')  # newer, reads the calling convention.
  inference.load_export(out)
  monkeypatch.setattr(jax, '__version__', '0.4.1')
  with pytest.raises(ValueError) as older:
    inference.load_export(out)
  assert f'exported with jax {made} and this is jax 0.4.1, which is older' in str(older.value)
  monkeypatch.setattr(jax, '__version__', '9.0.0')
  monkeypatch.setattr(jax_export, 'minimum_supported_calling_convention_version', convention + 1)
  monkeypatch.setattr(jax_export, 'maximum_supported_calling_convention_version', convention + 2)
  with pytest.raises(ValueError) as newer:
    inference.load_export(out)
  assert (
    f'exported with jax {made} (calling convention {convention}) and this jax 9.0.0 reads '
    f'calling conventions {convention + 1}..{convention + 2}'
  ) in str(newer.value)
  assert '\n' not in str(older.value) + str(newer.value)


def test_loader_example_runs_without_cows_jax_or_flax(exported, tmp_path):
  _, _, out, _ = exported
  snippet = documented_loader()
  assert len([line for line in snippet.splitlines() if line.strip()]) <= 15
  images = []
  for name, size in (('a.jpg', (50, 70)), ('b.png', (50, 70)), ('c.png', (31, 45))):
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (*size, 3), np.uint8)).save(
      tmp_path / name
    )
    images.append(str(tmp_path / name))
  blocker = "import sys; sys.modules['cows_jax'] = sys.modules['flax'] = None\n"
  script = tmp_path / 'load.py'
  script.write_text(blocker + snippet)
  labels = tmp_path / 'labels'
  labels.mkdir()
  done = subprocess.run(
    [sys.executable, str(script), out, str(labels), *images],
    cwd=str(tmp_path),
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert done.returncode == 0, done.stderr[-3000:]
  for name, size in (('a', (70, 50)), ('c', (45, 31))):
    with Image.open(labels / f'{name}.png') as im:
      assert im.mode == 'P' and im.size == size
    with Image.open(labels / f'{name}_overlay.png') as im:
      assert im.mode == 'RGB' and im.size == size


def documented_loader() -> str:
  """The Python snippet of docs/export.md (its only one)."""
  doc = open(os.path.join(ROOT, 'docs', 'export.md')).read()
  [snippet] = re.findall(r'```python\n(.*?)```', doc, re.S)
  return snippet


def test_images_of_one_size_go_in_one_call(exported):
  """Export.probabilities of 3 same-size images calls the network as often as for one image,
  and gives what each image gives alone."""
  cfg, _, out, _ = exported
  segmenter, _ = inference.load_export(out)
  calls = []
  call = segmenter._call
  segmenter._call = lambda x: calls.append(x.shape) or call(x)
  val = sources.load(cfg)['val']
  same = [val[i]['image'] for i in range(3)]
  assert len({x.shape for x in same}) == 1
  alone = [segmenter.probabilities(x) for x in same]
  one_image_calls = len(calls) // 3
  calls.clear()
  together = segmenter.probabilities(same)
  assert len(calls) == one_image_calls and calls[0][0] >= 3
  for got, want in zip(together, alone):
    np.testing.assert_allclose(got, want, atol=1e-5)
  odd = same[0][:37, :45]
  labels = segmenter.labels([same[0], odd, same[1]])
  assert [x.shape for x in labels] == [same[0].shape[:2], (37, 45), same[1].shape[:2]]
  assert labels[0].dtype == np.uint8
  with pytest.raises(ValueError, match=r'image 1: expected a uint8 RGB array'):
    segmenter.labels([same[0], same[0].astype(np.float32)])


def test_predict_hands_the_files_of_one_size_over_together(exported, tmp_path):
  _, _, out, _ = exported
  segmenter, _ = inference.load_export(out)
  rng = np.random.default_rng(2)
  for name, size in (('a.png', (30, 40)), ('b.jpg', (21, 33)), ('c.png', (30, 40))):
    Image.fromarray(rng.integers(0, 255, (*size, 3), np.uint8)).save(tmp_path / name)
  (tmp_path / 'd.png').write_bytes(b'not a png')
  calls = []
  record = lambda images: calls.append(sorted(x.shape for x in images)) or segmenter(images)
  result = predict.write_files(record, [str(tmp_path)], str(tmp_path / 'out'))
  assert result == {'written': 3, 'skipped': [str(tmp_path / 'd.png')]}
  assert sorted(calls) == [[(21, 33, 3)], [(30, 40, 3), (30, 40, 3)]]
  want = segmenter.labels(np.asarray(Image.open(tmp_path / 'c.png').convert('RGB')))
  np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / 'out' / 'c.png')), want)


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
    run_dir.classifier_epoch_step(run, cfg.localize.after_epochs),
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


def test_predict_refuses_inputs_whose_outputs_collide(tmp_path):
  for name in ('a.png', 'a_overlay.png', 'b.jpg'):
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / name)
  assert len(predict.image_files([str(tmp_path)])) == 3
  with pytest.raises(ValueError, match='two inputs would write the same output: a_overlay$'):
    predict.image_files([str(tmp_path)], overlay=True)
  (tmp_path / 'b.png').write_bytes((tmp_path / 'a.png').read_bytes())
  with pytest.raises(ValueError, match='same output: b$'):
    predict.image_files([str(tmp_path)])
