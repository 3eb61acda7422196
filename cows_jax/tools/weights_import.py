"""`cows-jax weights import`: local weight files into this project's formats.

ImageNet backbones (`--arch vgg16`, `resnet101`): the paper starts every network from ImageNet
weights; users download those themselves and this tool converts them once: torchvision/timm
state dicts (.pth/.pt/.bin or .safetensors) and Caffe models (.caffemodel), written as an
orbax checkpoint of backbone variables plus `provenance.json` (models/imported.py reads both
at run time).

The authors' trained models (`--arch coattention_vgg16`, `deeplab_v2_resnet101`): the
classifier checkpoint the reference's Classifier/scripts/train.py saves, and the released
DeepLab-v2 ResNet-101 LargeFOV segmenter (.caffemodel of deploy_resnet_fov.prototxt), whole,
written into a run directory as the checkpoints `localize` and `evaluate` restore.

The readers and converters are by source format: tools/weights_torch.py (PyTorch files) and
tools/weights_caffe.py (.caffemodel), on the layouts of tools/weights_layout.py.

Caffe weights expect BGR input; the importer permutes the first conv's input channels so
every network here takes RGB, and records the Caffe mean (on the 0..1 scale, std 1/255).
"""

import hashlib
import os
import sys

import orbax.checkpoint as ocp

from cows_jax import run_dir
from cows_jax.models.imported import (
  CAFFE_INPUT,
  TORCHVISION_INPUT,
  WeightsError,
  check_against,
  flatten,
)
from cows_jax.tools.weights_caffe import (
  deeplab_from_caffe,
  read_caffemodel,
  resnet101_from_caffe,
  vgg16_from_caffe,
)
from cows_jax.tools.weights_torch import (
  coattention_from_reference,
  read_state_dict,
  read_training_checkpoint,
  resnet101_from_torchvision,
  vgg16_from_torchvision,
)

BACKBONE_ARCHS = ('vgg16', 'resnet101')
TRAINED_ARCHS = ('coattention_vgg16', 'deeplab_v2_resnet101')
ARCHS = BACKBONE_ARCHS + TRAINED_ARCHS


def _sha256(path: str) -> str:
  h = hashlib.sha256()
  with open(path, 'rb') as f:
    for chunk in iter(lambda: f.read(1 << 20), b''):
      h.update(chunk)
  return h.hexdigest()


CONVERTERS = {
  ('vgg16', 'torchvision'): vgg16_from_torchvision,
  ('vgg16', 'caffe'): vgg16_from_caffe,
  ('resnet101', 'torchvision'): resnet101_from_torchvision,
  ('resnet101', 'caffe'): resnet101_from_caffe,
}


def expected_variables(arch: str) -> dict:
  """Shapes of the full-size backbone's variables ({'params': ..., ...})."""
  import jax
  import jax.numpy as jnp

  from cows_jax.models.resnet import ResNet
  from cows_jax.models.vgg import VGG16LargeFOV

  models = {'vgg16': VGG16LargeFOV, 'resnet101': ResNet}
  x = jnp.zeros((1, 32, 32, 3))
  return dict(jax.eval_shape(models[arch]().init, jax.random.key(0), x))


def convert(arch: str, src: str) -> tuple[dict, list[str], dict]:
  """(backbone variables, ignored file keys, input convention) of a weights file."""
  if arch not in BACKBONE_ARCHS:
    raise WeightsError(f'unknown backbone arch {arch!r} (known: {", ".join(BACKBONE_ARCHS)})')
  caffe = src.endswith('.caffemodel')
  if caffe:
    tensors = read_caffemodel(src)
    convention = CAFFE_INPUT
  else:
    tensors = read_state_dict(src)
    convention = TORCHVISION_INPUT
  fmt = 'caffe' if caffe else 'torchvision'
  if (arch, fmt) not in CONVERTERS:
    raise WeightsError(
      f'{src}: no {fmt} converter for {arch} (have: {", ".join("/".join(k) for k in CONVERTERS)})'
    )
  converter = CONVERTERS[(arch, fmt)]
  variables, ignored = converter(tensors)
  if not flatten(variables):
    raise WeightsError(
      f'{src}: none of its keys are {fmt} {arch} backbone keys (it has '
      f'{", ".join(sorted(tensors)[:5])}, ...); another architecture?'
    )
  check_against(variables, expected_variables(arch), src)
  return variables, ignored, convention


def _write_weights_dir(out: str, variables: dict, provenance: dict) -> None:
  """DIR/backbone (orbax) and then DIR/provenance.json, which marks the directory usable."""
  ckpt = os.path.join(os.path.abspath(out), 'backbone')
  if os.path.exists(ckpt):
    raise WeightsError(f'{ckpt} exists; choose a new --out directory')
  os.makedirs(out, exist_ok=True)
  with ocp.StandardCheckpointer() as ckptr:  # writes to a tmp dir, then renames.
    ckptr.save(ckpt, variables)
  run_dir.write_json(os.path.join(out, 'provenance.json'), provenance)


def import_weights(arch: str, src: str, out: str) -> dict:
  """Convert `src` and write DIR/backbone (orbax) + DIR/provenance.json; returns provenance."""
  variables, ignored, convention = convert(arch, src)
  provenance = {
    'arch': arch,
    'source': os.path.abspath(src),
    'sha256': _sha256(src),
    'format': 'caffe' if src.endswith('.caffemodel') else 'torchvision',
    'input': convention,
    'ignored_keys': ignored,
  }
  if arch == 'resnet101':  # where the stride of a downsampling block sits (models/resnet.py).
    provenance['stride_in_1x1'] = provenance['format'] == 'caffe'
  _write_weights_dir(out, variables, provenance)
  return provenance


# ---------------------------------------------------------------- the authors' trained models

# The reference segmenter's solver (segmentation/examples/seg/exp2/solver_res.prototxt):
# max_iter 16000 with iter_size 10, i.e. 160,000 micro steps in this project's counting
# (segment.iterations x segment.accumulation_steps of the paper config).
REFERENCE_SEGMENTER_STEPS = 16000 * 10


def _converted(converter, arrays: dict, src: str):
  """`converter(arrays, src)`, with arrays of an unexpected rank or size (which numpy
  rejects while converting) reported as a one-line WeightsError."""
  try:
    return converter(arrays, src)
  except WeightsError:
    raise
  except (ValueError, IndexError) as e:
    raise WeightsError(f'{src}: an array of unexpected rank or size ({e})') from e


def _save_variables(directory, step: int, variables: dict) -> None:
  """A run directory's checkpoint of `variables` alone (what `localize` and `evaluate`
  restore; there is no optimizer state to resume training from)."""
  from cows_jax import checkpoints

  mngr = checkpoints.manager(directory)
  mngr.save(step, args=ocp.args.Composite(variables=ocp.args.StandardSave(variables)))
  mngr.wait_until_finished()
  mngr.close()


def import_trained(arch: str, src: str, out: str, epochs: int | None = None) -> dict:
  """The authors' trained classifier (coattention_vgg16, a checkpoint of the reference's
  train.py) or segmenter (deeplab_v2_resnet101, the released .caffemodel) into the run
  directory `out`:

    WORKDIR/classifier/<step> + epochs.json   or   WORKDIR/segmenter/<step>
    WORKDIR/imported/<arch>/{backbone,provenance.json}

  The second is an imported-weights directory (the model's backbone and its input
  convention) for model.init_from / segment.init_from, so the stages normalize inputs as
  the model was trained. Returns its provenance."""
  if arch not in TRAINED_ARCHS:
    raise WeightsError(f'unknown trained-model arch {arch!r} (known: {", ".join(TRAINED_ARCHS)})')
  run = run_dir.RunDir(out)
  if arch == 'coattention_vgg16':
    if src.endswith(('.caffemodel', '.safetensors')):
      raise WeightsError(f"{src}: coattention_vgg16 reads the .pth the reference's train.py saves")
    tensors, meta = read_training_checkpoint(src)
    variables, ignored, fields = _converted(coattention_from_reference, tensors, src)
    if epochs is None and meta['epoch'] is None:
      raise WeightsError(
        f"{src}: no 'epoch' field (the reference's train.py saves the 0-based epoch); pass "
        '--epochs N, the number of epochs it was trained for'
      )
    epochs = meta['epoch'] + 1 if epochs is None else epochs
    if epochs < 1:
      raise WeightsError(f'--epochs={epochs}: expected a positive number of epochs')
    counter = meta['global_counter']  # steps so far: steps per epoch x epochs.
    per_epoch = counter // epochs if counter and counter % epochs == 0 else 1
    step, directory, fmt = per_epoch * epochs, run.classifier(), 'pytorch'
    fields['localize.after_epochs'] = epochs
    backbone = {'params': variables['params']['backbone']}
    backbone_arch, convention = 'vgg16', TORCHVISION_INPUT
  else:
    if not src.endswith('.caffemodel'):
      raise WeightsError(f'{src}: deeplab_v2_resnet101 reads a .caffemodel')
    variables, ignored, fields = _converted(deeplab_from_caffe, read_caffemodel(src), src)
    step, directory, fmt = REFERENCE_SEGMENTER_STEPS, run.segmenter(), 'caffe'
    backbone = {col: tree['backbone'] for col, tree in variables.items()}
    backbone_arch, convention = 'resnet101', CAFFE_INPUT
  weights = run.root / 'imported' / arch
  for target in (directory, weights):
    if target.exists():
      raise WeightsError(f'{target} exists; import into a new --out WORKDIR')
  provenance = {
    'arch': backbone_arch,
    'source': os.path.abspath(src),
    'sha256': _sha256(src),
    'format': fmt,
    'input': convention,
    'ignored_keys': ignored,
    'trained_model': {
      'arch': arch,
      'checkpoint': os.fspath(directory / str(step)),
      'step': step,
      'init_from': os.fspath(weights),
      'config': fields,
    },
  }
  if arch == 'deeplab_v2_resnet101':
    provenance['stride_in_1x1'] = True  # Caffe/MSRA: the stride on the first 1x1 conv.
  _save_variables(directory, step, variables)
  if arch == 'coattention_vgg16':
    run_dir.write_classifier_epochs(run, per_epoch, epochs)
  _write_weights_dir(os.fspath(weights), backbone, provenance)
  return provenance


def config_flags(provenance: dict) -> str:
  """The --config.FIELD=VALUE flags the stages need for an imported trained model: its
  weights directory as model.init_from / segment.init_from, and the fields of its shape."""
  import shlex

  trained = provenance['trained_model']
  init = 'model.init_from' if trained['arch'] == 'coattention_vgg16' else 'segment.init_from'
  flags = [f'--config.{init}={trained["init_from"]}']
  flags += [f'--config.{field}={value}' for field, value in trained['config'].items()]
  return ' '.join(shlex.quote(f) for f in flags)


def main(argv: list[str]) -> int:
  """`cows-jax weights import --arch ARCH --src FILE --out DIR`."""
  import argparse

  parser = argparse.ArgumentParser(prog='cows-jax weights', description=__doc__.split('\n')[0])
  sub = parser.add_subparsers(dest='command', required=True)
  imp = sub.add_parser(
    'import',
    help='convert a local weights file into DIR',
    description='ImageNet backbones (vgg16, resnet101) into a new weights directory DIR, for '
    "model.init_from / segment.init_from; the authors' trained classifier "
    "(coattention_vgg16, a .pth of the reference's train.py) or segmenter "
    '(deeplab_v2_resnet101, the released .caffemodel) into the run directory WORKDIR, '
    'for localize / evaluate.',
  )
  imp.add_argument('--arch', required=True, choices=ARCHS)
  imp.add_argument('--src', required=True, help='.pth/.pt/.bin, .safetensors or .caffemodel')
  imp.add_argument(
    '--out',
    required=True,
    help='vgg16, resnet101: a new directory for the converted weights; coattention_vgg16, '
    'deeplab_v2_resnet101: the run directory (WORKDIR) that receives the model',
  )
  imp.add_argument(
    '--epochs',
    type=int,
    default=None,
    help="coattention_vgg16: the epochs the checkpoint was trained for (default: its 'epoch' "
    'field + 1, as the reference saves it)',
  )
  args = parser.parse_args(argv)
  if args.epochs is not None and args.arch != 'coattention_vgg16':
    parser.error('--epochs applies to --arch coattention_vgg16 only')
  try:
    if args.arch in TRAINED_ARCHS:
      provenance = import_trained(args.arch, args.src, args.out, args.epochs)
    else:
      provenance = import_weights(args.arch, args.src, args.out)
  except (FileNotFoundError, WeightsError) as e:
    print(f'cows-jax weights import: error: {e}', file=sys.stderr)
    return 1
  if args.arch in TRAINED_ARCHS:
    trained = provenance['trained_model']
    print(
      f'imported {args.arch} ({provenance["format"]}, sha256 {provenance["sha256"][:12]}) '
      f'-> {trained["checkpoint"]}; input convention: {provenance["input"]["name"]}'
    )
    stages = 'localize' if args.arch == 'coattention_vgg16' else 'evaluate, predict-split, export'
    print(f'run {stages} on --workdir {args.out} with: {config_flags(provenance)}')
  else:
    print(
      f'imported {args.arch} ({provenance["format"]}, sha256 {provenance["sha256"][:12]}) '
      f'-> {args.out}; input convention: {provenance["input"]["name"]}'
    )
  if provenance['ignored_keys']:
    print(
      f'ignored {len(provenance["ignored_keys"])} keys not in the model: '
      f'{", ".join(provenance["ignored_keys"][:8])}'
      f'{" ..." if len(provenance["ignored_keys"]) > 8 else ""}'
    )
  return 0
