"""`cows-jax export`: a trained model as a portable `jax.export` artifact.

The segmenter (default, `--model segmenter`):

    E/model.jax     Exported.serialize(): softmax probabilities of a batch of normalized
                    images, mirrored images averaged in; parameters baked in; batch, height and
                    width symbolic; lowered for every requested platform
    E/meta.json     what a user of the export needs to know (format_version, input layout,
                    mean/std, classes and palette, symbolic dimensions, test-time settings,
                    platforms, source checkpoint, sha256 of model.jax, versions, the jax
                    versions that load it and the pip line of a loader without cows_jax)
    E/test_time.py  the numpy driver of the paper's test-time procedure (scales, sliding
                    windows, averaged softmax) and the export's Python API (`load`: one
                    export, many images), a copy of cows_jax/tta.py (the
                    file name an export has always had)

The network runs inside the export and the procedure around it as the numpy driver: the
number and size of windows depend on each image's size, which the export's symbolic shapes
cannot express as one static program, and the driver is the same code the project runs
in-process, so an export predicts exactly what `evaluate` measures.

The classifier (`--model classifier`) exports its localization function: one query image's
maps of every class with cross-image context from k given related images (k symbolic) and the
self views, the computation of `localize` (E/model.jax and E/meta.json).
"""

import importlib.metadata

import jax
import jax.numpy as jnp
from etils import epath
from jax import export as jax_export

from cows_jax import checkpoints, config, inference, localize, maps, run_dir, tta, views, visualize
from cows_jax.data import sources
from cows_jax.models import from_config

PLATFORMS = ('cpu', 'cuda', 'rocm', 'tpu')  # jax.export's names ('gpu' is canonicalized).


def parse_platforms(text: str) -> tuple[str, ...]:
  """'cpu,gpu' -> ('cpu', 'cuda'): each canonicalized as jax.export does (gpu -> cuda, or
  rocm on an AMD machine) and checked, duplicates dropped."""
  platforms = tuple(dict.fromkeys(tta.canonical_platform(p) for p in text.split(',') if p.strip()))
  bad = [p for p in platforms if p not in PLATFORMS]
  if not platforms or bad:
    raise ValueError(
      f'--platforms={text!r}: expected a comma list of {", ".join(PLATFORMS)} (gpu: cuda)'
    )
  return platforms


def default_platforms() -> tuple[str, ...]:
  """This machine's platform, as jax.export names it (jax.default_backend() 'gpu' -> 'cuda')."""
  return (tta.machine_platform(),)


def load_with(exported: jax_export.Exported) -> dict:
  """meta.json's `load_with`: the jax versions that load the export, by jax.export's
  compatibility window, and the pip lines of a loader without cows_jax (tta.check_jax
  checks the window when the export is loaded).

  jax.export promises that an artifact loads with a jax up to 6 months newer than the one that
  made it, and up to 3 weeks older, and may stop reading a calling convention 6 months old.
  So: the exporting jax or newer, as long as its jax.export reads the export's calling
  convention."""
  version, convention = jax.__version__, exported.calling_convention_version
  return {
    'jax': f'>={version}',
    'exported_with_jax': version,
    'calling_convention_version': convention,
    'window': f'jax {version} or newer whose jax.export reads calling convention {convention} '
    '(jax.export.minimum_supported_calling_convention_version <= '
    f'{convention} <= jax.export.maximum_supported_calling_convention_version): jax.export '
    'promises 6 months of backward compatibility; an older jax is refused (jax.export promises '
    '3 weeks of forward compatibility, which no version number expresses)',
    'pip': tta.PIP_CPU.format(jax=version),
    'pip_cuda': tta.PIP_CUDA.format(jax=version),
  }


def segmenter_function(
  model, variables, flip: bool, align_corners: bool, platforms
) -> jax_export.Exported:
  """The segmenter's softmax of a batch of normalized images [b, h, w, 3] (b, h, w symbolic),
  mirrored images averaged in when `flip`, with `variables` baked in."""
  probs = inference.window_probabilities(model, flip, align_corners)
  shape = jax_export.symbolic_shape('b, h, w, 3')
  return jax_export.export(jax.jit(lambda x: probs(variables, x)), platforms=platforms)(
    jax.ShapeDtypeStruct(shape, jnp.float32)
  )


def export_segmenter(
  cfg, workdir: str, out: str, platforms=None, supervision: str = 'pseudo'
) -> dict:
  """Writes E/model.jax, E/meta.json and E/test_time.py for the run's trained segmenter, lowered
  for `platforms` (default: this machine's); returns the metadata."""
  cfg = config.finalize(cfg)
  platforms = parse_platforms(','.join(platforms)) if platforms else default_platforms()
  settings = inference.Settings.from_config(cfg)
  model = from_config.segmenter(cfg)
  like = from_config.abstract_variables(model, cfg)
  directory = run_dir.RunDir(workdir).segmenter(supervision)
  variables, step = checkpoints.restore_variables(directory, None, like, 'segment')
  variables = jax.device_get(variables)  # host arrays: baked in as constants.
  exported = segmenter_function(
    model, variables, settings.flip_windows, cfg.segment.upsample_align_corners, platforms
  )
  names = ('background',) + tuple(sources.class_names(cfg))
  meta = {
    'model': 'segmenter',
    'input': {
      'layout': 'NHWC',
      'dtype': 'float32',
      'values': '(RGB / 255 - mean) / std',
      'mean': list(cfg.segment.mean),
      'std': list(cfg.segment.std),
    },
    'output': {'layout': 'NHWC', 'dtype': 'float32', 'values': 'softmax probabilities'},
    'symbolic_dims': {
      'b': 'batch, >= 1',
      'h': 'height, >= 1; the output has the input size',
      'w': 'width, >= 1',
    },
    'classes': list(names),
    'palette': visualize.voc_palette()[: len(names)].tolist(),
    'flip': settings.flip_windows,  # inside model.jax: each window's mirror averaged in.
    'test_time': {
      **settings.predict_kwargs(),
      'mean': list(cfg.segment.mean),
      'std': list(cfg.segment.std),
    },
    'platforms': list(platforms),
    'crf': cfg.crf.to_dict(),  # the dense CRF's parameters, for `cows-jax predict --crf`.
    'source': {'checkpoint_dir': str(directory), 'step': int(step), 'supervision': supervision},
    'versions': _versions(),
    'load_with': load_with(exported),
  }
  driver = epath.Path(tta.__file__).read_bytes()
  run_dir.write_export(run_dir.ExportDir(out), exported.serialize(), meta, driver)
  return meta


def classifier_function(model, variables, cfg, platforms) -> jax_export.Exported:
  """One query's maps with cross-image context: (query [1, S, S, 3], related [k, S, S, 3],
  then one [1, s, s, 3] per view made from the original image) -> [C, h, w], S = input.size,
  k symbolic; `variables` baked in."""
  size, self_views, gate = cfg.input.size, tuple(cfg.localize.self_views), cfg.localize.gate
  keys = [views.view_key(v) for v in views.from_original(self_views, cfg)]
  fn = lambda q, r, *vs: maps.query_maps(
    model, variables, q, r, self_views, gate, dict(zip(keys, vs))
  )
  query = jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32)
  related = jax.ShapeDtypeStruct(jax_export.symbolic_shape(f'k, {size}, {size}, 3'), jnp.float32)
  given = [
    jax.ShapeDtypeStruct((1, views.view_size(size, v), views.view_size(size, v), 3), jnp.float32)
    for v in views.from_original(self_views, cfg)
  ]
  return jax_export.export(jax.jit(fn), platforms=platforms)(query, related, *given)


def export_classifier(cfg, workdir: str, out: str, platforms=None) -> dict:
  """Writes E/model.jax and E/meta.json for the classifier checkpoint `localize` uses (end of
  after localize.after_epochs epochs): localization maps outside the project. Lowered
  for `platforms` (default: this machine's)."""
  cfg = config.finalize(cfg)
  platforms = parse_platforms(','.join(platforms)) if platforms else default_platforms()
  run = run_dir.RunDir(workdir)
  model, variables, step = localize.restore_classifier(cfg, run)
  exported = classifier_function(model, jax.device_get(variables), cfg, platforms)
  meta = {
    'model': 'classifier',
    'inputs': {
      'query': f'float32[1, {cfg.input.size}, {cfg.input.size}, 3], NHWC',
      'related': f'float32[k, {cfg.input.size}, {cfg.input.size}, 3]: k images that contain '
      'the class of interest (the paper: k = localize.num_related)',
      'values': '(RGB / 255 - mean) / std of the image resized (bilinear) to the square size',
      'views': [
        f'float32[1, {views.view_size(cfg.input.size, v)}, {views.view_size(cfg.input.size, v)}, 3]: '
        f"the query's x{float(v)} view, the original image resized (PIL bilinear) to that "
        'square size and normalized like the query; one argument each, after `related`'
        for v in views.from_original(tuple(cfg.localize.self_views), cfg)
      ],
      'size': cfg.input.size,
      'mean': list(cfg.input.mean),
      'std': list(cfg.input.std),
    },
    'output': 'float32[C, h, w]: the aggregated map of every class at feature resolution, '
    '0..255; row c is the map of class c when the related images contain c; resize it to the '
    "image's size as localize does: truncated to uint8, then cubic (OpenCV INTER_CUBIC)",
    'symbolic_dims': {'k': 'related images, >= 1'},
    'classes': list(sources.class_names(cfg)),
    'num_related': cfg.localize.num_related,
    'self_views': list(cfg.localize.self_views),
    'gate': cfg.localize.gate,
    'quantize_maps': cfg.localize.quantize_maps,
    'platforms': list(platforms),
    'source': {'checkpoint_dir': str(run.classifier()), 'step': int(step)},
    'versions': _versions(),
    'load_with': load_with(exported),
  }
  run_dir.write_export(run_dir.ExportDir(out), exported.serialize(), meta)
  return meta


def _versions() -> dict:
  return {'cows_jax': importlib.metadata.version('cows_jax'), 'jax': jax.__version__}
