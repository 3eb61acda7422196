"""`cows-jax weights import`: local ImageNet weight files into a backbone directory.

The paper starts every network from ImageNet weights; users download those themselves and this
tool converts them once: torchvision/timm state dicts (.pth/.pt/.bin or .safetensors) and Caffe
models (.caffemodel), written as an orbax checkpoint of backbone variables plus
`provenance.json` (models/pretrained.py reads both at run time).

Caffe weights expect BGR input; the importer permutes the first conv's input channels so
every network here takes RGB, and records the Caffe mean (on the 0..1 scale, std 1/255).
"""

import hashlib
import os
import sys

import numpy as np
import orbax.checkpoint as ocp

from cows_jax import run_dir
from cows_jax.models.pretrained import (
  CAFFE_INPUT,
  TORCHVISION_INPUT,
  WeightsError,
  check_against,
  flatten,
)

ARCHS = ('vgg16', 'resnet101')

# torchvision's vgg16 `features` indices of the 13 convs, in VGG16 order.
_VGG16_FEATURE_CONVS = (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28)
_VGG16_NAMES = tuple(
  f'conv{b}_{i}' for b, n in enumerate((2, 2, 3, 3, 3), start=1) for i in range(1, n + 1)
)


# ---------------------------------------------------------------- reading files


def read_state_dict(path: str) -> dict[str, np.ndarray]:
  """Name -> array from a .safetensors or a PyTorch (.pth/.pt/.bin) file."""
  if not os.path.isfile(path):
    raise FileNotFoundError(f'weights file {path} does not exist')
  if path.endswith('.safetensors'):
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    try:
      return dict(load_file(path))
    except (SafetensorError, OSError, ValueError) as e:
      raise WeightsError(f'{path}: not a readable safetensors file ({e})') from e
  try:
    import torch
  except ImportError:
    raise WeightsError(
      f'{path}: reading PyTorch files needs torch (pip install torch); or '
      'convert the file to .safetensors, which needs no torch'
    ) from None
  try:
    obj = torch.load(path, map_location='cpu', weights_only=True)
  except Exception as e:  # torch raises many types for corrupt or truncated files.
    raise WeightsError(f'{path}: not a readable PyTorch file ({type(e).__name__}: {e})') from e
  for key in ('state_dict', 'model'):  # training checkpoints wrap the weights.
    if isinstance(obj, dict) and isinstance(obj.get(key), dict):
      obj = obj[key]
  if not isinstance(obj, dict):
    raise WeightsError(f'{path}: expected a state dict, found {type(obj).__name__}')
  return {
    k.removeprefix('module.'): v.detach().float().numpy()
    for k, v in obj.items()
    if hasattr(v, 'detach')
  }


def _caffe_messages():
  """NetParameter/LayerParameter/BlobProto built from the fields of caffe.proto that hold
  weights (no Caffe install, no protoc): unknown fields are skipped when parsing."""
  from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

  F = descriptor_pb2.FieldDescriptorProto
  fdp = descriptor_pb2.FileDescriptorProto(
    name='cows_caffe_subset.proto', package='caffe', syntax='proto2'
  )

  def message(name, fields):
    m = fdp.message_type.add(name=name)
    for fname, number, ftype, label, type_name in fields:
      f = m.field.add(name=fname, number=number, type=ftype, label=label)
      if type_name:
        f.type_name = '.caffe.' + type_name
      if label == F.LABEL_REPEATED and ftype in (F.TYPE_FLOAT, F.TYPE_INT64, F.TYPE_DOUBLE):
        f.options.packed = True

  opt, rep = F.LABEL_OPTIONAL, F.LABEL_REPEATED
  message('BlobShape', [('dim', 1, F.TYPE_INT64, rep, None)])
  message(
    'BlobProto',
    [
      ('shape', 7, F.TYPE_MESSAGE, opt, 'BlobShape'),
      ('data', 5, F.TYPE_FLOAT, rep, None),
      ('double_data', 8, F.TYPE_DOUBLE, rep, None),
      ('num', 1, F.TYPE_INT32, opt, None),
      ('channels', 2, F.TYPE_INT32, opt, None),
      ('height', 3, F.TYPE_INT32, opt, None),
      ('width', 4, F.TYPE_INT32, opt, None),
    ],
  )
  message(
    'LayerParameter',
    [
      ('name', 1, F.TYPE_STRING, opt, None),
      ('type', 2, F.TYPE_STRING, opt, None),
      ('blobs', 7, F.TYPE_MESSAGE, rep, 'BlobProto'),
    ],
  )
  message(
    'V1LayerParameter',
    [('name', 4, F.TYPE_STRING, opt, None), ('blobs', 6, F.TYPE_MESSAGE, rep, 'BlobProto')],
  )
  message(
    'NetParameter',
    [
      ('name', 1, F.TYPE_STRING, opt, None),
      ('layer', 100, F.TYPE_MESSAGE, rep, 'LayerParameter'),
      ('layers', 2, F.TYPE_MESSAGE, rep, 'V1LayerParameter'),
    ],
  )
  pool = descriptor_pool.DescriptorPool()
  pool.Add(fdp)
  return {
    name: message_factory.GetMessageClass(pool.FindMessageTypeByName('caffe.' + name))
    for name in ('NetParameter', 'LayerParameter', 'BlobProto', 'BlobShape')
  }


def _blob_array(blob) -> np.ndarray:
  if blob.HasField('shape'):
    shape = tuple(blob.shape.dim)
  else:  # legacy 4-d blobs; leading 1s are squeezed below.
    shape = (blob.num, blob.channels, blob.height, blob.width)
  data = np.asarray(blob.data if len(blob.data) else blob.double_data, np.float32)
  if data.size != int(np.prod(shape)):
    raise WeightsError(f'blob of shape {shape} holds {data.size} values')
  data = data.reshape(shape)
  return data if blob.HasField('shape') else data.reshape(tuple(d for d in shape if d != 1) or (1,))


def read_caffemodel(path: str) -> dict[str, list[np.ndarray]]:
  """Layer name -> its blobs, from a binary .caffemodel."""
  if not os.path.isfile(path):
    raise FileNotFoundError(f'weights file {path} does not exist')
  from google.protobuf.message import DecodeError

  net = _caffe_messages()['NetParameter']()
  with open(path, 'rb') as f:
    data = f.read()
  try:
    net.ParseFromString(data)
  except DecodeError as e:
    raise WeightsError(f'{path}: not a readable caffemodel ({e}); truncated download?') from e
  layers = list(net.layer) or list(net.layers)
  if not layers:
    raise WeightsError(f'{path}: no layers found; not a caffemodel')
  try:
    return {layer.name: [_blob_array(b) for b in layer.blobs] for layer in layers if layer.blobs}
  except WeightsError as e:
    raise WeightsError(f'{path}: {e}') from e


# ---------------------------------------------------------------- conversions


def _conv_kernel(w: np.ndarray) -> np.ndarray:
  """OIHW (PyTorch, Caffe) -> HWIO (flax)."""
  return np.ascontiguousarray(np.transpose(w, (2, 3, 1, 0)))


def vgg16_from_torchvision(tensors: dict) -> tuple[dict, list[str]]:
  """Backbone params of models/vgg.py from torchvision/timm vgg16 keys; returns (params,
  keys of the file that were not used, e.g. the fc classifier)."""
  params, used = {}, set()
  for index, name in zip(_VGG16_FEATURE_CONVS, _VGG16_NAMES):
    w, b = f'features.{index}.weight', f'features.{index}.bias'
    if w in tensors and b in tensors:
      params[name] = {'kernel': _conv_kernel(tensors[w]), 'bias': np.asarray(tensors[b])}
      used |= {w, b}
  return {'params': params}, sorted(set(tensors) - used)


def vgg16_from_caffe(layers: dict) -> tuple[dict, list[str]]:
  """Backbone params from a Caffe VGG16 (layers conv1_1 ... conv5_3; BGR first conv)."""
  params = {}
  for name in _VGG16_NAMES:
    if name in layers and len(layers[name]) == 2:
      w, b = layers[name]
      if name == 'conv1_1':
        w = w[:, ::-1]
      params[name] = {'kernel': _conv_kernel(w), 'bias': np.asarray(b)}
  return {'params': params}, sorted(set(layers) - set(params))


# ---------------------------------------------------------------- import


def _sha256(path: str) -> str:
  h = hashlib.sha256()
  with open(path, 'rb') as f:
    for chunk in iter(lambda: f.read(1 << 20), b''):
      h.update(chunk)
  return h.hexdigest()


def _resnet_blocks(stage_sizes):
  """(torchvision layer name, block index, Caffe block name) of every bottleneck."""
  for i, n in enumerate(stage_sizes):
    for b in range(n):
      if b == 0:
        caffe = f'{i + 2}a'
      elif n > 3:  # res3 and res4 of ResNet-101: b1, b2, ...
        caffe = f'{i + 2}b{b}'
      else:
        caffe = f'{i + 2}{chr(ord("a") + b)}'
      yield f'layer{i + 1}', b, caffe


def _resnet_layers():
  """Per conv + batch norm: (flax conv path, flax bn path, torchvision conv and bn prefixes,
  Caffe conv, BatchNorm and Scale layer names)."""
  from cows_jax.models.resnet import RESNET101_STAGES

  yield ('conv1',), ('bn1',), 'conv1', 'bn1', 'conv1', 'bn_conv1', 'scale_conv1'
  for layer, b, c in _resnet_blocks(RESNET101_STAGES):
    for k, branch in ((1, '2a'), (2, '2b'), (3, '2c')):
      yield (
        (layer, str(b), f'conv{k}'),
        (layer, str(b), f'bn{k}'),
        f'{layer}.{b}.conv{k}',
        f'{layer}.{b}.bn{k}',
        f'res{c}_branch{branch}',
        f'bn{c}_branch{branch}',
        f'scale{c}_branch{branch}',
      )
    if b == 0:
      yield (
        (layer, '0', 'downsample', '0'),
        (layer, '0', 'downsample', '1'),
        f'{layer}.0.downsample.0',
        f'{layer}.0.downsample.1',
        f'res{c}_branch1',
        f'bn{c}_branch1',
        f'scale{c}_branch1',
      )


def _put(tree, path, value):
  for p in path[:-1]:
    tree = tree.setdefault(p, {})
  tree[path[-1]] = value


def resnet101_from_torchvision(tensors: dict) -> tuple[dict, list[str]]:
  """params (conv kernels) and frozen_bn (scale, bias, mean, var) of models/resnet.py from
  torchvision/timm resnet101 keys."""
  params, frozen, used = {}, {}, set()
  for conv_path, bn_path, conv, bn, *_ in _resnet_layers():
    keys = {
      f'{conv}.weight': 'kernel',
      f'{bn}.weight': 'scale',
      f'{bn}.bias': 'bias',
      f'{bn}.running_mean': 'mean',
      f'{bn}.running_var': 'var',
    }
    if not all(k in tensors for k in keys):
      continue
    _put(params, conv_path + ('kernel',), _conv_kernel(tensors[f'{conv}.weight']))
    for k, name in list(keys.items())[1:]:
      _put(frozen, bn_path + (name,), np.asarray(tensors[k], np.float32))
    used |= set(keys) | {f'{bn}.num_batches_tracked'}
  return {'params': params, 'frozen_bn': frozen}, sorted(set(tensors) - used)


def resnet101_from_caffe(layers: dict) -> tuple[dict, list[str]]:
  """The same from a Caffe (MSRA/DeepLab) ResNet-101: BatchNorm blobs (mean, var, moving
  average factor) + Scale blobs (gamma, beta); the first conv is turned from BGR to RGB."""
  params, frozen, used = {}, {}, set()
  for conv_path, bn_path, _, _, conv, bn, scale in _resnet_layers():
    if not all(k in layers for k in (conv, bn, scale)):
      continue
    w = layers[conv][0]
    _put(params, conv_path + ('kernel',), _conv_kernel(w[:, ::-1] if conv == 'conv1' else w))
    mean, var, factor = (layers[bn] + [np.ones(1, np.float32)])[:3]
    factor = float(factor.ravel()[0]) or 1.0
    gamma, beta = layers[scale][:2]
    for name, value in (
      ('scale', gamma),
      ('bias', beta),
      ('mean', mean / factor),
      ('var', var / factor),
    ):
      _put(frozen, bn_path + (name,), np.asarray(value, np.float32).ravel())
    used |= {conv, bn, scale}
  return {'params': params, 'frozen_bn': frozen}, sorted(set(layers) - used)


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
  if arch not in ARCHS:
    raise WeightsError(f'unknown arch {arch!r} (known: {", ".join(ARCHS)})')
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


def import_weights(arch: str, src: str, out: str) -> dict:
  """Convert `src` and write DIR/backbone (orbax) + DIR/provenance.json; returns provenance."""
  variables, ignored, convention = convert(arch, src)
  ckpt = os.path.join(os.path.abspath(out), 'backbone')
  if os.path.exists(ckpt):
    raise WeightsError(f'{ckpt} exists; choose a new --out directory')
  os.makedirs(out, exist_ok=True)
  with ocp.StandardCheckpointer() as ckptr:  # writes to a tmp dir, then renames.
    ckptr.save(ckpt, variables)
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
  run_dir.write_json(os.path.join(out, 'provenance.json'), provenance)
  return provenance


def main(argv: list[str]) -> int:
  """`cows-jax weights import --arch ARCH --src FILE --out DIR`."""
  import argparse

  parser = argparse.ArgumentParser(prog='cows-jax weights', description=__doc__.split('\n')[0])
  sub = parser.add_subparsers(dest='command', required=True)
  imp = sub.add_parser('import', help='convert a local weights file into DIR')
  imp.add_argument('--arch', required=True, choices=ARCHS)
  imp.add_argument('--src', required=True, help='.pth/.pt/.bin, .safetensors or .caffemodel')
  imp.add_argument('--out', required=True, help='new directory for the converted weights')
  args = parser.parse_args(argv)
  try:
    provenance = import_weights(args.arch, args.src, args.out)
  except (FileNotFoundError, WeightsError) as e:
    print(f'cows-jax weights import: error: {e}', file=sys.stderr)
    return 1
  print(
    f'imported {args.arch} ({provenance["format"]}, sha256 {provenance["sha256"][:12]}) '
    f'-> {args.out}; input convention: {provenance["input"]["name"]}'
  )
  if provenance['ignored_keys']:
    print(
      f'ignored {len(provenance["ignored_keys"])} keys not in the backbone: '
      f'{", ".join(provenance["ignored_keys"][:8])}'
      f'{" ..." if len(provenance["ignored_keys"]) > 8 else ""}'
    )
  return 0
